"""ShmArena / ShmRegion / map_region, and the host-memory start-up check."""

from __future__ import annotations

import multiprocessing
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.errors import ConfigError, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from tierd.tier import Tier
from tierd.tiers.base import HandleKind, RegionHandle
from tierd.tiers.host_memory import (available_host_memory_bytes, check_host_memory,
                                     shm_free_bytes)
from tierd.tiers.shm_arena import SHM_DIR, ShmArena, map_region

PREFIX = "tierdtest"
PAGE_BYTES = 4096 + 24  # not a multiple of the OS page: slots straddle page boundaries
CHILD_TIMEOUT_S = 120.0


def _own_segments() -> set[str]:
    return {p.name for p in SHM_DIR.glob(f"{PREFIX}-{os.getpid()}-*")}


@pytest.fixture(autouse=True)
def no_leaked_segments() -> Iterator[None]:
    before = _own_segments()
    yield
    leaked = _own_segments() - before
    for name in leaked:
        (SHM_DIR / name).unlink()
    assert not leaked, f"test left shm segments behind: {sorted(leaked)}"


@pytest.fixture
def arena() -> Iterator[ShmArena]:
    with ShmArena(Tier.DRAM, 64 * PAGE_BYTES, PREFIX, prefault=False) as arena:
        yield arena


def _page(seed: int, page_bytes: int = PAGE_BYTES) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, page_bytes, dtype=np.uint8).tobytes()


# Runs in a spawned process: maps the creator's region by handle and writes one slot.
def _child_write_slot(handle: RegionHandle, slot: int, seed: int, close: bool) -> None:
    region = map_region(handle)
    region.write_slot(slot, _page(seed, handle.page_bytes))
    if close:
        region.close()


def _run_child(handle: RegionHandle, slot: int, seed: int, close: bool) -> None:
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_child_write_slot, args=(handle, slot, seed, close))
    child.start()
    child.join(CHILD_TIMEOUT_S)
    if child.is_alive():
        child.kill()
        child.join()
    assert child.exitcode == 0, f"child exited with {child.exitcode}"


@pytest.mark.parametrize("prefault", [False, True])
def test_round_trip_is_bit_exact(prefault: bool) -> None:
    with ShmArena(Tier.HBM, 16 * PAGE_BYTES, PREFIX, prefault=prefault) as arena:
        region = arena.create_region(ns_id=3, num_slots=8, page_bytes=PAGE_BYTES)
        assert not region.array().any(), "a new region must read as zeros"
        for slot in range(8):
            region.write_slot(slot, _page(slot))
        for slot in reversed(range(8)):
            out = bytearray(PAGE_BYTES)
            region.read_slot(slot, out)
            assert out == _page(slot)
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
            region.write_slot(slot, memoryview(model[slot]))
        for slot, expected in model.items():
            out = np.empty(page_bytes, dtype=np.uint8)
            region.read_slot(slot, out)
            assert out.tobytes() == expected


