"""``CupyRuntime`` on CPU, over a stub CuPy backed by the strict fake: error lines, the flags it
passes, and the ``cuMemcpyBatchAsync`` path with its fallbacks."""

from __future__ import annotations

import ctypes
import logging
import mmap
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cuda_fake_runtime import DEVICE_BASE, FakeCudaRuntime
from cupy_stub import StubDriver, StubRuntime, install_cupy, install_driver

from tierd.tiers.cuda_cupy import CupyRuntime
from tierd.tiers.cuda_runtime import CopyRange, CudaError, open_cuda_runtime

PAGE_BYTES = mmap.PAGESIZE


@pytest.fixture
def fake() -> Iterator[FakeCudaRuntime]:
    runtime = FakeCudaRuntime(seed=11)
    yield runtime
    runtime.close()


@pytest.fixture
def stub(fake: FakeCudaRuntime, monkeypatch: pytest.MonkeyPatch) -> StubRuntime:
    runtime = StubRuntime(fake)
    install_cupy(monkeypatch, runtime)
    return runtime


class Pinned:
    """Page-locked host pages registered through ``runtime``."""

    def __init__(self, runtime: CupyRuntime, size_bytes: int, *, register: bool = True) -> None:
        self._map = mmap.mmap(-1, size_bytes)
        self._view = (ctypes.c_char * size_bytes).from_buffer(self._map)
        self.address = ctypes.addressof(self._view)
        if register:
            runtime.host_register(self.address, size_bytes)

    def read(self) -> bytes:
        return bytes(self._view.raw)

    def write(self, data: bytes) -> None:
        if len(data) > len(self._view):
            raise ValueError(f"{len(data)} B overrun a {len(self._view)} B buffer")
        ctypes.memmove(self.address, data, len(data))


