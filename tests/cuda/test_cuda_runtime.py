"""The CudaRuntime contract, against the strict fake, ``CupyRuntime`` over a stub CuPy backed by the
fake, and (marked ``cuda``) CuPy on a GPU; then the fake's strictness, which later tests of the hbm
arena and the transfer engine rely on."""

from __future__ import annotations

import ctypes
import importlib.util
import mmap
import threading
from collections.abc import Iterator

import pytest
from cuda_fake_runtime import DEVICE_ALIGN_BYTES, DEVICE_BASE, FRESH_BYTE, FakeCudaRuntime
from cupy_stub import StubRuntime, install_cupy

from tierd.tiers.cuda_cupy import CupyRuntime
from tierd.tiers.cuda_runtime import IPC_HANDLE_BYTES, CopyRange, CudaError, CudaRuntime, open_cuda_runtime

PAGE_BYTES = mmap.PAGESIZE
HOURS_S = 3600.0   # a fake stream delay that never elapses in a test: its ops run only at close()


class HostBuffer:
    """Page-aligned anonymous host memory (registrations are page-granular on a real driver)."""

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        self._map = mmap.mmap(-1, max(size_bytes, 1))
        self._view = (ctypes.c_char * size_bytes).from_buffer(self._map)
        self.address = ctypes.addressof(self._view)

    def read(self) -> bytes:
        return bytes(self._view.raw)

    def write(self, data: bytes, offset: int = 0) -> None:
        if offset + len(data) > self.size_bytes:
            raise ValueError(f"{len(data)} B at {offset} overrun a {self.size_bytes} B buffer")
        ctypes.memmove(self.address + offset, data, len(data))

    def close(self) -> None:
        del self._view
        self._map.close()


class Resources:
    """What a test made on a runtime, released in reverse order at teardown."""

    def __init__(self, runtime: CudaRuntime) -> None:
        self.runtime = runtime
        self._undo: list[tuple[str, int]] = []
        self._buffers: list[HostBuffer] = []

    def malloc(self, size_bytes: int) -> int:
        ptr = self.runtime.malloc(size_bytes)
        self._undo.append(("free", ptr))
        return ptr

    def stream(self) -> int:
        stream = self.runtime.create_stream()
        self._undo.append(("destroy_stream", stream))
        return stream

    def host(self, size_bytes: int, *, register: bool) -> HostBuffer:
        buffer = HostBuffer(size_bytes)
        self._buffers.append(buffer)
        if register:
            self.runtime.host_register(buffer.address, size_bytes)
            self._undo.append(("host_unregister", buffer.address))
        return buffer

    def sync(self, stream: int) -> None:
        event = self.runtime.record_event(stream)
        self.runtime.wait_event(event)
        self.runtime.destroy_event(event)

    def read_back(self, ptr: int, size_bytes: int) -> bytes:
        """Device bytes through the protocol: one D2H copy into page-locked memory."""
        buffer = self.host(size_bytes, register=True)
        stream = self.stream()
        self.runtime.copy_batch_async([CopyRange(buffer.address, ptr, size_bytes)], stream)
        self.sync(stream)
        return buffer.read()

    def release(self) -> None:
        for name, value in reversed(self._undo):
            getattr(self.runtime, name)(value)
        for buffer in self._buffers:
            buffer.close()


def _cupy_runtime_or_skip() -> CudaRuntime:
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("needs CuPy (pip install 'tierd[cuda]')")
    import cupy

    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"needs a CUDA GPU: {exc}")
    if count < 1:
        pytest.skip("needs a CUDA GPU (none visible)")
    return open_cuda_runtime(0)


@pytest.fixture(params=["fake", "cupy-stub", pytest.param("cupy", marks=pytest.mark.cuda)])
def res(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Resources]:
    """A bound runtime and a tracker of what the test made: the strict fake, ``CupyRuntime`` over
    a stub ``cupy`` backed by the strict fake, or CuPy on cuda:0."""
    fake = FakeCudaRuntime(seed=7)
    runtime: CudaRuntime = fake
    if request.param == "cupy-stub":
        install_cupy(monkeypatch, StubRuntime(fake))
        runtime = CupyRuntime(0)
    elif request.param == "cupy":
        runtime = _cupy_runtime_or_skip()
    runtime.bind_thread()
    resources = Resources(runtime)
    yield resources
    resources.release()
    fake.close()


