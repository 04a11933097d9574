"""A worker's mapping of the daemon's host regions (``tierd_client.shm``) through a real region
socket: bytes shared both ways, bad, forged or stale handles refused, and a worker that maps and
exits leaves the daemon's region serving."""

from __future__ import annotations

import multiprocessing
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tierd.handles import HandleKind, RegionHandle
from tierd.region_wire import (
    GRANT_BYTES,
    REPLY_HEAD_BYTES,
    REQUEST_BYTES,
    RegionReply,
    RegionStatus,
)
from tierd.server.region_socket import RegionSocket, RegionSocketSettings
from tierd.tier import Tier
from tierd.tiers.shm_arena import ShmArena, ShmRegion
from tierd_client.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from tierd_client.shm import map_index, map_shm, region_alive

PREFIX = "tierdclienttest"
PAGE_BYTES = 4096 + 24
CHILD_TIMEOUT_S = 120.0


@pytest.fixture
def arena() -> Iterator[ShmArena]:
    with ShmArena(Tier.DRAM, 16 * PAGE_BYTES, PREFIX, prefault=False) as arena:
        yield arena


@pytest.fixture
def served(arena: ShmArena, short_tmp: Path) -> Iterator[Path]:
    """The arena's regions served on a region socket; yields the socket's path."""
    path = short_tmp / "regions.sock"
    with RegionSocket(RegionSocketSettings(path, timeout_s=30.0), arena.shared_fd):
        yield path


def _handle(region: ShmRegion, socket_path: Path) -> RegionHandle:
    return replace(region.handle(), socket_path=str(socket_path))


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


def test_a_mapping_shares_bytes_both_ways(arena: ShmArena, served: Path) -> None:
    region = arena.create_region(ns_id=1, num_slots=4, page_bytes=PAGE_BYTES)
    mapped = map_shm(_handle(region, served))
    mapped.array()[3] = np.frombuffer(_page(3), np.uint8)
    region.slot_view(0)[:] = _page(0)
    assert _read(region, 3) == _page(3)
    assert mapped.array()[0].tobytes() == _page(0)
    mapped.close()
    mapped.close()
    assert region_alive(_handle(region, served))
    with pytest.raises(FailedPreconditionError, match="closed"):
        mapped.array()


def test_bad_forged_or_stale_handles_are_refused(arena: ShmArena, served: Path) -> None:
    region = arena.create_region(ns_id=1, num_slots=2, page_bytes=PAGE_BYTES)
    other = arena.create_region(ns_id=2, num_slots=2, page_bytes=PAGE_BYTES)
    handle = _handle(region, served)
    forged = bytes(GRANT_BYTES)
    cases = [({"kind": HandleKind.CUDA_IPC}, InvalidArgumentError, r"host \(memfd\) handles only"),
             ({"size_bytes": 3 * PAGE_BYTES}, InvalidArgumentError, "size_bytes"),
             ({"num_slots": 0, "size_bytes": 0}, InvalidArgumentError, "num_slots"),
             ({"num_slots": 3, "size_bytes": 3 * PAGE_BYTES}, InvalidArgumentError, "holds"),
             ({"grant": forged}, NotFoundError, "no open region has this grant"),
             ({"grant": b"short"}, InvalidArgumentError, f"{GRANT_BYTES} bytes"),
             ({"socket_path": ""}, FailedPreconditionError, "names no region socket"),
             ({"socket_path": str(served) + ".gone"}, NotFoundError, "not answering")]
    for changes, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            map_shm(replace(handle, **changes))
    # The name only labels: another region's name with this grant still opens this region.
    renamed = map_shm(replace(handle, name=other.name))
    renamed.array()[0, 0] = 9
    assert region.array()[0, 0] == 9 and other.array()[0, 0] == 0
    renamed.close()
    region.close()
    assert not region_alive(handle)
    with pytest.raises(NotFoundError, match="register the namespace again"):
        map_shm(handle)


def test_malformed_or_idle_connections_do_not_stop_the_socket(arena: ShmArena, served: Path) -> None:
    region = arena.create_region(ns_id=1, num_slots=2, page_bytes=PAGE_BYTES)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as garbage:
        idle.connect(str(served))  # sends nothing: holds one exchange until its timeout
        garbage.connect(str(served))
        garbage.sendall(b"GET / HTTP/1.1\r\n\r\n".ljust(REQUEST_BYTES, b"x"))
        reply = garbage.recv(REPLY_HEAD_BYTES + 1024)
        assert RegionReply.decode(reply).status is RegionStatus.INVALID
        mapped = map_shm(_handle(region, served))
        mapped.close()


def test_a_spawned_worker_writes_a_slot_the_daemon_reads(arena: ShmArena, served: Path) -> None:
    region = arena.create_region(ns_id=5, num_slots=4, page_bytes=PAGE_BYTES)
    region.slot_view(1)[:] = _page(11)
    _run_child(_handle(region, served), slot=2, seed=1234, close=True)
    assert _read(region, 2) == _page(1234)
    assert _read(region, 1) == _page(11), "the child must not touch other slots"


def test_a_worker_that_maps_and_exits_leaves_the_region_serving(arena: ShmArena,
                                                                served: Path) -> None:
    region = arena.create_region(ns_id=5, num_slots=2, page_bytes=PAGE_BYTES)
    _run_child(_handle(region, served), slot=0, seed=99, close=False)
    again = map_shm(_handle(region, served))
    assert again.array()[0].tobytes() == _page(99)
    again.close()


def test_the_page_index_maps_read_only_and_mismatches_are_refused(arena: ShmArena, served: Path) -> None:
    region = arena.create_region(4, 3, PAGE_BYTES)
    handle = _handle(region, served)
    index = region.page_index
    assert index is not None and handle.index_bytes > 0
    index.published(b"k" * 16, 1)
    mapped = map_index(handle)
    assert mapped.reader is not None and mapped.reader.ns_id == 4
    found = mapped.reader.find(b"k" * 16)
    assert found is not None and found.slot == 1
    mapped.close()
    mapped.close()
    with pytest.raises(FailedPreconditionError, match="no page index"):
        map_index(replace(handle, index_bytes=0))
    with pytest.raises(InvalidArgumentError, match="bytes, the handle says"):
        map_index(replace(handle, index_bytes=handle.index_bytes + 8))
    with pytest.raises(NotFoundError):
        map_index(replace(handle, grant=bytes(GRANT_BYTES)))
    region.close()
    with pytest.raises(NotFoundError):
        map_index(handle)
