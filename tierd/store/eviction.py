"""Eviction: drives the manager's demotion decisions through the runner.

``hbm`` victims are copied to ``dram`` (or dropped when ``dram`` or the disk already holds them);
``dram`` victims are written to disk and dropped once the write has committed (or dropped at once
when already on disk); only ``disk`` drops pages for good. Which pages are victims is the
eviction policy's order, walked by the manager; pinned and in-flight pages are never chosen.
"""

from __future__ import annotations

import time

from tierd.store.manager import Manager
from tierd.store.runner import PlanRunner
from tierd.tier import Tier


class Evictor:
    def __init__(self, manager: Manager, runner: PlanRunner) -> None:
        self._manager = manager
        self._runner = runner

    def make_room(self, ns_id: int, tier: Tier, num_pages: int, deadline_s: float) -> bool:
        """Demote until ``num_pages`` slots of ``tier`` are free; False if impossible by the deadline."""
        while True:
            missing = num_pages - self._manager.free_slots(ns_id, tier)
            if missing <= 0:
                return True
            # Victims that keep chains whole first (waiting for writes in flight); a chain is
            # broken only when nothing else can go.
            if (time.monotonic() >= deadline_s
                    or (self.demote(ns_id, tier, missing, deadline_s, fallback=False) == 0
                        and self.demote(ns_id, tier, missing, deadline_s) == 0)):
                # Maintenance demotes on its own thread: when it took the victims first, this
                # demotion found none, yet the slots may be free now.
                return self._manager.free_slots(ns_id, tier) >= num_pages

    def enforce_watermarks(self, deadline_s: float) -> None:
        """Bring every region back under its high watermark (to the low one), then the disk."""
        for ns_id, tier, excess in self._manager.watermark_excess():
            self.demote(ns_id, tier, excess, deadline_s, fallback=False)  # no chain breaks for it
        self._manager.evict_disk_to_watermark()
        self._runner.drain_deletes()

    def demote(self, ns_id: int, tier: Tier, num_pages: int, deadline_s: float,
               fallback: bool = True) -> int:
        """Move up to ``num_pages`` victims of ``tier`` down; returns how many left ``tier``.
        ``fallback``: see ``EvictionOrder.candidates``."""
        if tier is Tier.HBM:
            return self._demote_hbm(ns_id, num_pages, deadline_s, fallback, retry=True)
        return self._demote_dram(ns_id, num_pages, deadline_s, fallback)

    def _demote_dram(self, ns_id: int, num_pages: int, deadline_s: float, fallback: bool) -> int:
        while True:
            seen = self._runner.disk_progress()
            dropped, plan, in_flight = self._manager.plan_dram_demotion(ns_id, num_pages, fallback)
            if plan is not None or dropped or not in_flight:
                break
            # Nothing can go now, but disk writes are in flight: one that commits cleans its page
            # (write_through pins victims by their own writes) or frees budget for a refused one.
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0 or not self._runner.wait_disk_progress(seen, remaining_s):
                return 0
        if plan is None:
            return dropped
        run = self._runner.start(plan)
        # Writes that failed (disk refused, map full) or are still queued freed nothing yet.
        run.wait(max(0.0, deadline_s - time.monotonic()))
        return dropped + (run.succeeded if run.done else 0)

    def _demote_hbm(self, ns_id: int, num_pages: int, deadline_s: float, fallback: bool,
                    retry: bool) -> int:
        dropped, plan, short = self._manager.plan_hbm_demotion(ns_id, num_pages, fallback)
        if plan is None and short and dropped == 0:
            # dram is full of dirty pages: push some to disk, then try again once.
            if retry and self._demote_dram(ns_id, short, deadline_s, fallback) > 0:
                return self._demote_hbm(ns_id, num_pages, deadline_s, fallback, retry=False)
            return 0
        if plan is None:
            return dropped
        return dropped + sum(self._runner.run(plan))
