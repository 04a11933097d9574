"""Promotion: moves pages up (disk -> dram -> hbm) for Acquire and Prefetch.

A move is a chain of one-tier hops, each a PROMOTE plan the manager decides and the runner
executes. Each hop (namespace, destination tier, key) runs at most once at a time: the thread
that starts it registers a future that others wait on, so concurrent requests for one page share
one copy and no mover thread ever waits on work queued behind it.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Sequence

from tierd.keys import PageKey
from tierd.store.eviction import Evictor
from tierd.store.holds import Hold
from tierd.store.manager import Manager
from tierd.store.runner import PlanRunner
from tierd.tier import Tier

log = logging.getLogger(__name__)

HopId = tuple[int, Tier, PageKey]


class Promoter:
    """Owns the mover threads and the table of hops in flight (and the lock guarding it)."""

    def __init__(self, manager: Manager, runner: PlanRunner, evictor: Evictor, mover_threads: int) -> None:
        self._manager = manager
        self._runner = runner
        self._evictor = evictor
        self._pool = cf.ThreadPoolExecutor(mover_threads, thread_name_prefix="tierd-mover")
        self._hops_lock = threading.Lock()
        self._hops: dict[HopId, cf.Future[bool]] = {}

    def schedule(self, ns_id: int, keys: Sequence[PageKey], target: Tier, deadline_s: float,
                 hold: Hold | None = None) -> list[cf.Future[bool]]:
        """One future per key (True once it is in ``target``, pinned into ``hold`` if given)."""
        return [self._pool.submit(self._promote, ns_id, key, target, deadline_s, hold) for key in keys]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _promote(self, ns_id: int, key: PageKey, target: Tier, deadline_s: float,
                 hold: Hold | None) -> bool:
        try:
            moved = self._move_up(ns_id, key, target, deadline_s)
        except Exception:  # task boundary: the waiter sees a miss, the log has the cause
            log.exception("promoting page %s of namespace %d to %s failed", key.hex(), ns_id,
                          target.label)
            return False
        if not moved or hold is None:
            return moved
        return self._manager.hold_arrived(hold, key)

    def _move_up(self, ns_id: int, key: PageKey, target: Tier, deadline_s: float) -> bool:
        tier = self._manager.fastest_tier(ns_id, key)
        if tier is None:
            return False
        if tier is Tier.DISK and not self._hop(ns_id, key, Tier.DISK, Tier.DRAM, deadline_s):
            return False
        if target is Tier.DRAM:  # there already, or copied down from hbm (which keeps its page)
            return self._hop(ns_id, key, Tier.HBM, Tier.DRAM, deadline_s)
        return self._hop(ns_id, key, Tier.DRAM, Tier.HBM, deadline_s)

    def _hop(self, ns_id: int, key: PageKey, src: Tier, dst: Tier, deadline_s: float) -> bool:
        """Copy ``key`` from ``src`` into ``dst`` (or wait for whoever is already doing it)."""
        hop_id: HopId = (ns_id, dst, key)
        mine: cf.Future[bool] = cf.Future()
        with self._hops_lock:
            running = self._hops.setdefault(hop_id, mine)
        if running is not mine:
            try:
                return running.result(timeout=max(0.0, deadline_s - time.monotonic()))
            except cf.TimeoutError:
                return False
        ok = False
        try:
            ok = self._copy(ns_id, key, src, dst, deadline_s)
        finally:
            with self._hops_lock:
                del self._hops[hop_id]
            mine.set_result(ok)
        return ok

    def _copy(self, ns_id: int, key: PageKey, src: Tier, dst: Tier, deadline_s: float) -> bool:
        while True:
            decision = self._manager.plan_hop(ns_id, key, src, dst)
            if isinstance(decision, bool):
                return decision
            if decision is not None:
                break
            if not self._evictor.make_room(ns_id, dst, 1, deadline_s):
                return False
        return all(self._runner.run(decision))
