"""ShmArena / ShmRegion: regions as sealed memfds, their grants, budget, names and life cycle.

Copies in and out of slots are the transfer engine's (through ``slot_view``); a worker maps a
region with ``tierd_client.shm.map_shm`` over the region socket (tests/clients/test_client_shm.py).
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.errors import InvalidArgument, ResourceExhausted, Unavailable
from tierd.handles import HandleKind, RegionHandle
from tierd.page_index import PageIndexReader, index_bytes_for
from tierd.region_wire import GRANT_BYTES
from tierd.tier import Tier
from tierd.tiers.base import Medium
from tierd.tiers.host_memory import mem_available_bytes
from tierd.tiers.shm_arena import ShmArena, ShmRegion

PREFIX = "tierdtest"
PAGE_BYTES = 4096 + 24  # not a multiple of the OS page: slots straddle page boundaries
CHILD_TIMEOUT_S = 120.0


SHM_DIR = Path("/dev/shm")


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def nothing_named_and_no_leaked_descriptors() -> Iterator[None]:
    before = _open_fds()
    yield
    assert not list(SHM_DIR.glob(f"{PREFIX}*")), "regions must leave nothing in /dev/shm to open"
    leaked = _open_fds() - before
    assert not leaked, f"closed regions left descriptors open: {sorted(leaked)}"


@pytest.fixture
def arena() -> Iterator[ShmArena]:
    with ShmArena(Tier.DRAM, 64 * PAGE_BYTES, PREFIX, prefault=False) as arena:
        yield arena


def _page(seed: int, page_bytes: int = PAGE_BYTES) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, page_bytes, dtype=np.uint8).tobytes()


def _write(region: ShmRegion, slot: int, page: bytes) -> None:
    view = region.slot_view(slot)
    view[:] = page
    view.release()


@pytest.mark.parametrize("prefault", [False, True])
def test_round_trip_is_bit_exact(prefault: bool) -> None:
    with ShmArena(Tier.HBM, 16 * PAGE_BYTES, PREFIX, prefault=prefault) as arena:
        region = arena.create_region(ns_id=3, num_slots=8, page_bytes=PAGE_BYTES)
        assert not region.array().any(), "a new region must read as zeros"
        assert region.medium is Medium.HOST
        for slot in range(8):
            _write(region, slot, _page(slot))
        for slot in reversed(range(8)):
            assert bytes(region.slot_view(slot)) == _page(slot)
        assert region.array().shape == (8, PAGE_BYTES)
        assert region.array()[5].tobytes() == _page(5)


@settings(max_examples=40, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2**32 - 1)), max_size=20))
def test_slots_hold_their_last_write_and_nothing_leaks_across_slots(
        writes: list[tuple[int, int]]) -> None:
    page_bytes = 1000
    model = {slot: bytes(page_bytes) for slot in range(6)}
    with ShmArena(Tier.DRAM, 6 * page_bytes, PREFIX, prefault=False) as arena:
        region = arena.create_region(ns_id=0, num_slots=6, page_bytes=page_bytes)
        for slot, seed in writes:
            model[slot] = _page(seed, page_bytes)
            _write(region, slot, model[slot])
        for slot, expected in model.items():
            assert region.array()[slot].tobytes() == expected


def test_slot_views_are_exactly_one_slot(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=3, page_bytes=PAGE_BYTES)
    _write(region, 2, _page(42))
    assert region.array()[2].tobytes() == _page(42)
    assert not region.array()[:2].any(), "a slot view must not reach into its neighbours"
    assert region.slot_view(1).nbytes == PAGE_BYTES and not region.slot_view(1).readonly


def test_bad_slots_are_rejected(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=4, page_bytes=PAGE_BYTES)
    for bad_slot in (4, 100):
        with pytest.raises(InvalidArgument, match=rf"slot {bad_slot} is out of range.*4 slots"):
            region.slot_view(bad_slot)
    for bad in (-1, True, 1.0, "0", None):
        with pytest.raises(InvalidArgument, match="slot must be an integer"):
            region.slot_view(bad)  # type: ignore[arg-type]


def test_budget_is_taken_by_regions_and_given_back_on_close() -> None:
    with ShmArena(Tier.DRAM, 10 * PAGE_BYTES, PREFIX, prefault=False) as arena:
        first = arena.create_region(ns_id=1, num_slots=6, page_bytes=PAGE_BYTES)
        assert arena.assigned_bytes == 6 * PAGE_BYTES
        assert arena.unassigned_bytes == 4 * PAGE_BYTES
        asked, left = 5 * PAGE_BYTES, 4 * PAGE_BYTES
        with pytest.raises(ResourceExhausted) as info:
            arena.create_region(ns_id=2, num_slots=5, page_bytes=PAGE_BYTES)
        message = str(info.value)
        assert "asks for" in message and f"({asked} bytes" in message
        assert f"({left} bytes) of the dram budget" in message
        assert arena.assigned_bytes == 6 * PAGE_BYTES
        assert [r.name for r in arena.regions()] == [first.name]
        second = arena.create_region(ns_id=2, num_slots=4, page_bytes=PAGE_BYTES)
        assert arena.unassigned_bytes == 0
        first.close()
        first.close()
        assert arena.assigned_bytes == 4 * PAGE_BYTES
        third = arena.create_region(ns_id=3, num_slots=5, page_bytes=PAGE_BYTES)
        assert {r.name for r in arena.regions()} == {second.name, third.name}


def test_zero_capacity_arena_refuses_every_region() -> None:
    with ShmArena(Tier.HBM, 0, PREFIX, prefault=True) as arena:
        with pytest.raises(ResourceExhausted, match=r"only 0 B \(0 bytes\)"):
            arena.create_region(ns_id=0, num_slots=1, page_bytes=1)


def test_region_name_handle_and_grant(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=7, num_slots=3, page_bytes=PAGE_BYTES)
    other = arena.create_region(ns_id=7, num_slots=3, page_bytes=PAGE_BYTES)
    assert region.name != other.name
    assert re.fullmatch(rf"{PREFIX}-dram-ns7-[0-9a-f]+", region.name)
    assert len(region.grant) == GRANT_BYTES and region.grant != other.grant
    handle = region.handle()
    assert handle == RegionHandle(tier=Tier.DRAM, kind=HandleKind.MEMFD, name=region.name,
                                  offset_bytes=0, size_bytes=3 * PAGE_BYTES, page_bytes=PAGE_BYTES,
                                  num_slots=3, device="cpu", grant=region.grant,
                                  index_bytes=index_bytes_for(3))
    assert region.grant.hex() not in repr(handle) and repr(region.grant) not in repr(handle)


def test_the_grant_opens_the_regions_memory_and_nothing_else(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=2, page_bytes=PAGE_BYTES)
    _write(region, 1, _page(5))
    with arena.shared_fd(region.grant) as fd:
        assert fd is not None and os.fstat(fd).st_size == 2 * PAGE_BYTES
        mapped = mmap.mmap(fd, 2 * PAGE_BYTES, flags=mmap.MAP_SHARED)
    assert mapped[PAGE_BYTES:] == _page(5)
    mapped[:4] = b"abcd"  # one memory: what a worker writes, the daemon reads
    assert bytes(region.slot_view(0))[:4] == b"abcd"
    mapped.close()
    for wrong in (bytes(GRANT_BYTES), region.grant[:-1] + bytes([region.grant[-1] ^ 1]), b""):
        with arena.shared_fd(wrong) as fd:
            assert fd is None


def test_slot_address_is_where_the_slot_view_writes(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=3, page_bytes=PAGE_BYTES)
    for slot in range(3):
        _write(region, slot, _page(20 + slot))
    for slot in range(3):  # what a DMA engine reads at the address is the slot's bytes
        assert ctypes.string_at(region.slot_address(slot), PAGE_BYTES) == _page(20 + slot)
    assert region.slot_address(2) - region.slot_address(0) == 2 * PAGE_BYTES
    assert not region.pinned, "a plain shm region is not page-locked"
    with pytest.raises(InvalidArgument, match="out of range"):
        region.slot_address(3)
    region.close()
    with pytest.raises(Unavailable, match="is closed"):
        region.slot_address(0)
    assert arena.pinned_bytes == 0


def test_a_worker_holding_the_descriptor_cannot_resize_the_region(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=2, page_bytes=PAGE_BYTES)
    with arena.shared_fd(region.grant) as fd:
        assert fd is not None
        for size_bytes in (0, PAGE_BYTES, 4 * PAGE_BYTES):
            with pytest.raises(PermissionError):
                os.ftruncate(fd, size_bytes)  # would turn the daemon's next copy into SIGBUS
    region.array()[1, -1] = 7  # still whole
    assert region.array()[1, -1] == 7


def test_close_is_idempotent_revokes_the_grant_and_refuses_later_copies(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=2, page_bytes=PAGE_BYTES)
    region.close()
    region.close()
    assert region.closed
    with arena.shared_fd(region.grant) as fd:
        assert fd is None
    with region.open_fd() as fd:
        assert fd is None
    with pytest.raises(Unavailable, match="is closed"):
        region.slot_view(0)
    with pytest.raises(Unavailable):
        region.array()
    assert arena.assigned_bytes == 0


def test_close_with_views_still_exported_keeps_views_valid(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=2, page_bytes=PAGE_BYTES)
    _write(region, 1, _page(9))
    whole = region.array()
    view = region.slot_view(1)
    region.close()
    assert arena.assigned_bytes == 0
    assert bytes(view) == _page(9), "an exported view must stay readable after close"
    whole[0, :3] = 1  # still mapped: no crash
    del whole, view


def test_arena_close_closes_every_region_and_refuses_new_ones() -> None:
    arena = ShmArena(Tier.DRAM, 8 * PAGE_BYTES, PREFIX, prefault=False)
    regions = [arena.create_region(ns_id=i, num_slots=2, page_bytes=PAGE_BYTES) for i in range(3)]
    arena.close()
    arena.close()
    assert all(r.closed for r in regions)
    assert arena.assigned_bytes == 0 and arena.regions() == []
    with pytest.raises(Unavailable, match="arena is closed"):
        arena.create_region(ns_id=9, num_slots=1, page_bytes=PAGE_BYTES)


def test_two_arenas_with_one_prefix_never_collide() -> None:
    with ShmArena(Tier.DRAM, 4 * PAGE_BYTES, PREFIX, prefault=False) as a, \
            ShmArena(Tier.DRAM, 4 * PAGE_BYTES, PREFIX, prefault=False) as b:
        ra = a.create_region(ns_id=0, num_slots=1, page_bytes=PAGE_BYTES)
        rb = b.create_region(ns_id=0, num_slots=1, page_bytes=PAGE_BYTES)
        assert ra.name != rb.name
        _write(ra, 0, _page(1))
        _write(rb, 0, _page(2))
        assert ra.array()[0].tobytes() == _page(1)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(tier=Tier.DISK, capacity_bytes=1, name_prefix=PREFIX), "memory tier"),
    (dict(tier=Tier.DRAM, capacity_bytes=-1, name_prefix=PREFIX), "capacity_bytes"),
    (dict(tier=Tier.DRAM, capacity_bytes=1, name_prefix="a/b"), "name_prefix"),
    (dict(tier=Tier.DRAM, capacity_bytes=1, name_prefix=""), "name_prefix"),
])
def test_arena_arguments_are_checked(kwargs: dict, pattern: str) -> None:
    with pytest.raises(InvalidArgument, match=pattern):
        ShmArena(prefault=False, **kwargs)


def test_region_arguments_are_checked(arena: ShmArena) -> None:
    for kwargs, pattern in ((dict(ns_id=-1, num_slots=1, page_bytes=1), "ns_id"),
                            (dict(ns_id=0, num_slots=0, page_bytes=1), "num_slots"),
                            (dict(ns_id=0, num_slots=1, page_bytes=0), "page_bytes")):
        with pytest.raises(InvalidArgument, match=pattern):
            arena.create_region(**kwargs)
    assert arena.assigned_bytes == 0


def test_mem_available_bytes_reads_meminfo() -> None:
    available = mem_available_bytes()
    assert available is not None and available > 0


def test_page_index_is_read_only_for_whoever_gets_its_descriptor() -> None:
    with ShmArena(Tier.DRAM, 4 * PAGE_BYTES, PREFIX, prefault=False) as arena:
        region = arena.create_region(1, 4, PAGE_BYTES)
        index = region.page_index
        assert index is not None and region.handle().index_bytes == index_bytes_for(4)
        index.published(b"k" * 16, 2)
        with arena.shared_fd(region.grant, index=True) as fd:
            assert fd is not None
            size = os.fstat(fd).st_size
            with pytest.raises(PermissionError):
                mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            with pytest.raises(PermissionError):
                os.pwrite(fd, b"x", 0)
            with pytest.raises(PermissionError):
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, 0)  # sealed: the seals cannot be undone
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        reader = PageIndexReader(memoryview(mm))
        found = reader.find(b"k" * 16)
        assert found is not None and found.slot == 2 and reader.is_open
        region.close()
        assert not reader.is_open  # the daemon's close is seen by every reader
        reader.release()
        mm.close()
