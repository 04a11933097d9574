"""Fixtures of the page-store tests: every store test runs on the CPU engine and on the strict
fake device engine (hbm without a host view, copies that land after a delay)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cuda_fake_runtime import FakeCudaRuntime
from store_helpers import CUDA_FAKE, DEVICES, SPEC, small_config

from tierd.spec import Namespace
from tierd.store import PageStore, media

FAKE_GPU_BYTES = 256 << 20
FAKE_MAX_DELAY_S = 0.002  # like the fake device's copies: 0-2 ms after they are queued


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The device name for ``small_config``; on ``cuda-fake`` every store opened in the test gets
    a strict fake CUDA runtime where it would open CuPy's (each closed after the test)."""
    runtimes: list[FakeCudaRuntime] = []

    def open_fake(device_index: int) -> FakeCudaRuntime:
        runtime = FakeCudaRuntime(device_index, total_bytes=FAKE_GPU_BYTES, min_delay_s=0.0,
                                  max_delay_s=FAKE_MAX_DELAY_S, seed=len(runtimes))
        runtimes.append(runtime)
        return runtime

    if request.param == CUDA_FAKE:
        monkeypatch.setattr(media, "open_cuda_runtime", open_fake)
    yield str(request.param)
    for runtime in runtimes:
        runtime.close()


@pytest.fixture
def store(tmp_path: Path, device: str) -> Iterator[PageStore]:
    with PageStore(small_config(tmp_path / "data", device=device)) as s:
        yield s


@pytest.fixture
def ns(store: PageStore) -> Namespace:
    return store.register(SPEC)
