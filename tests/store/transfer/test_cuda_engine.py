"""The CUDA engine on the strict fake runtime: bytes land where the manager said, only once a
ticket says so, in order per lane; hbm pages reach the disk through staging; failures are per
batch or per page and strand nothing; close drains."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from cuda_fake_runtime import FakeCudaRuntime
from hypothesis import given
from hypothesis import strategies as st

from tierd.store.transfer.base import Copy, DiskRef, Lane, SlotRef, TransferTicket
from tierd.store.transfer.cuda import CudaEngine, CudaEngineSettings, coalesce_ranges
from tierd.tier import Tier
from tierd.tiers.cuda_arena import CudaArena, CudaRegion
from tierd.tiers.cuda_runtime import CopyRange
from tierd.tiers.disk import DiskTier, ReadStatus
from tierd.tiers.shm_arena import ShmArena, ShmRegion

PAGE_BYTES = 4096
SLOTS = 16
WAIT_S = 30.0  # a failure guard only: every wait below ends when the fake's copies ran


def page(seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, PAGE_BYTES, dtype=np.uint8).tobytes()


def settings(staging_pages: int = 8, batch_pages: int = 64) -> CudaEngineSettings:
    return CudaEngineSettings(batch_pages=batch_pages, staging_bytes=staging_pages * PAGE_BYTES,
                              register_chunk_bytes=1 << 20, drain_timeout_s=WAIT_S)


@pytest.fixture
def runtime() -> Iterator[FakeCudaRuntime]:
    fake = FakeCudaRuntime(total_bytes=64 << 20, min_delay_s=0.0, max_delay_s=0.003, seed=3)
    fake.bind_thread()
    yield fake
    fake.close()


@pytest.fixture
def hbm(runtime: FakeCudaRuntime) -> Iterator[CudaRegion]:
    arena = CudaArena(Tier.HBM, SLOTS * PAGE_BYTES, runtime)
    yield arena.create_region(1, SLOTS, PAGE_BYTES)
    arena.close()


@pytest.fixture
def dram() -> Iterator[ShmRegion]:
    with ShmArena(Tier.DRAM, SLOTS * PAGE_BYTES, "tierdcudaengine", prefault=False) as arena:
        yield arena.create_region(1, SLOTS, PAGE_BYTES)


@pytest.fixture
def engine(runtime: FakeCudaRuntime, disk: DiskTier) -> Iterator[CudaEngine]:
    made = CudaEngine(runtime, disk, 2, settings())
    yield made
    made.close()


def device_page(runtime: FakeCudaRuntime, region: CudaRegion, slot: int) -> bytes:
    return runtime.read_device(region.device_ptr(slot), PAGE_BYTES)


def settled(ticket: TransferTicket) -> tuple[bool, ...]:
    assert ticket.wait(WAIT_S), "the engine never settled the ticket"
    return ticket.outcomes


def test_pages_go_up_to_hbm_and_back_down_byte_exact(engine: CudaEngine, runtime: FakeCudaRuntime,
                                                     hbm: CudaRegion, dram: ShmRegion) -> None:
    for slot in range(4):
        dram.slot_view(slot)[:] = page(slot)
    up = engine.submit(Lane.PROMOTE, [Copy(SlotRef(dram, s), SlotRef(hbm, s + 8)) for s in range(4)])
    assert settled(up) == (True,) * 4
    assert [device_page(runtime, hbm, s + 8) for s in range(4)] == [page(s) for s in range(4)]
    down = engine.submit(Lane.DEMOTE, [Copy(SlotRef(hbm, s + 8), SlotRef(dram, s + 4)) for s in range(4)])
    assert settled(down) == (True,) * 4
    assert [bytes(dram.slot_view(s + 4)) for s in range(4)] == [page(s) for s in range(4)]


def test_callers_pageable_buffers_round_trip_on_the_bytes_lane(engine: CudaEngine, hbm: CudaRegion) -> None:
    src = [memoryview(bytes(page(10 + i))) for i in range(3)]  # read-only, like gRPC's buffers
    assert settled(engine.submit(Lane.BYTES, [Copy(s, SlotRef(hbm, i)) for i, s in enumerate(src)])) \
        == (True,) * 3
    out = [memoryview(bytearray(PAGE_BYTES)) for _ in range(3)]
    assert settled(engine.submit(Lane.BYTES, [Copy(SlotRef(hbm, i), o) for i, o in enumerate(out)])) \
        == (True,) * 3
    assert [bytes(o) for o in out] == [page(10 + i) for i in range(3)]


def test_adjacent_slots_go_as_one_batch_call(engine: CudaEngine, runtime: FakeCudaRuntime,
                                             hbm: CudaRegion, dram: ShmRegion) -> None:
    before = runtime.calls("copy_batch_async")
    ticket = engine.submit(Lane.PROMOTE, [Copy(SlotRef(dram, s), SlotRef(hbm, s)) for s in range(SLOTS)])
    assert settled(ticket) == (True,) * SLOTS
    # The dispatcher may take the copies in more than one pass, never one call per page.
    assert runtime.calls("copy_batch_async") - before < SLOTS


def test_one_lane_lands_in_submission_order(engine: CudaEngine, runtime: FakeCudaRuntime,
                                            hbm: CudaRegion) -> None:
    done: list[int] = []
    lock = threading.Lock()
    tickets = []
    for k in range(6):  # every ticket overwrites slot 0: the last one submitted must win
        ticket = engine.submit(Lane.PROMOTE, [Copy(memoryview(page(20 + k)), SlotRef(hbm, 0))])
        ticket.add_done_callback(lambda _ok, k=k: (lock.acquire(), done.append(k), lock.release()))
        tickets.append(ticket)
    for ticket in tickets:
        assert settled(ticket) == (True,)
    assert done == list(range(6))
    assert device_page(runtime, hbm, 0) == page(25)


def test_hbm_pages_reach_the_disk_through_staging_smaller_than_the_batch(
        runtime: FakeCudaRuntime, disk: DiskTier, hbm: CudaRegion) -> None:
    engine = CudaEngine(runtime, disk, 1, settings(staging_pages=2))
    try:
        for slot in range(6):
            runtime.write_device(hbm.device_ptr(slot), page(30 + slot))
        keys = [bytes([slot + 1]) * 16 for slot in range(6)]
        ticket = engine.submit(Lane.DEMOTE, [Copy(SlotRef(hbm, s), DiskRef(1, keys[s], s + 1))
                                             for s in range(6)])
        assert settled(ticket) == (True,) * 6
    finally:
        engine.close()
    for slot, key in enumerate(keys):
        out = bytearray(PAGE_BYTES)
        assert disk.read_into(1, key, memoryview(out)) is ReadStatus.OK
        assert bytes(out) == page(30 + slot)


def test_a_page_larger_than_the_staging_memory_still_reaches_the_disk(
        runtime: FakeCudaRuntime, disk: DiskTier, hbm: CudaRegion) -> None:
    engine = CudaEngine(runtime, disk, 1, CudaEngineSettings(
        batch_pages=8, staging_bytes=PAGE_BYTES // 2, register_chunk_bytes=1 << 20,
        drain_timeout_s=WAIT_S))
    try:
        runtime.write_device(hbm.device_ptr(3), page(40))
        assert settled(engine.submit(Lane.DEMOTE, [Copy(SlotRef(hbm, 3), DiskRef(1, b"k" * 16, 1))])) \
            == (True,)
    finally:
        engine.close()
    out = bytearray(PAGE_BYTES)
    assert disk.read_into(1, b"k" * 16, memoryview(out)) is ReadStatus.OK and bytes(out) == page(40)


def test_a_failed_batch_fails_its_copies_and_the_lane_goes_on(
        engine: CudaEngine, runtime: FakeCudaRuntime, hbm: CudaRegion, dram: ShmRegion) -> None:
    runtime.fail_next_copies(1)
    failed = engine.submit(Lane.PROMOTE, [Copy(SlotRef(dram, 0), SlotRef(hbm, 0))])
    assert settled(failed) == (False,)
    dram.slot_view(1)[:] = page(50)
    again = engine.submit(Lane.PROMOTE, [Copy(SlotRef(dram, 1), SlotRef(hbm, 1))])
    assert settled(again) == (True,) and device_page(runtime, hbm, 1) == page(50)


def test_a_bad_copy_fails_alone(engine: CudaEngine, hbm: CudaRegion, dram: ShmRegion) -> None:
    copies = [Copy(SlotRef(dram, 0), SlotRef(hbm, SLOTS)),                    # outside the region
              Copy(memoryview(bytes(PAGE_BYTES // 2)), SlotRef(hbm, 1)),      # the wrong size
              Copy(SlotRef(dram, 2), SlotRef(hbm, 2))]
    assert settled(engine.submit(Lane.PROMOTE, copies)) == (False, False, True)


def test_close_lands_what_is_in_flight_and_then_refuses(runtime: FakeCudaRuntime, disk: DiskTier,
                                                        hbm: CudaRegion, dram: ShmRegion) -> None:
    engine = CudaEngine(runtime, disk, 1, settings())
    dram.slot_view(0)[:] = page(60)
    ticket = engine.submit(Lane.PROMOTE, [Copy(SlotRef(dram, 0), SlotRef(hbm, s)) for s in range(8)])
    engine.close()
    assert ticket.done() and ticket.outcomes == (True,) * 8
    assert runtime.read_device(hbm.device_ptr(7), PAGE_BYTES) == page(60)
    late = engine.submit(Lane.PROMOTE, [Copy(SlotRef(dram, 0), SlotRef(hbm, 0))])
    assert late.done() and late.outcomes == (False,)
    engine.close()  # idempotent


def test_the_engine_frees_what_it_made(runtime: FakeCudaRuntime, disk: DiskTier) -> None:
    engine = CudaEngine(runtime, disk, 1, settings())
    assert runtime.registered() and engine.pinned_bytes == 8 * PAGE_BYTES
    engine.close()
    assert runtime.registered() == {} and engine.pinned_bytes == 0


ranges_strategy = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 3)),
                           min_size=0, max_size=12)


@given(ranges_strategy)
def test_coalescing_keeps_every_byte_in_order(steps: list[tuple[int, int, int]]) -> None:
    src, dst = 1000, 50_000
    ranges = []
    for src_gap, dst_gap, size in steps:
        src, dst = src + src_gap, dst + dst_gap
        ranges.append(CopyRange(dst, src, size))
        src, dst = src + size, dst + size
    merged = coalesce_ranges(ranges)

    def byte_pairs(rs: list[CopyRange]) -> list[tuple[int, int]]:
        return [(r.src + i, r.dst + i) for r in rs for i in range(r.size_bytes)]

    assert byte_pairs(merged) == byte_pairs(ranges)
    assert all(not (a.src + a.size_bytes == b.src and a.dst + a.size_bytes == b.dst)
               for a, b in zip(merged, merged[1:]))
