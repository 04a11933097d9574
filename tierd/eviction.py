"""Eviction: chooses victims (LRU, unpinned) and drives their demotion one tier down.

``hbm`` victims are copied to ``dram`` (or dropped when ``dram`` already holds them); ``dram`` victims
are written to disk and dropped once the write has committed (or dropped at once when already on
disk); only ``disk`` drops pages for good. A victim is pinned while it moves, so it is never chosen
twice and its slot is never reused before its bytes are safe below.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from tierd.keys import PageKey
from tierd.store_core import DiskJob, NamespaceState, StoreCore
from tierd.tier import Tier

log = logging.getLogger(__name__)


class _Countdown:
    """Waits for a number of asynchronous completions (disk writes)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._left = 0
        self.succeeded = 0

    def add(self) -> None:
        with self._cond:
            self._left += 1

    def done(self, ok: bool) -> None:
        with self._cond:
            self._left -= 1
            self.succeeded += ok
            if self._left <= 0:
                self._cond.notify_all()

    def wait(self, timeout_s: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._left <= 0, timeout_s)


class Evictor:
    """Demotes least recently used pages; never picks leased or in-flight ones."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core

    # -- room for new pages ------------------------------------------------------------------------
    def make_room(self, st: NamespaceState, tier: Tier, num_pages: int, deadline_s: float) -> bool:
        """Demote until ``num_pages`` slots of ``tier`` are free; False if impossible by the deadline."""
        res = st.mem[tier]
        while True:
            with self.core.lock:
                missing = num_pages - res.allocator.num_free
            if missing <= 0:
                return True
            if time.monotonic() >= deadline_s or self.demote(st, tier, missing, deadline_s) == 0:
                return False

    def enforce_watermarks(self, deadline_s: float) -> None:
        """Bring every region and the disk back under their high watermarks (to the low ones)."""
        with self.core.lock:
            states = list(self.core.namespaces.values())
        for tier in (Tier.HBM, Tier.DRAM):
            cfg = self.core.config.memory_tier(tier)
            for st in states:
                res = st.mem.get(tier)
                if res is None or res.used_slots <= cfg.high_watermark * res.num_slots:
                    continue
                excess = res.used_slots - math.floor(cfg.low_watermark * res.num_slots)
                self.demote(st, tier, excess, deadline_s)
        disk = self.core.config.disk
        with self.core.lock:
            budget = self.core.disk_budget_bytes
            if self.core.disk_res.used_bytes > disk.high_watermark * budget:
                self.core.evict_disk_locked(
                    self.core.disk_res.used_bytes - int(disk.low_watermark * budget))
        self.core.drain_deletes()

    # -- demotion ------------------------------------------------------------------------------------
    def demote(self, st: NamespaceState, tier: Tier, num_pages: int, deadline_s: float) -> int:
        """Move up to ``num_pages`` LRU pages of ``tier`` down; returns how many left ``tier``."""
        if tier is Tier.HBM:
            return self._demote_hbm(st, num_pages, deadline_s, retry=True)
        return self._demote_dram(st, num_pages, deadline_s)

    def _demote_dram(self, st: NamespaceState, num_pages: int, deadline_s: float) -> int:
        core = self.core
        res = st.mem[Tier.DRAM]
        countdown = _Countdown()
        jobs: list[DiskJob] = []
        dropped = 0
        with core.lock:
            for key, slot in res.victims(num_pages):
                dkey = st.dkey(key)
                hbm = st.mem.get(Tier.HBM)
                clean = dkey in core.disk_res.pages or (hbm is not None and key in hbm.slots)
                if clean or core.config.disk.capacity_bytes == 0:
                    dropped += self._drop_locked(st, Tier.DRAM, key, slot)
                    continue
                if dkey in core.disk_res.pending:
                    continue  # its write is queued already; it is dropped when that commits
                job = core.disk_write_locked(st, Tier.DRAM, key, slot,
                                             then=self._after_write(st, key, slot, countdown))
                if job is not None:
                    countdown.add()
                    jobs.append(job)
        core.submit(jobs)
        if jobs:
            countdown.wait(max(0.0, deadline_s - time.monotonic()))
        # Writes that failed (disk refused, map full) freed nothing: they are not progress.
        return dropped + countdown.succeeded

    def _after_write(self, st: NamespaceState, key: PageKey, slot: int, countdown: _Countdown):
        def then(ok: bool) -> None:  # runs under the lock, on the writer thread
            if ok:
                self._drop_locked(st, Tier.DRAM, key, slot)
            countdown.done(ok)
        return then

    def _drop_locked(self, st: NamespaceState, tier: Tier, key: PageKey, slot: int) -> int:
        if st.mem[tier].drop_unpinned(key, slot):
            self.core.counters[tier].evictions += 1
            return 1
        return 0

    def _demote_hbm(self, st: NamespaceState, num_pages: int, deadline_s: float, retry: bool) -> int:
        core = self.core
        hbm, dram = st.mem[Tier.HBM], st.mem[Tier.DRAM]
        moves: list[tuple[PageKey, int, int]] = []
        dropped = short = 0
        with core.lock:
            for key, slot in hbm.victims(num_pages):
                if key in dram.slots or key in dram.pending:
                    dropped += self._drop_locked(st, Tier.HBM, key, slot)
                    continue
                got = dram.reserve(1)
                if got is None:
                    if st.dkey(key) in core.disk_res.pages:
                        dropped += self._drop_locked(st, Tier.HBM, key, slot)
                    else:
                        short += 1
                    continue
                hbm.pin(slot)
                dram.begin_store(key, got[0])
                moves.append((key, slot, got[0]))
        if retry and not moves and short and dropped == 0:
            # dram is full of dirty pages: push some to disk, then try again once.
            if self._demote_dram(st, short, deadline_s) > 0:
                return self._demote_hbm(st, num_pages, deadline_s, retry=False)
            return 0
        self._copy_down(st, moves)
        return dropped + len(moves)

    def _copy_down(self, st: NamespaceState, moves: list[tuple[PageKey, int, int]]) -> None:
        core = self.core
        src, dst = st.regions[Tier.HBM], st.regions[Tier.DRAM]
        done: list[bool] = []
        for key, hbm_slot, dram_slot in moves:
            try:
                src.read_slot(hbm_slot, dst.slot_view(dram_slot))
                done.append(True)
            except Exception:  # a failed copy keeps the page in hbm; log and go on
                log.exception("copying page %s from hbm to dram failed", key.hex())
                done.append(False)
        with core.lock:
            for (key, hbm_slot, _), ok in zip(moves, done):
                st.mem[Tier.DRAM].complete_store(key, ok)
                core.unpin_locked(st, Tier.HBM, hbm_slot)
                if ok:
                    core.counters[Tier.HBM].bytes_out += st.page_bytes
                    core.counters[Tier.DRAM].bytes_in += st.page_bytes
                    self._drop_locked(st, Tier.HBM, key, hbm_slot)
