"""Page-locked dram against the strict fake runtime: chunked registration covering each region,
unregistered before it is unmapped, rolled back on failure, counted in ``pinned_bytes``."""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from cuda_fake_runtime import FakeCudaRuntime
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.errors import InvalidArgument, ResourceExhausted
from tierd.tier import Tier
from tierd.tiers.cuda_runtime import CudaError
from tierd.tiers.pinned import OS_PAGE_BYTES, PinnedShmArena, chunk_plan
from tierd.tiers.shm_arena import ShmArena, ShmRegion

PREFIX = "tierdpintest"
PAGE = OS_PAGE_BYTES
PAGE_BYTES = PAGE + 24  # slots straddle OS pages: the last chunk ends mid-page


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _mapped(address: int) -> bool:
    """Whether ``address`` lies in one of this process's mappings now."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = (int(part, 16) for part in line.split()[0].split("-"))
            if start <= address < end:
                return True
    return False


@pytest.fixture(autouse=True)
def no_leaked_descriptors() -> Iterator[None]:
    before = _open_fds()
    yield
    leaked = _open_fds() - before
    assert not leaked, f"closed regions left descriptors open: {sorted(leaked)}"


@pytest.fixture
def runtime() -> Iterator[FakeCudaRuntime]:
    fake = FakeCudaRuntime(device_index=0, max_register_bytes=3 * PAGE)
    yield fake
    fake.close()


def _arena(runtime: FakeCudaRuntime, chunk_bytes: int = 2 * PAGE + 100,
           capacity_bytes: int = 64 * PAGE_BYTES) -> PinnedShmArena:
    return PinnedShmArena(Tier.DRAM, capacity_bytes, PREFIX, False, runtime, chunk_bytes)


class FailingRegistration(FakeCudaRuntime):
    """The fake, where the ``fail_at``-th ``host_register`` (1-based) fails, and each unregister
    notes whether its range was still mapped."""

    def __init__(self, fail_at: int) -> None:
        super().__init__(device_index=0)
        self.fail_at = fail_at
        self.registers = 0
        self.mapped_at_unregister: list[bool] = []

    def host_register(self, address: int, size_bytes: int) -> None:
        self.registers += 1
        if self.registers == self.fail_at:
            raise CudaError("host_register: out of memory (cudaErrorMemoryAllocation)")
        super().host_register(address, size_bytes)

    def host_unregister(self, address: int) -> None:
        self.mapped_at_unregister.append(_mapped(address))
        super().host_unregister(address)


def test_regions_are_registered_in_page_aligned_chunks_under_the_limit(runtime: FakeCudaRuntime) -> None:
    arena = _arena(runtime)  # chunks of 2 pages (the 100 bytes are rounded off), driver limit 3 pages
    region = arena.create_region(1, num_slots=5, page_bytes=PAGE_BYTES)  # 5 pages + 120 bytes
    base = region.slot_address(0)
    assert runtime.registered() == {base: 2 * PAGE, base + 2 * PAGE: 2 * PAGE, base + 4 * PAGE: PAGE + 120}
    assert runtime.calls("host_register") == 3
    assert region.pinned and arena.pinned_bytes == 5 * PAGE_BYTES
    region.close()
    arena.close()


def test_close_unregisters_every_chunk_while_still_mapped() -> None:
    runtime = FailingRegistration(fail_at=0)
    arena = PinnedShmArena(Tier.DRAM, 64 * PAGE_BYTES, PREFIX, False, runtime, 2 * PAGE)
    region = arena.create_region(1, num_slots=5, page_bytes=PAGE_BYTES)
    base = region.slot_address(0)
    region.close()
    assert runtime.registered() == {} and runtime.mapped_at_unregister == [True, True, True]
    assert not _mapped(base), "the region is unmapped after it was unregistered"
    assert not region.pinned and arena.pinned_bytes == 0 and arena.assigned_bytes == 0
    region.close()
    assert runtime.calls("host_unregister") == 3
    arena.close()
    runtime.close()


def test_pinned_bytes_counts_open_regions_and_arena_close_unregisters_all(runtime: FakeCudaRuntime) -> None:
    arena = _arena(runtime)
    first = arena.create_region(1, num_slots=2, page_bytes=PAGE_BYTES)
    second = arena.create_region(2, num_slots=7, page_bytes=PAGE_BYTES)
    assert arena.pinned_bytes == 9 * PAGE_BYTES
    assert sum(runtime.registered().values()) == 9 * PAGE_BYTES
    first.close()
    assert arena.pinned_bytes == 7 * PAGE_BYTES
    arena.close()
    assert arena.pinned_bytes == 0 and runtime.registered() == {} and second.closed


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_failed_registration_rolls_back(fail_at: int) -> None:
    runtime = FailingRegistration(fail_at)
    arena = PinnedShmArena(Tier.DRAM, 64 * PAGE_BYTES, PREFIX, False, runtime, 2 * PAGE)
    with pytest.raises(ResourceExhausted) as caught:
        arena.create_region(4, num_slots=5, page_bytes=PAGE_BYTES)
    message = str(caught.value)
    assert f"chunk {fail_at}/3" in message and f"{5 * PAGE_BYTES} bytes" in message
    assert "RLIMIT_MEMLOCK" in message and "pin_dram = false" in message and "\n" not in message
    assert runtime.registered() == {} and runtime.calls("host_unregister") == fail_at - 1
    assert all(runtime.mapped_at_unregister)
    assert arena.pinned_bytes == 0 and arena.assigned_bytes == 0 and arena.regions() == []
    region = arena.create_region(4, num_slots=1, page_bytes=PAGE_BYTES)  # the next one works
    assert region.pinned
    arena.close()
    runtime.close()


def test_a_chunk_above_the_drivers_limit_is_refused_cleanly(runtime: FakeCudaRuntime) -> None:
    arena = _arena(runtime, chunk_bytes=4 * PAGE)  # the fake's driver takes at most 3 pages a call
    with pytest.raises(ResourceExhausted, match="cudaHostRegister of chunk 1/2"):
        arena.create_region(1, num_slots=5, page_bytes=PAGE_BYTES)
    assert runtime.registered() == {} and arena.assigned_bytes == 0 and arena.pinned_bytes == 0
    arena.close()


def test_shared_fd_still_finds_pinned_regions(runtime: FakeCudaRuntime) -> None:
    arena = _arena(runtime)
    assert isinstance(arena, ShmArena)
    region = arena.create_region(1, num_slots=2, page_bytes=PAGE_BYTES)
    page = np.random.default_rng(3).integers(0, 256, PAGE_BYTES, dtype=np.uint8).tobytes()
    view = region.slot_view(1)
    view[:] = page
    view.release()
    with arena.shared_fd(region.grant) as fd:
        assert fd is not None
        mapped = mmap.mmap(fd, 2 * PAGE_BYTES, flags=mmap.MAP_SHARED)
    assert mapped[PAGE_BYTES:] == page
    mapped.close()
    arena.close()


def test_regions_pinned_on_one_thread_are_unpinned_on_another(runtime: FakeCudaRuntime) -> None:
    arena = _arena(runtime)
    made: list[ShmRegion] = []
    maker = threading.Thread(target=lambda: made.append(arena.create_region(1, 3, PAGE_BYTES)))
    maker.start()
    maker.join()
    assert len(made) == 1 and arena.pinned_bytes == 3 * PAGE_BYTES
    closer = threading.Thread(target=arena.close)
    closer.start()
    closer.join()
    assert runtime.registered() == {} and arena.pinned_bytes == 0


def test_closing_with_views_exported_still_unregisters(runtime: FakeCudaRuntime) -> None:
    arena = _arena(runtime)
    region = arena.create_region(1, num_slots=2, page_bytes=PAGE_BYTES)
    whole = region.array()
    region.close()
    assert runtime.registered() == {} and arena.pinned_bytes == 0
    whole[0, 0] = 1  # still mapped until the view is dropped
    del whole
    arena.close()


def test_bad_chunk_size_is_refused(runtime: FakeCudaRuntime) -> None:
    for chunk_bytes in (0, -1, True):
        with pytest.raises(InvalidArgument, match="register_chunk_bytes"):
            _arena(runtime, chunk_bytes=chunk_bytes)


@settings(deadline=None)
@given(size_bytes=st.integers(1, 1 << 24), chunk_bytes=st.integers(1, 1 << 22),
       os_page_bytes=st.sampled_from([4096, 16384, 65536]))  # <= 4096 chunks
def test_chunk_plans_cover_the_region_exactly(size_bytes: int, chunk_bytes: int, os_page_bytes: int) -> None:
    plan = chunk_plan(size_bytes, chunk_bytes, os_page_bytes)
    limit_bytes = max(chunk_bytes, os_page_bytes)
    assert all(0 < size <= limit_bytes for _offset, size in plan)
    assert all(offset % os_page_bytes == 0 for offset, _size in plan)
    assert [offset for offset, _size in plan] == [0] + [o + s for o, s in plan[:-1]]
    assert plan[-1][0] + plan[-1][1] == size_bytes
