"""A worker's mapping of the daemon's shm regions (``tierd_client.shm``): bytes shared both ways,
bad or stale handles refused, and a mapping process never unlinks the daemon's segment."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator

import numpy as np
import pytest

from tierd.handles import HandleKind, RegionHandle
from tierd.tier import Tier
from tierd.tiers.shm_arena import ShmArena, ShmRegion
from tierd_client.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from tierd_client.shm import map_shm

PREFIX = "tierdclienttest"
PAGE_BYTES = 4096 + 24
CHILD_TIMEOUT_S = 120.0


@pytest.fixture
def arena() -> Iterator[ShmArena]:
    with ShmArena(Tier.DRAM, 16 * PAGE_BYTES, PREFIX, prefault=False) as arena:
        yield arena


def _page(seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, PAGE_BYTES, dtype=np.uint8).tobytes()


def _read(region: ShmRegion, slot: int) -> bytes:
    return bytes(region.slot_view(slot))


# Runs in a spawned process: maps the daemon's region by handle and writes one slot.
def _child_write_slot(handle: RegionHandle, slot: int, seed: int, close: bool) -> None:
    mapped = map_shm(handle)
    mapped.array()[slot] = np.frombuffer(_page(seed), np.uint8)
    if close:
        mapped.close()


def _run_child(handle: RegionHandle, slot: int, seed: int, close: bool) -> None:
    child = multiprocessing.get_context("spawn").Process(target=_child_write_slot,
                                                         args=(handle, slot, seed, close))
    child.start()
    child.join(CHILD_TIMEOUT_S)
    if child.is_alive():
        child.kill()
        child.join()
    assert child.exitcode == 0, f"child exited with {child.exitcode}"


def test_a_mapping_shares_bytes_both_ways(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=4, page_bytes=PAGE_BYTES)
    mapped = map_shm(region.handle())
    mapped.array()[3] = np.frombuffer(_page(3), np.uint8)
    region.slot_view(0)[:] = _page(0)
    assert _read(region, 3) == _page(3)
    assert mapped.array()[0].tobytes() == _page(0)
    mapped.close()
    mapped.close()
    assert region.path.exists()
    with pytest.raises(FailedPreconditionError, match="closed"):
        mapped.array()


def test_bad_or_stale_handles_are_refused(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=1, num_slots=2, page_bytes=PAGE_BYTES)
    handle = region.handle()
    fields = {k: getattr(handle, k) for k in handle.__dataclass_fields__}
    cases = [({"kind": HandleKind.CUDA_IPC}, InvalidArgumentError, "shm handles only"),
             ({"name": "../etc/passwd"}, InvalidArgumentError, "directly under"),
             ({"size_bytes": 3 * PAGE_BYTES}, InvalidArgumentError, "size_bytes"),
             ({"num_slots": 0, "size_bytes": 0}, InvalidArgumentError, "num_slots"),
             ({"num_slots": 3, "size_bytes": 3 * PAGE_BYTES}, InvalidArgumentError, "file holds"),
             ({"name": f"{PREFIX}-{os.getpid()}-gone"}, NotFoundError, "does not exist")]
    for changes, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            map_shm(RegionHandle(**{**fields, **changes}))
    region.close()
    with pytest.raises(NotFoundError, match="register the namespace again"):
        map_shm(handle)


def test_a_spawned_worker_writes_a_slot_the_daemon_reads(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=5, num_slots=4, page_bytes=PAGE_BYTES)
    region.slot_view(1)[:] = _page(11)
    _run_child(region.handle(), slot=2, seed=1234, close=True)
    assert _read(region, 2) == _page(1234)
    assert _read(region, 1) == _page(11), "the child must not touch other slots"


def test_a_worker_that_maps_and_exits_does_not_unlink(arena: ShmArena) -> None:
    region = arena.create_region(ns_id=5, num_slots=2, page_bytes=PAGE_BYTES)
    _run_child(region.handle(), slot=0, seed=99, close=False)
    assert region.path.exists()
    again = map_shm(region.handle())
    assert again.array()[0].tobytes() == _page(99)
    again.close()
