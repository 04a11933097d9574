"""Kernel test fixtures: the `cuda` marker skip, the CPU emulator of the CUDA sources."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import tk_emulator
import torch


def cuda_unavailable_reason() -> str | None:
    """None when the CUDA kernels can run here, else why they cannot."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("cupy") is None:
        return "needs CuPy (pip install 'tierd[cuda]')"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = cuda_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "cuda" in item.keywords and Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def emulator(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tk_emulator.Emulator:
    """The CPU emulator; its libraries are kept in pytest's cache directory across runs when the
    cache plugin is on (they are keyed by a hash of the sources), else in a temporary directory."""
    reason = tk_emulator.available()
    if reason is not None:
        pytest.skip(f"CUDA emulator unavailable: {reason}")
    cache = getattr(request.config, "cache", None)
    build_dir = cache.mkdir("tierd_kernels_emulator") if cache is not None else tmp_path_factory.mktemp("emu")
    return tk_emulator.Emulator(Path(build_dir))
