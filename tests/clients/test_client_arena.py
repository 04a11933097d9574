"""Arena views: the worker sees the daemon's slots in place, with the page layout, and a worker
that maps and exits leaves the daemon's region serving."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tierd.handles import RegionHandle
from tierd.server.region_socket import RegionSocket, RegionSocketSettings
from tierd.tier import Tier
from tierd.tiers.shm_arena import ShmArena, ShmRegion
from tierd_client import FailedPreconditionError, InvalidArgumentError, NotFoundError, PageSpec
from tierd_client.arena import ArenaView

SPEC = PageSpec(model="m@1", dtype="bfloat16", num_layers=3, num_kv_heads=2, head_dim=8,
                page_tokens=4)
NUM_SLOTS = 5
PREFIX = "tierdclienttest"


@pytest.fixture()
def served(short_tmp: Path) -> Iterator[tuple[ShmRegion, RegionHandle]]:
    """A region created and served the way the daemon does (the daemon's code, another
    'process'), and the handle Register would give for it."""
    path = short_tmp / "regions.sock"
    with ShmArena(Tier.HBM, NUM_SLOTS * SPEC.page_bytes, PREFIX, prefault=False) as arena, \
            RegionSocket(RegionSocketSettings(path), arena.shared_fd):
        region = arena.create_region(1, NUM_SLOTS, SPEC.page_bytes)
        yield region, replace(region.handle(), socket_path=str(path))


def test_numpy_view_has_the_page_layout_and_shares_memory(
        served: tuple[ShmRegion, RegionHandle]) -> None:
    region, handle = served
    view = ArenaView(handle, SPEC)
    arr = view.numpy()
    assert arr.shape == (NUM_SLOTS, 3, 2, 4, 2, 8) and arr.dtype == np.uint16  # bf16 bits
    # Write K of layer 1, token 2, head 1 in slot 3 through the worker's view ...
    arr[3, 1, 0, 2, 1, :] = np.arange(8, dtype=np.uint16) + 100
    # ... and the daemon reads it at the page-first offset in the same slot.
    page = bytearray(SPEC.page_bytes)
    page[:] = region.slot_view(3)
    itemsize = 2
    offset = ((((1 * 2 + 0) * 4 + 2) * 2 + 1) * 8) * itemsize
    got = np.frombuffer(bytes(page[offset:offset + 8 * itemsize]), dtype=np.uint16)
    assert got.tolist() == list(range(100, 108))
    # The daemon's writes are visible to the worker.
    region.slot_view(0)[:] = bytes([7]) * SPEC.page_bytes
    assert (view.bytes()[0] == 7).all() and view.bytes().shape == (NUM_SLOTS, SPEC.page_bytes)
    view.close()


def test_torch_view_is_typed_and_in_place(served: tuple[ShmRegion, RegionHandle]) -> None:
    region, handle = served
    view = ArenaView(handle, SPEC)
    tensor = view.torch()
    assert tensor.dtype == torch.bfloat16 and tuple(tensor.shape) == view.shape
    tensor[2].fill_(1.5)
    page = bytearray(SPEC.page_bytes)
    page[:] = region.slot_view(2)
    assert torch.frombuffer(page, dtype=torch.bfloat16).eq(1.5).all()
    assert view.slot(2).shape == SPEC.page_shape
    with pytest.raises(InvalidArgumentError, match="slot 5 is outside"):
        view.slot(NUM_SLOTS)
    view.close()


def test_closing_or_exiting_leaves_the_daemons_region_serving(
        served: tuple[ShmRegion, RegionHandle]) -> None:
    region, handle = served
    view = ArenaView(handle, SPEC)
    view.close()
    view.close()  # idempotent
    with pytest.raises(FailedPreconditionError, match="closed"):
        view.numpy()
    # A worker process that maps the region and exits (resource trackers run at exit) leaves it.
    child = ("import sys, pickle; from tierd_client.arena import ArenaView; "
             "h, s = pickle.loads(sys.stdin.buffer.read()); v = ArenaView(h, s); "
             "v.bytes()[0] = 9")
    subprocess.run([sys.executable, "-c", child], input=pickle.dumps((handle, SPEC)),
                   check=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    again = ArenaView(handle, SPEC)
    assert not again.is_stale()
    again.close()
    page = bytearray(SPEC.page_bytes)
    page[:] = region.slot_view(0)
    assert set(page) == {9}


def test_a_gone_region_or_a_wrong_spec_is_reported(served: tuple[ShmRegion, RegionHandle]) -> None:
    _region, handle = served
    with pytest.raises(NotFoundError, match="register the namespace again"):
        ArenaView(replace(handle, grant=bytes(len(handle.grant))), SPEC)
    other = PageSpec(model="m@1", dtype="float32", num_layers=3, num_kv_heads=2, head_dim=8,
                     page_tokens=4)
    with pytest.raises(FailedPreconditionError, match="disagree on the spec"):
        ArenaView(handle, other)


def test_a_region_of_a_daemon_that_restarted_is_stale(short_tmp: Path) -> None:
    path = short_tmp / "regions.sock"
    with ShmArena(Tier.HBM, NUM_SLOTS * SPEC.page_bytes, PREFIX, prefault=False) as arena:
        region = arena.create_region(1, NUM_SLOTS, SPEC.page_bytes)
        handle = replace(region.handle(), socket_path=str(path))
        first = RegionSocket(RegionSocketSettings(path), arena.shared_fd)
        first.start()
        view = ArenaView(handle, SPEC)
        assert not view.is_stale()
        first.close()  # the daemon stopped: whatever this process still maps is not the cache
        assert view.is_stale()
        with RegionSocket(RegionSocketSettings(path), arena.shared_fd):  # ... and came back
            assert view.is_stale()
            again = ArenaView(handle, SPEC)
            assert not again.is_stale()
            again.close()
        view.close()