@pytest.fixture
def fake() -> Iterator[FakeCudaRuntime]:
    runtime = FakeCudaRuntime(seed=3)
    runtime.bind_thread()
    yield runtime
    runtime.close()


@pytest.fixture
def stalled() -> Iterator[FakeCudaRuntime]:
    """A fake whose queued ops run only when it is closed."""
    runtime = FakeCudaRuntime(min_delay_s=HOURS_S, max_delay_s=HOURS_S)
    runtime.bind_thread()
    yield runtime
    runtime.close()


# -- the contract: both runtimes ----------------------------------------------------------------


def test_pinned_copies_land_by_the_event_in_stream_order(res: Resources) -> None:
    rt = res.runtime
    size = 4 * PAGE_BYTES
    first, second = res.host(size, register=True), res.host(size, register=True)
    first.write(b"\x01" * size)
    second.write(bytes(range(256)) * (size // 256))
    device = res.malloc(size)
    stream = res.stream()
    # Same destination twice: only stream order makes the second win.
    rt.copy_batch_async([CopyRange(device, first.address, size), CopyRange(device, second.address, size)], stream)
    rt.copy_batch_async([CopyRange(device, first.address, PAGE_BYTES)], stream)
    res.sync(stream)
    back = res.read_back(device, size)
    assert back == first.read()[:PAGE_BYTES] + second.read()[PAGE_BYTES:]


def test_device_to_pinned_copies_land_by_the_event(res: Resources) -> None:
    rt = res.runtime
    size = 2 * PAGE_BYTES
    device = res.malloc(size)
    rt.memset(device, 0x3C, size)
    out = res.host(size, register=True)
    stream = res.stream()
    pages = [CopyRange(out.address + i * PAGE_BYTES, device + i * PAGE_BYTES, PAGE_BYTES) for i in range(2)]
    rt.copy_batch_async(pages, stream)
    res.sync(stream)
    assert out.read() == b"\x3c" * size


def test_pageable_source_is_staged_before_the_call_returns(res: Resources) -> None:
    rt = res.runtime
    size = 3 * PAGE_BYTES
    source = res.host(size, register=False)
    source.write(b"\x11" * size)
    device = res.malloc(size)
    stream = res.stream()
    rt.copy_batch_async([CopyRange(device, source.address, size)], stream)
    source.write(b"\x99" * size)   # after the call: must not reach the device
    res.sync(stream)
    assert res.read_back(device, size) == b"\x11" * size


def test_copy_to_pageable_memory_is_done_when_the_call_returns(res: Resources) -> None:
    rt = res.runtime
    size = 2 * PAGE_BYTES
    device = res.malloc(size)
    rt.memset(device, 0x5A, size)
    out = res.host(size, register=False)
    stream = res.stream()
    rt.copy_batch_async([CopyRange(out.address, device, size)], stream)
    assert out.read() == b"\x5a" * size
    res.sync(stream)


def test_device_to_device_and_host_to_host_copies(res: Resources) -> None:
    rt = res.runtime
    a, b = res.malloc(PAGE_BYTES), res.malloc(PAGE_BYTES)
    rt.memset(a, 0x21, PAGE_BYTES)
    src, dst = res.host(PAGE_BYTES, register=True), res.host(PAGE_BYTES, register=True)
    src.write(b"\x42" * PAGE_BYTES)
    stream = res.stream()
    rt.copy_batch_async([CopyRange(b, a, PAGE_BYTES), CopyRange(dst.address, src.address, PAGE_BYTES)], stream)
    res.sync(stream)
    assert res.read_back(b, PAGE_BYTES) == b"\x21" * PAGE_BYTES
    assert dst.read() == b"\x42" * PAGE_BYTES


def test_memset_fills_part_of_an_allocation(res: Resources) -> None:
    rt = res.runtime
    device = res.malloc(4 * PAGE_BYTES)
    rt.memset(device, 0, 4 * PAGE_BYTES)
    rt.memset(device + PAGE_BYTES, 0xFF, 2 * PAGE_BYTES)
    back = res.read_back(device, 4 * PAGE_BYTES)
    assert back == bytes(PAGE_BYTES) + b"\xff" * (2 * PAGE_BYTES) + bytes(PAGE_BYTES)


def test_mem_info_drops_by_a_malloc_and_recovers_on_free(res: Resources) -> None:
    rt = res.runtime
    size = 64 << 20
    free_before, total = rt.mem_info()
    assert 0 < free_before <= total
    ptr = rt.malloc(size)
    free_during, _ = rt.mem_info()
    rt.free(ptr)
    free_after, _ = rt.mem_info()
    assert free_during <= free_before - size
    assert free_after >= free_during + size


def test_ipc_handles_are_64_bytes_and_distinct_per_allocation(res: Resources) -> None:
    rt = res.runtime
    a, b = res.malloc(PAGE_BYTES), res.malloc(PAGE_BYTES)
    handle_a, handle_b = rt.ipc_mem_handle(a), rt.ipc_mem_handle(b)
    assert len(handle_a) == len(handle_b) == IPC_HANDLE_BYTES
    assert handle_a != handle_b


def test_host_register_refuses_size_zero_overlap_and_unknown_unregister(res: Resources) -> None:
    rt = res.runtime
    buffer = res.host(4 * PAGE_BYTES, register=False)
    with pytest.raises(CudaError, match="(?i)host_?register"):
        rt.host_register(buffer.address, 0)
    # Chunks of one buffer, registered one after the other, are fine.
    rt.host_register(buffer.address, 2 * PAGE_BYTES)
    rt.host_register(buffer.address + 2 * PAGE_BYTES, 2 * PAGE_BYTES)
    with pytest.raises(CudaError, match="(?i)host_?register"):
        rt.host_register(buffer.address + PAGE_BYTES, 2 * PAGE_BYTES)
    rt.host_unregister(buffer.address + 2 * PAGE_BYTES)
    rt.host_unregister(buffer.address)
    with pytest.raises(CudaError, match="(?i)host_?unregister"):
        rt.host_unregister(buffer.address)


def test_a_copy_of_no_bytes_is_refused_and_queues_nothing(res: Resources) -> None:
    rt = res.runtime
    device = res.malloc(PAGE_BYTES)
    rt.memset(device, 0x01, PAGE_BYTES)
    source = res.host(PAGE_BYTES, register=True)
    source.write(b"\x02" * PAGE_BYTES)
    stream = res.stream()
    with pytest.raises(CudaError, match="size_bytes must be > 0"):
        rt.copy_batch_async([CopyRange(device, source.address, 0), CopyRange(device, source.address, 8)], stream)
    res.sync(stream)
    assert res.read_back(device, 8) == b"\x01" * 8


def test_events_of_an_idle_stream_complete_and_each_stream_keeps_its_order(res: Resources) -> None:
    rt = res.runtime
    streams = [res.stream(), res.stream()]
    res.sync(streams[0])
    source = res.host(2 * PAGE_BYTES, register=True)
    source.write(b"\x0a" * PAGE_BYTES + b"\x0b" * PAGE_BYTES)
    devices = [res.malloc(PAGE_BYTES), res.malloc(PAGE_BYTES)]
    for round_index in range(2):
        for stream, device in zip(streams, devices, strict=True):
            offset = ((round_index + devices.index(device)) % 2) * PAGE_BYTES
            rt.copy_batch_async([CopyRange(device, source.address + offset, PAGE_BYTES)], stream)
    events = [rt.record_event(stream) for stream in streams]
    for event in reversed(events):
        rt.wait_event(event)
        rt.wait_event(event)   # waiting twice is allowed
        rt.destroy_event(event)
    assert res.read_back(devices[0], PAGE_BYTES) == b"\x0b" * PAGE_BYTES
    assert res.read_back(devices[1], PAGE_BYTES) == b"\x0a" * PAGE_BYTES


def test_each_thread_binds_then_uses_the_runtime(res: Resources) -> None:
    rt = res.runtime
    device = res.malloc(PAGE_BYTES)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            rt.bind_thread()
            rt.memset(device, 0x77, PAGE_BYTES)
        except BaseException as exc:   # reported to the test thread
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert errors == []
    assert res.read_back(device, PAGE_BYTES) == b"\x77" * PAGE_BYTES


# -- the fake's strictness ----------------------------------------------------------------------


def test_fake_device_memory_is_fresh_aligned_apart_and_never_host(fake: FakeCudaRuntime) -> None:
    a, b = fake.malloc(1000), fake.malloc(1000)
    assert a >= DEVICE_BASE and a % DEVICE_ALIGN_BYTES == 0 and b % DEVICE_ALIGN_BYTES == 0
    assert b > a + 1000   # a gap: an overrun of a never lands in b
    assert fake.read_device(a, 1000) == bytes([FRESH_BYTE]) * 1000
    assert fake.allocations() == {a: 1000, b: 1000}
    assert fake.mem_info() == ((1 << 30) - 2000, 1 << 30)
    with pytest.raises(CudaError, match="read_device"):
        fake.read_device(a + 900, 200)
    with pytest.raises(CudaError, match="host_register.*device memory"):
        fake.host_register(a, 1000)
    fake.free(a)
    with pytest.raises(CudaError, match="free"):
        fake.free(a)
    fake.free(b)


def test_fake_malloc_fails_beyond_total_bytes() -> None:
    rt = FakeCudaRuntime(total_bytes=10_000)
    rt.bind_thread()
    first = rt.malloc(6000)
    with pytest.raises(CudaError, match="malloc.*out of memory"):
        rt.malloc(5000)
    rt.free(first)
    rt.free(rt.malloc(10_000))
    rt.close()


def test_fake_refuses_threads_that_did_not_bind(fake: FakeCudaRuntime) -> None:
    caught: list[CudaError] = []

    def unbound() -> None:
        try:
            fake.malloc(64)
        except CudaError as exc:
            caught.append(exc)
        fake.allocations()   # inspection helpers need no bind

    thread = threading.Thread(target=unbound)
    thread.start()
    thread.join()
    assert len(caught) == 1 and "bind_thread" in str(caught[0])
    assert fake.allocations() == {}


def test_fake_pinned_source_is_read_when_the_copy_runs(stalled: FakeCudaRuntime) -> None:
    source = HostBuffer(PAGE_BYTES)
    stalled.host_register(source.address, PAGE_BYTES)
    device = stalled.malloc(PAGE_BYTES)
    stream = stalled.create_stream()
    source.write(b"\x01" * PAGE_BYTES)
    stalled.copy_batch_async([CopyRange(device, source.address, PAGE_BYTES)], stream)
    event = stalled.record_event(stream)
    source.write(b"\x02" * PAGE_BYTES)   # a caller that reuses its buffer too early
    assert stalled.pending_copies() == 1
    assert stalled.read_device(device, PAGE_BYTES) == bytes([FRESH_BYTE]) * PAGE_BYTES
    with pytest.raises(CudaError, match="destroy_event.*not done"):
        stalled.destroy_event(event)
    stalled.close()
    assert stalled.pending_copies() == 0
    assert stalled.read_device(device, PAGE_BYTES) == b"\x02" * PAGE_BYTES
    source.close()


def test_fake_refuses_to_free_memset_or_unregister_what_a_queued_copy_touches(stalled: FakeCudaRuntime) -> None:
    source = HostBuffer(PAGE_BYTES)
    stalled.host_register(source.address, PAGE_BYTES)
    device = stalled.malloc(2 * PAGE_BYTES)
    stream = stalled.create_stream()
    stalled.copy_batch_async([CopyRange(device, source.address, PAGE_BYTES)], stream)
    with pytest.raises(CudaError, match="free.*queued copy"):
        stalled.free(device)
    with pytest.raises(CudaError, match="memset.*queued copy"):
        stalled.memset(device, 0, PAGE_BYTES)
    with pytest.raises(CudaError, match="host_unregister.*queued copy"):
        stalled.host_unregister(source.address)
    with pytest.raises(CudaError, match="destroy_stream.*queued"):
        stalled.destroy_stream(stream)
    stalled.memset(device + PAGE_BYTES, 0x10, PAGE_BYTES)   # the untouched half
    assert stalled.read_device(device + PAGE_BYTES, 4) == b"\x10" * 4
    stalled.close()
    source.close()


@pytest.mark.parametrize(("case", "problem"), [
    ("size_zero", "size_bytes must be > 0"),
    ("past_the_end", "not inside one live allocation"),
    ("in_a_gap", "not inside one live allocation"),
    ("null_host", "neither device nor host"),
    ("overlap", "overlap"),
])
def test_fake_copy_batch_queues_nothing_when_one_range_is_bad(fake: FakeCudaRuntime, case: str,
                                                             problem: str) -> None:
    device = fake.malloc(PAGE_BYTES)
    host = HostBuffer(PAGE_BYTES)
    bad = {
        "size_zero": CopyRange(device, host.address, 0),
        "past_the_end": CopyRange(device + 1, host.address, PAGE_BYTES),
        "in_a_gap": CopyRange(device + 2 * PAGE_BYTES, host.address, 1),
        "null_host": CopyRange(device, 0, 8),
        "overlap": CopyRange(device + 8, device, 16),
    }[case]
    fake.memset(device, 0, PAGE_BYTES)
    stream = fake.create_stream()
    with pytest.raises(CudaError, match=rf"copy_batch_async \(copy 1\).*{problem}"):
        fake.copy_batch_async([CopyRange(device, host.address, 8), bad], stream)
    fake.wait_event(fake.record_event(stream))
    assert fake.pending_copies() == 0
    assert fake.read_device(device, 8) == bytes(8)
    host.close()


def test_fake_failed_copies_do_not_land_and_fail_the_next_event_only(fake: FakeCudaRuntime) -> None:
    source = HostBuffer(2 * PAGE_BYTES)
    source.write(b"\x66" * (2 * PAGE_BYTES))
    fake.host_register(source.address, 2 * PAGE_BYTES)
    device = fake.malloc(2 * PAGE_BYTES)
    stream = fake.create_stream()
    fake.fail_next_copies(1)
    fake.copy_batch_async([CopyRange(device + i * PAGE_BYTES, source.address + i * PAGE_BYTES, PAGE_BYTES)
                           for i in range(2)], stream)
    failed = fake.record_event(stream)
    with pytest.raises(CudaError, match="wait_event.*failed"):
        fake.wait_event(failed)
    fake.destroy_event(failed)
    assert fake.read_device(device, 2 * PAGE_BYTES) == bytes([FRESH_BYTE]) * PAGE_BYTES + b"\x66" * PAGE_BYTES
    fake.copy_batch_async([CopyRange(device, source.address, PAGE_BYTES)], stream)
    fine = fake.record_event(stream)
    fake.wait_event(fine)
    assert fake.read_device(device, PAGE_BYTES) == b"\x66" * PAGE_BYTES
    fake.host_unregister(source.address)
    source.close()


def test_fake_ipc_handles_open_their_live_allocation_only(fake: FakeCudaRuntime) -> None:
    device = fake.malloc(PAGE_BYTES)
    with pytest.raises(CudaError, match="ipc_mem_handle.*base"):
        fake.ipc_mem_handle(device + 256)
    handle = fake.ipc_mem_handle(device)
    assert fake.open_ipc(handle) == device
    fake.free(device)
    with pytest.raises(CudaError, match="open_ipc.*freed"):
        fake.open_ipc(handle)


def test_fake_limits_one_registration_and_counts_calls() -> None:
    rt = FakeCudaRuntime(max_register_bytes=2 * PAGE_BYTES)
    rt.bind_thread()
    buffer = HostBuffer(3 * PAGE_BYTES)
    with pytest.raises(CudaError, match="host_register.*chunks"):
        rt.host_register(buffer.address, 3 * PAGE_BYTES)
    rt.host_register(buffer.address, 2 * PAGE_BYTES)
    rt.host_register(buffer.address + 2 * PAGE_BYTES, PAGE_BYTES)
    assert rt.registered() == {buffer.address: 2 * PAGE_BYTES, buffer.address + 2 * PAGE_BYTES: PAGE_BYTES}
    assert rt.calls("host_register") == 3 and rt.calls("copy_batch_async") == 0
    with pytest.raises(ValueError, match="not a CudaRuntime method"):
        rt.calls("memcpy")
    rt.close()
    with pytest.raises(CudaError, match="closed"):
        rt.malloc(1)
    buffer.close()


def test_fake_events_and_streams_are_checked(fake: FakeCudaRuntime) -> None:
    stream = fake.create_stream()
    event = fake.record_event(stream)
    fake.wait_event(event)
    fake.destroy_event(event)
    with pytest.raises(CudaError, match="destroy_event.*unknown event"):
        fake.destroy_event(event)
    with pytest.raises(CudaError, match="wait_event.*unknown event"):
        fake.wait_event(event)
    fake.destroy_stream(stream)
    with pytest.raises(CudaError, match="record_event.*unknown stream"):
        fake.record_event(stream)
