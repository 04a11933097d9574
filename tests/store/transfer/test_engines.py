"""Transfer engines: the CPU engine's memcpy and disk handlers, and the strict fake device's
contract (no host view, sentinels until a ticket completes, per-lane order, sources read when the
copy lands), which is what the CUDA engine must honour."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from tierd.store.transfer.base import Copy, DiskRef, Lane, SlotRef, TransferError, TransferTicket, host_view
from tierd.store.transfer.cpu import CpuEngine
from tierd.store.transfer.fake import FakeDeviceEngine
from tierd.tier import Tier
from tierd.tiers.base import Medium
from tierd.tiers.disk import DiskTier
from tierd.tiers.fake_device import SENTINEL_BYTE, FakeDeviceArena
from tierd.tiers.shm_arena import ShmArena, ShmRegion

PAGE_BYTES = 4096
DELAY_S = 0.05
# Longer than any test: such a copy is in flight until the engine closes (which lands it), so a
# test sees it pending however fast or slow the machine is.
NEVER_S = 3600.0


def page(seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, PAGE_BYTES, dtype=np.uint8).tobytes()


@pytest.fixture
def dram() -> Iterator[ShmRegion]:
    with ShmArena(Tier.DRAM, 8 * PAGE_BYTES, "tierdenginetest", prefault=False) as arena:
        yield arena.create_region(1, 8, PAGE_BYTES)


@pytest.fixture
def device() -> Iterator[FakeDeviceArena]:
    arena = FakeDeviceArena(Tier.HBM, 8 * PAGE_BYTES)
    yield arena
    arena.close()


@pytest.fixture
def fake(disk: DiskTier, device: FakeDeviceArena) -> Iterator[FakeDeviceEngine]:
    engine = FakeDeviceEngine(disk, 2, device, DELAY_S, DELAY_S, seed=1)
    yield engine
    engine.close()


def test_cpu_engine_copies_host_pages_and_round_trips_the_disk(disk: DiskTier, dram: ShmRegion) -> None:
    engine = CpuEngine(disk, 2)
    try:
        src = [memoryview(bytearray(page(i))) for i in range(3)]
        ticket = engine.submit(Lane.BYTES, [Copy(s, SlotRef(dram, i)) for i, s in enumerate(src)])
        assert ticket.done() and ticket.ok and ticket.outcomes == (True,) * 3
        writes = engine.submit(Lane.DEMOTE, [Copy(SlotRef(dram, i), DiskRef(1, bytes([i]) * 16, i + 1))
                                             for i in range(3)])
        assert writes.wait(10) and writes.ok
        outs = [memoryview(bytearray(PAGE_BYTES)) for _ in range(4)]
        reads = engine.submit(Lane.PROMOTE, [Copy(DiskRef(1, bytes([i]) * 16), outs[i]) for i in range(4)])
        assert reads.outcomes == (True, True, True, False)  # the fourth page was never written
        assert [bytes(o) for o in outs[:3]] == [page(i) for i in range(3)]
    finally:
        engine.close()


def test_a_pair_without_a_handler_starts_nothing(disk: DiskTier, dram: ShmRegion,
                                                device: FakeDeviceArena) -> None:
    engine = CpuEngine(disk, 1)
    region = device.create_region(1, 1, PAGE_BYTES)
    try:
        with pytest.raises(TransferError, match="cannot copy host -> device"):
            engine.submit(Lane.BYTES, [Copy(SlotRef(dram, 0), SlotRef(dram, 1)),
                                       Copy(SlotRef(dram, 0), SlotRef(region, 0))])
    finally:
        engine.close()


def test_fake_device_memory_has_no_host_view(device: FakeDeviceArena) -> None:
    region = device.create_region(1, 2, PAGE_BYTES)
    assert region.medium is Medium.DEVICE and region.handle() is None
    assert not hasattr(region, "slot_view") and not hasattr(region, "array")
    with pytest.raises(TransferError, match="is not host memory"):
        host_view(SlotRef(region, 0))


def test_fake_copies_land_only_when_the_ticket_completes(disk: DiskTier, dram: ShmRegion,
                                                         device: FakeDeviceArena) -> None:
    engine = FakeDeviceEngine(disk, 1, device, NEVER_S, NEVER_S, seed=0)
    hbm = device.create_region(1, 2, PAGE_BYTES)
    dram.slot_view(0)[:] = page(1)
    up = engine.submit(Lane.PROMOTE, [Copy(SlotRef(dram, 0), SlotRef(hbm, 1))])
    out = memoryview(bytearray(page(9)))
    down = engine.submit(Lane.DEMOTE, [Copy(SlotRef(hbm, 1), out)])
    assert not up.done() and not down.done()
    assert bytes(out) == bytes([SENTINEL_BYTE]) * PAGE_BYTES, "a host destination reads sentinels"
    engine.close()  # lands both, in the order they were due: the copy up first
    assert up.done() and down.done() and up.ok and down.ok
    assert bytes(out) == page(1)


def test_one_lane_completes_in_submission_order(disk: DiskTier, dram: ShmRegion,
                                                device: FakeDeviceArena) -> None:
    engine = FakeDeviceEngine(disk, 1, device, 0.0, DELAY_S, seed=7)  # random delays per batch
    hbm = device.create_region(1, 1, PAGE_BYTES)
    done: list[int] = []
    lock = threading.Lock()
    try:
        tickets = []
        for i in range(20):
            dram.slot_view(i % 8)[:] = page(i % 8)
            ticket = engine.submit(Lane.PROMOTE, [Copy(SlotRef(dram, i % 8), SlotRef(hbm, 0))])
            ticket.add_done_callback(lambda ok, i=i: (lock.acquire(), done.append(i), lock.release()))
            tickets.append(ticket)
        assert all(t.wait(10) for t in tickets)
        assert done == list(range(20))
        out = memoryview(bytearray(PAGE_BYTES))
        assert engine.submit(Lane.PROMOTE, [Copy(SlotRef(hbm, 0), out)]).wait(10)
        assert bytes(out) == page(19 % 8), "the last copy of the lane wins"
    finally:
        engine.close()


def test_a_source_changed_before_completion_is_what_lands(disk: DiskTier, dram: ShmRegion,
                                                          device: FakeDeviceArena) -> None:
    """Like a stream-ordered GPU copy, the source is read when the copy runs: the manager must keep
    it pinned until the ticket completes (this is what makes forgetting that visible)."""
    engine = FakeDeviceEngine(disk, 1, device, NEVER_S, NEVER_S, seed=0)
    hbm = device.create_region(1, 1, PAGE_BYTES)
    dram.slot_view(0)[:] = page(1)
    ticket = engine.submit(Lane.PROMOTE, [Copy(SlotRef(dram, 0), SlotRef(hbm, 0))])
    out = memoryview(bytearray(PAGE_BYTES))
    back = engine.submit(Lane.PROMOTE, [Copy(SlotRef(hbm, 0), out)])  # same lane: lands after
    dram.slot_view(0)[:] = page(2)
    assert not ticket.done()
    engine.close()
    assert ticket.ok and back.ok
    assert bytes(out) == page(2)


def test_device_pages_reach_the_disk_through_a_host_staging_copy(fake: FakeDeviceEngine, disk: DiskTier,
                                                                 device: FakeDeviceArena) -> None:
    hbm = device.create_region(1, 1, PAGE_BYTES)
    assert fake.submit(Lane.BYTES, [Copy(memoryview(page(5)), SlotRef(hbm, 0))]).wait(10)
    ticket = fake.submit(Lane.DEMOTE, [Copy(SlotRef(hbm, 0), DiskRef(1, b"k" * 16, 1))])
    assert ticket.wait(10) and ticket.ok
    out = memoryview(bytearray(PAGE_BYTES))
    assert fake.submit(Lane.PROMOTE, [Copy(DiskRef(1, b"k" * 16), out)]).ok
    assert bytes(out) == page(5)


def test_closing_lands_what_is_in_flight(disk: DiskTier, dram: ShmRegion, device: FakeDeviceArena) -> None:
    engine = FakeDeviceEngine(disk, 1, device, NEVER_S, NEVER_S, seed=0)
    hbm = device.create_region(1, 1, PAGE_BYTES)
    ticket = engine.submit(Lane.PROMOTE, [Copy(memoryview(page(3)), SlotRef(hbm, 0))])
    assert not ticket.done()
    engine.close()
    assert ticket.done() and ticket.ok


def test_failed_copies_are_reported_per_copy(fake: FakeDeviceEngine, device: FakeDeviceArena) -> None:
    hbm = device.create_region(1, 2, PAGE_BYTES)
    ticket = fake.submit(Lane.BYTES, [Copy(memoryview(page(1)), SlotRef(hbm, 0)),
                                      Copy(memoryview(page(1)), SlotRef(hbm, 5))])  # no slot 5
    assert ticket.wait(10) and ticket.outcomes == (True, False) and not ticket.ok


def test_tickets_run_callbacks_once_and_refuse_outcomes_in_flight() -> None:
    ticket = TransferTicket(2)
    seen: list[bool] = []
    ticket.add_done_callback(seen.append)
    with pytest.raises(TransferError, match="still in flight"):
        _ = ticket.outcomes
    ticket.settle(0, True)
    ticket.settle(0, False)  # a second settle of one copy is ignored
    assert not ticket.wait(0.01) and seen == []
    ticket.settle(1, False)
    ticket.add_done_callback(seen.append)  # added after completion: runs at once
    assert ticket.outcomes == (True, False) and seen == [False, False]