def test_typed_buffers_copy_their_bytes(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=2, page_bytes=PAGE_BYTES)
    src = np.random.default_rng(7).standard_normal((PAGE_BYTES // 2,)).astype(np.float16)
    region.write_slot(1, src.reshape(4, -1))
    out = np.zeros_like(src)
    region.read_slot(1, out)
    assert np.array_equal(out.view(np.uint16), src.view(np.uint16))


def test_slot_view_writes_are_visible_to_reads(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=3, page_bytes=PAGE_BYTES)
    view = region.slot_view(2)
    view[:] = _page(42)
    view.release()
    out = bytearray(PAGE_BYTES)
    region.read_slot(2, out)
    assert out == _page(42)
    region.read_slot(1, out)
    assert out == bytes(PAGE_BYTES)


def test_bad_slots_and_lengths_are_rejected_without_writing(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=4, page_bytes=PAGE_BYTES)
    region.write_slot(0, _page(1))
    for bad_slot in (-1, 4, 100):
        with pytest.raises(InvalidArgument, match=rf"slot {bad_slot} is out of range.*4 slots"):
            region.write_slot(bad_slot, _page(2))
        with pytest.raises(InvalidArgument, match="out of range"):
            region.read_slot(bad_slot, bytearray(PAGE_BYTES))
        with pytest.raises(InvalidArgument, match="out of range"):
            region.slot_view(bad_slot)
    for bad_type in (True, 1.0, "0", None):
        with pytest.raises(InvalidArgument, match="slot must be an integer"):
            region.write_slot(bad_type, _page(2))  # type: ignore[arg-type]
    for size in (PAGE_BYTES - 1, PAGE_BYTES + 1, 0):
        with pytest.raises(InvalidArgument, match=rf"exactly one page of {PAGE_BYTES} bytes, "
                                                  rf"got {size} bytes"):
            region.write_slot(0, bytes(size))
        with pytest.raises(InvalidArgument, match=rf"got {size} bytes"):
            region.read_slot(0, bytearray(size))
    with pytest.raises(InvalidArgument, match="read-only"):
        region.read_slot(0, bytes(PAGE_BYTES))
    with pytest.raises(InvalidArgument, match="C-contiguous"):
        region.write_slot(0, np.zeros(2 * PAGE_BYTES, dtype=np.uint8)[::2])
    with pytest.raises(InvalidArgument, match="must be a buffer"):
        region.write_slot(0, [0] * PAGE_BYTES)  # type: ignore[arg-type]
    assert region.array()[0].tobytes() == _page(1)
    assert not region.array()[1:].any()


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


def test_region_file_name_handle_and_mode(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=7, num_slots=3, page_bytes=PAGE_BYTES)
    other = arena.create_region(ns_id=7, num_slots=3, page_bytes=PAGE_BYTES)
    assert region.name != other.name
    assert re.fullmatch(rf"{PREFIX}-{os.getpid()}-dram-ns7-[0-9a-f]+", region.name)
    assert region.path == SHM_DIR / region.name
    assert region.path.stat().st_size == 3 * PAGE_BYTES
    assert stat.S_IMODE(region.path.stat().st_mode) == 0o660
    handle = region.handle()
    assert handle == RegionHandle(tier=Tier.DRAM, kind=HandleKind.SHM, name=region.name,
                                  offset_bytes=0, size_bytes=3 * PAGE_BYTES, page_bytes=PAGE_BYTES,
                                  num_slots=3, device="cpu")


def test_close_unlinks_is_idempotent_and_refuses_later_copies(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=2, page_bytes=PAGE_BYTES)
    path = region.path
    assert path.exists()
    region.close()
    assert not path.exists()
    region.close()
    assert region.closed
    with pytest.raises(Unavailable, match="is closed"):
        region.write_slot(0, _page(0))
    with pytest.raises(Unavailable):
        region.array()
    assert arena.assigned_bytes == 0


def test_close_with_views_still_exported_unlinks_and_keeps_views_valid(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=2, page_bytes=PAGE_BYTES)
    region.write_slot(1, _page(9))
    whole = region.array()
    view = region.slot_view(1)
    region.close()
    assert not region.path.exists()
    assert arena.assigned_bytes == 0
    assert bytes(view) == _page(9), "an exported view must stay readable after close"
    whole[0, :3] = 1  # still mapped: no crash
    del whole, view


def test_arena_close_closes_every_region_and_refuses_new_ones() -> None:
    arena = ShmArena(Tier.DRAM, 8 * PAGE_BYTES, PREFIX, prefault=False)
    regions = [arena.create_region(ns_id=i, num_slots=2, page_bytes=PAGE_BYTES) for i in range(3)]
    arena.close()
    arena.close()
    assert all(r.closed and not r.path.exists() for r in regions)
    assert arena.assigned_bytes == 0 and arena.regions() == []
    with pytest.raises(Unavailable, match="arena is closed"):
        arena.create_region(ns_id=9, num_slots=1, page_bytes=PAGE_BYTES)


def test_two_arenas_with_one_prefix_never_collide() -> None:
    with ShmArena(Tier.DRAM, 4 * PAGE_BYTES, PREFIX, prefault=False) as a, \
            ShmArena(Tier.DRAM, 4 * PAGE_BYTES, PREFIX, prefault=False) as b:
        ra = a.create_region(ns_id=0, num_slots=1, page_bytes=PAGE_BYTES)
        rb = b.create_region(ns_id=0, num_slots=1, page_bytes=PAGE_BYTES)
        assert ra.name != rb.name
        ra.write_slot(0, _page(1))
        rb.write_slot(0, _page(2))
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


def test_map_region_in_process_shares_bytes_both_ways(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=4, page_bytes=PAGE_BYTES)
    mapped = map_region(region.handle())
    mapped.write_slot(3, _page(3))
    region.write_slot(0, _page(0))
    assert region.array()[3].tobytes() == _page(3)
    assert mapped.array()[0].tobytes() == _page(0)
    mapped.close()
    mapped.close()
    assert region.path.exists()
    with pytest.raises(Unavailable):
        mapped.read_slot(0, bytearray(PAGE_BYTES))


def test_map_region_rejects_bad_or_stale_handles(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=2, page_bytes=PAGE_BYTES)
    handle = region.handle()
    fields = {k: getattr(handle, k) for k in handle.__dataclass_fields__}
    cases = [({"kind": HandleKind.CUDA_IPC}, InvalidArgument, "shm handles only"),
             ({"name": "../etc/passwd"}, InvalidArgument, "directly under"),
             ({"size_bytes": 3 * PAGE_BYTES}, InvalidArgument, "size_bytes"),
             ({"num_slots": 3, "size_bytes": 3 * PAGE_BYTES}, InvalidArgument, "file holds"),
             ({"name": f"{PREFIX}-{os.getpid()}-gone"}, NotFound, "does not exist")]
    for changes, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            map_region(RegionHandle(**{**fields, **changes}))
    region.close()
    with pytest.raises(NotFound, match="register the namespace again"):
        map_region(handle)


def test_spawned_process_writes_a_slot_the_creator_reads(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=5, num_slots=4, page_bytes=PAGE_BYTES)
    region.write_slot(1, _page(11))
    _run_child(region.handle(), slot=2, seed=1234, close=True)
    out = bytearray(PAGE_BYTES)
    region.read_slot(2, out)
    assert out == _page(1234)
    region.read_slot(1, out)
    assert out == _page(11), "the child must not touch other slots"


def test_a_process_that_maps_and_exits_does_not_unlink(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=5, num_slots=2, page_bytes=PAGE_BYTES)
    _run_child(region.handle(), slot=0, seed=99, close=False)
    assert region.path.exists()
    again = map_region(region.handle())
    assert again.array()[0].tobytes() == _page(99)
    again.close()


def test_check_host_memory_refuses_an_absurd_size_and_passes_a_small_one() -> None:
    check_host_memory(4096, "test arena")
    absurd = 1 << 60
    with pytest.raises(ConfigError, match=r"test arena asks for .*short by") as info:
        check_host_memory(absurd, "test arena")
    assert str(absurd) in str(info.value)
    assert available_host_memory_bytes() > 0 and shm_free_bytes() > 0


def test_check_host_memory_message_gives_asked_available_and_shortfall(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  4096 kB\nMemFree:  2048 kB\nMemAvailable:  1024 kB\n")
    assert available_host_memory_bytes(meminfo) == 1024 * 1024
    with pytest.raises(ConfigError) as info:
        check_host_memory(3 << 20, "dram tier", meminfo_path=meminfo, shm_dir=tmp_path)
    message = str(info.value)
    assert "dram tier asks for 3.0 MiB" in message
    assert "is only 1.0 MiB (1048576 bytes)" in message
    assert "short by 2.0 MiB (2097152 bytes)" in message
    check_host_memory(1 << 20, "dram tier", meminfo_path=meminfo, shm_dir=tmp_path)


def test_check_host_memory_checks_shm_space_too(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemAvailable:  {1 << 50} kB\n")
    too_big = shm_free_bytes() + 1
    with pytest.raises(ConfigError, match=rf"free space in {SHM_DIR} is only.*short by 1 B"):
        check_host_memory(too_big, "hbm tier", meminfo_path=meminfo)


def test_check_host_memory_rejects_a_negative_request() -> None:
    with pytest.raises(InvalidArgument, match="non-negative integer, got -1"):
        check_host_memory(-1, "x")