def test_import_tierd_needs_no_cupy() -> None:
    code = ("import sys, tierd, tierd.tiers.cuda_runtime, tierd.tiers.cuda_cupy; "
            "sys.exit(1 if 'cupy' in sys.modules or 'cuda' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_missing_cupy_is_one_cuda_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)   # import raises ImportError
    with pytest.raises(CudaError, match=r"^import cupy for cuda:0: .*install tierd\[cuda\]") as caught:
        open_cuda_runtime(0)
    assert "\n" not in str(caught.value)


def test_a_missing_device_is_refused(stub: StubRuntime) -> None:
    with pytest.raises(CudaError, match=r"cuda:3: no such device \(1 visible"):
        CupyRuntime(3)


def test_driver_errors_name_the_call_device_and_message(stub: StubRuntime) -> None:
    runtime = CupyRuntime(0)
    with pytest.raises(CudaError, match=rf"^cudaFree\({DEVICE_BASE:#x}\) on cuda:0: cudaErrorStub: .*not the base"):
        runtime.free(DEVICE_BASE)
    with pytest.raises(CudaError, match=r"^cudaMalloc\(2147483648 B\) on cuda:0: .*out of memory"):
        runtime.malloc(1 << 31)


def test_flags_are_portable_non_blocking_and_blocking_sync(stub: StubRuntime) -> None:
    runtime = CupyRuntime(0)
    host = Pinned(runtime, PAGE_BYTES)
    stream = runtime.create_stream()
    device = runtime.malloc(PAGE_BYTES)
    runtime.copy_batch_async([CopyRange(device, host.address, PAGE_BYTES)], stream)
    event = runtime.record_event(stream)
    runtime.wait_event(event)
    runtime.destroy_event(event)
    assert stub.flags == {"hostRegister": [1], "streamCreateWithFlags": [1], "eventCreateWithFlags": [1 | 2]}
    assert stub.memcpy_kinds == [4]   # cudaMemcpyDefault: unified addressing picks the direction


def _batch_runtime(fake: FakeCudaRuntime, monkeypatch: pytest.MonkeyPatch, driver: StubDriver | None,
                   caplog: pytest.LogCaptureFixture) -> CupyRuntime:
    install_cupy(monkeypatch, StubRuntime(fake))
    install_driver(monkeypatch, driver)
    with caplog.at_level(logging.WARNING, logger="tierd.tiers.cuda_cupy"):
        return CupyRuntime(0, batch_api=True)


def test_batch_api_issues_one_call_at_the_12_8_abi(fake: FakeCudaRuntime, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    driver = StubDriver(fake)
    runtime = _batch_runtime(fake, monkeypatch, driver, caplog)
    assert caplog.records == []
    assert driver.asked == [(b"cuMemcpyBatchAsync", 12080, 0)]
    host = Pinned(runtime, 4 * PAGE_BYTES)
    host.write(bytes(range(256)) * (4 * PAGE_BYTES // 256))
    device = runtime.malloc(4 * PAGE_BYTES)
    stream = runtime.create_stream()
    pages = [CopyRange(device + i * PAGE_BYTES, host.address + (3 - i) * PAGE_BYTES, PAGE_BYTES) for i in range(4)]
    runtime.copy_batch_async(pages, stream)
    runtime.wait_event(runtime.record_event(stream))
    assert driver.batches == [pages]
    assert driver.attributes == [(1, 1, 0)]   # srcAccessOrder STREAM, one set, from copy 0
    expected = b"".join(host.read()[(3 - i) * PAGE_BYTES:(4 - i) * PAGE_BYTES] for i in range(4))
    assert fake.read_device(device, 4 * PAGE_BYTES) == expected


def test_batch_api_loops_where_one_call_could_reorder_or_touch_pageable_memory(
        fake: FakeCudaRuntime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    driver = StubDriver(fake)
    runtime = _batch_runtime(fake, monkeypatch, driver, caplog)
    pinned = Pinned(runtime, 2 * PAGE_BYTES)
    pageable = Pinned(runtime, 2 * PAGE_BYTES, register=False)
    device = runtime.malloc(2 * PAGE_BYTES)
    stream = runtime.create_stream()
    same_dst = [CopyRange(device, pinned.address, PAGE_BYTES), CopyRange(device, pinned.address + PAGE_BYTES, 8)]
    chained = [CopyRange(device, pinned.address, PAGE_BYTES), CopyRange(pinned.address + PAGE_BYTES, device, 8)]
    from_pageable = [CopyRange(device + i * PAGE_BYTES, pageable.address + i * PAGE_BYTES, PAGE_BYTES)
                     for i in range(2)]
    for copies in (same_dst, chained, from_pageable):
        runtime.copy_batch_async(copies, stream)
    runtime.wait_event(runtime.record_event(stream))
    assert driver.batches == []
    assert fake.calls("copy_batch_async") == 6   # one cudaMemcpyAsync per copy


def test_batch_api_failure_names_the_failed_copy(fake: FakeCudaRuntime, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    runtime = _batch_runtime(fake, monkeypatch, StubDriver(fake, status=700), caplog)
    host = Pinned(runtime, 2 * PAGE_BYTES)
    device = runtime.malloc(2 * PAGE_BYTES)
    stream = runtime.create_stream()
    with pytest.raises(CudaError, match=r"cuMemcpyBatchAsync\(2 copies\) on cuda:0: CUresult 700 at copy 1"):
        runtime.copy_batch_async([CopyRange(device + i * PAGE_BYTES, host.address + i * PAGE_BYTES, PAGE_BYTES)
                                  for i in range(2)], stream)


@pytest.mark.parametrize(("driver_version", "importable", "reason"), [
    (12090, False, "cuda.bindings.driver is not importable"),
    (12060, True, "supports CUDA 12060, cuMemcpyBatchAsync needs 12080"),
])
def test_batch_api_falls_back_to_the_loop_and_says_why_once(
        fake: FakeCudaRuntime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        driver_version: int, importable: bool, reason: str) -> None:
    driver = StubDriver(fake, driver_version=driver_version)
    runtime = _batch_runtime(fake, monkeypatch, driver if importable else None, caplog)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("cuda:0: copies go one cudaMemcpyAsync each: ")
    assert reason in messages[0]
    host = Pinned(runtime, 2 * PAGE_BYTES)
    host.write(b"\x31" * (2 * PAGE_BYTES))
    device = runtime.malloc(2 * PAGE_BYTES)
    stream = runtime.create_stream()
    runtime.copy_batch_async([CopyRange(device + i * PAGE_BYTES, host.address + i * PAGE_BYTES, PAGE_BYTES)
                              for i in range(2)], stream)
    runtime.wait_event(runtime.record_event(stream))
    assert driver.batches == [] and fake.calls("copy_batch_async") == 2
    assert fake.read_device(device, 2 * PAGE_BYTES) == b"\x31" * (2 * PAGE_BYTES)
