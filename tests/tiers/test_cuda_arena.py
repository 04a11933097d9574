"""The CUDA hbm arena against the strict fake runtime: one zeroed allocation per region, exported
by IPC, budgeted, refused when the device lacks free memory, freed once, rolled back on failure."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from cuda_fake_runtime import FRESH_BYTE, FakeCudaRuntime

from tierd.errors import InvalidArgument, ResourceExhausted, TierdError, Unavailable
from tierd.handles import HandleKind
from tierd.tier import Tier
from tierd.tiers.base import Medium
from tierd.tiers.cuda_arena import CudaArena
from tierd.tiers.cuda_runtime import CudaError

MiB = 1 << 20


@pytest.fixture
def runtime() -> Iterator[FakeCudaRuntime]:
    fake = FakeCudaRuntime(device_index=1, total_bytes=64 * MiB)
    yield fake
    fake.close()


class FailingRuntime(FakeCudaRuntime):
    """The fake, where one named call fails (as a real device would, e.g. out of memory)."""

    def __init__(self, fail: str, total_bytes: int, free_bytes_said: int | None = None) -> None:
        super().__init__(device_index=0, total_bytes=total_bytes)
        self.fail = fail
        self.free_bytes_said = free_bytes_said

    def mem_info(self) -> tuple[int, int]:
        free_bytes, total_bytes = super().mem_info()
        # Another process may take memory between the free-memory check and cudaMalloc.
        return (self.free_bytes_said if self.free_bytes_said is not None else free_bytes), total_bytes

    def memset(self, ptr: int, value: int, size_bytes: int) -> None:
        if self.fail == "memset":
            raise CudaError("memset: an illegal memory access was encountered")
        super().memset(ptr, value, size_bytes)

    def ipc_mem_handle(self, ptr: int) -> bytes:
        if self.fail == "ipc_mem_handle":
            raise CudaError("ipc_mem_handle: operation not supported")
        return super().ipc_mem_handle(ptr)


def test_each_region_is_one_zeroed_allocation(runtime: FakeCudaRuntime) -> None:
    arena = CudaArena(Tier.HBM, 16 * MiB, runtime)
    region = arena.create_region(7, num_slots=4, page_bytes=4096)
    assert runtime.calls("malloc") == 1
    assert list(runtime.allocations().values()) == [4 * 4096]
    base = region.device_ptr(0)
    assert FRESH_BYTE != 0
    assert runtime.read_device(base, 4 * 4096) == bytes(4 * 4096)  # malloc left FRESH_BYTE there
    second = arena.create_region(8, num_slots=2, page_bytes=4096)
    assert runtime.calls("malloc") == 2 and len(runtime.allocations()) == 2
    assert runtime.read_device(second.device_ptr(0), 2 * 4096) == bytes(2 * 4096)
    assert region.medium is Medium.DEVICE and region.page_index is None
    assert region.size_bytes == 4 * 4096 and arena.assigned_bytes == 6 * 4096
    arena.close()


def test_handle_maps_the_whole_allocation(runtime: FakeCudaRuntime) -> None:
    arena = CudaArena(Tier.HBM, 16 * MiB, runtime)
    region = arena.create_region(3, num_slots=5, page_bytes=1024)
    handle = region.handle()
    assert handle.kind is HandleKind.CUDA_IPC and handle.tier is Tier.HBM
    assert (handle.size_bytes, handle.page_bytes, handle.num_slots, handle.offset_bytes) == (5 * 1024, 1024, 5, 0)
    assert handle.device == "cuda:1" and region.device_index == 1
    assert runtime.open_ipc(handle.ipc_handle) == region.device_ptr(0)
    other = arena.create_region(4, num_slots=5, page_bytes=1024)
    assert runtime.open_ipc(other.handle().ipc_handle) != runtime.open_ipc(handle.ipc_handle)
    arena.close()


def test_device_ptr_is_checked(runtime: FakeCudaRuntime) -> None:
    arena = CudaArena(Tier.HBM, 16 * MiB, runtime)
    region = arena.create_region(1, num_slots=3, page_bytes=512)
    base = region.device_ptr(0)
    assert [region.device_ptr(slot) - base for slot in range(3)] == [0, 512, 1024]
    runtime.write_device(region.device_ptr(2), b"\x01" * 512)  # the last slot lies inside the allocation
    for bad in (3, -1, True, "1"):
        with pytest.raises(InvalidArgument, match="slot"):
            region.device_ptr(bad)  # type: ignore[arg-type]
    region.close()
    with pytest.raises(Unavailable, match="closed"):
        region.device_ptr(0)
    arena.close()


def test_budget_refusal_allocates_nothing(runtime: FakeCudaRuntime) -> None:
    arena = CudaArena(Tier.HBM, 8 * 1024, runtime)
    arena.create_region(1, num_slots=1, page_bytes=4096)
    with pytest.raises(ResourceExhausted, match="hbm budget"):
        arena.create_region(2, num_slots=2, page_bytes=4096)
    assert runtime.calls("malloc") == 1 and arena.assigned_bytes == 4096
    arena.close()


def test_free_memory_refusal_names_the_missing_bytes() -> None:
    runtime = FakeCudaRuntime(device_index=2, total_bytes=MiB)
    arena = CudaArena(Tier.HBM, 64 * MiB, runtime)  # the budget is larger than the device
    with pytest.raises(ResourceExhausted) as caught:
        arena.create_region(5, num_slots=3, page_bytes=MiB // 2)
    message = str(caught.value)
    assert "1572864 bytes" in message and "1048576 bytes" in message and "cuda:2" in message
    assert "524288 bytes) missing" in message and "\n" not in message
    assert runtime.calls("malloc") == 0 and arena.assigned_bytes == 0
    arena.create_region(5, num_slots=2, page_bytes=MiB // 2)  # what fits still does
    arena.close()
    runtime.close()


def test_close_frees_once_and_returns_the_budget(runtime: FakeCudaRuntime) -> None:
    arena = CudaArena(Tier.HBM, 16 * MiB, runtime)
    region = arena.create_region(1, num_slots=2, page_bytes=4096)
    region.close()
    region.close()
    assert runtime.calls("free") == 1 and runtime.allocations() == {}
    assert arena.assigned_bytes == 0 and region.closed
    arena.close()
    assert runtime.calls("free") == 1


def test_arena_close_frees_every_region_and_refuses_new_ones(runtime: FakeCudaRuntime) -> None:
    arena = CudaArena(Tier.HBM, 16 * MiB, runtime)
    regions = [arena.create_region(ns, num_slots=2, page_bytes=4096) for ns in range(3)]
    arena.close()
    arena.close()
    assert runtime.allocations() == {} and runtime.calls("free") == 3
    assert all(region.closed for region in regions) and arena.regions() == []
    with pytest.raises(Unavailable, match="closed"):
        arena.create_region(9, num_slots=1, page_bytes=4096)


def test_regions_made_and_closed_on_other_threads(runtime: FakeCudaRuntime) -> None:
    arena = CudaArena(Tier.HBM, 16 * MiB, runtime)
    made: list[object] = []
    maker = threading.Thread(target=lambda: made.append(arena.create_region(1, 2, 4096)))
    maker.start()
    maker.join()
    assert len(made) == 1 and len(runtime.allocations()) == 1
    closer = threading.Thread(target=arena.close)
    closer.start()
    closer.join()
    assert runtime.allocations() == {}


def test_failed_malloc_rolls_back() -> None:
    runtime = FailingRuntime("none", total_bytes=MiB, free_bytes_said=64 * MiB)
    arena = CudaArena(Tier.HBM, 64 * MiB, runtime)
    with pytest.raises(ResourceExhausted, match="cudaMalloc of 2.0 MiB .* lower --hbm"):
        arena.create_region(1, num_slots=2, page_bytes=MiB)
    assert arena.assigned_bytes == 0 and runtime.allocations() == {}
    arena.close()
    runtime.close()


@pytest.mark.parametrize("call", ["memset", "ipc_mem_handle"])
def test_failed_preparation_frees_the_allocation(call: str) -> None:
    runtime = FailingRuntime(call, total_bytes=MiB)
    arena = CudaArena(Tier.HBM, MiB, runtime)
    with pytest.raises(TierdError) as caught:
        arena.create_region(1, num_slots=2, page_bytes=4096)
    assert "the allocation was freed" in str(caught.value) and "\n" not in str(caught.value)
    assert runtime.allocations() == {} and runtime.calls("free") == 1
    assert arena.assigned_bytes == 0 and arena.regions() == []
    arena.close()
    runtime.close()


def test_bad_geometry_is_refused(runtime: FakeCudaRuntime) -> None:
    arena = CudaArena(Tier.HBM, MiB, runtime)
    for num_slots, page_bytes in ((0, 4096), (1, 0), (True, 4096)):
        with pytest.raises(InvalidArgument):
            arena.create_region(1, num_slots, page_bytes)
    assert runtime.calls("malloc") == 0
    arena.close()
