"""Promotion: moves pages up (disk -> dram -> hbm) for Acquire and Prefetch.

A move is a chain of one-tier hops. Each hop (namespace, destination tier, key) runs at most once
at a time: the thread that starts it registers a future that others wait on, so concurrent
requests for one page share one copy and no pool thread ever waits on work queued behind it.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from collections.abc import Sequence

from tierd.eviction import Evictor
from tierd.keys import PageKey
from tierd.store_core import NamespaceState, StoreCore
from tierd.tier import Tier
from tierd.tiers.disk import ReadStatus

log = logging.getLogger(__name__)

HopId = tuple[int, Tier, PageKey]


class Hold:
    """Pages pinned in the target tier on behalf of one acquirer as they arrive, so that pages
    moved up for one request never evict each other. Guarded by the store lock; once ``closed``
    (the lease is made or the wait gave up) late arrivals are no longer pinned."""

    def __init__(self) -> None:
        self.pins: dict[PageKey, int] = {}
        self.closed = False


class Promoter:
    def __init__(self, core: StoreCore, evictor: Evictor, pool: cf.ThreadPoolExecutor) -> None:
        self.core = core
        self.evictor = evictor
        self.pool = pool
        self._hops: dict[HopId, cf.Future[bool]] = {}  # guarded by core.lock

    def schedule(self, st: NamespaceState, keys: Sequence[PageKey], target: Tier,
                 deadline_s: float, hold: Hold | None = None) -> tuple[int, list[cf.Future[bool]]]:
        """Start moving the present prefix of ``keys`` into ``target``.

        Returns the prefix length and one future per page not yet in ``target`` (True once it is).
        With ``hold``, pages already there are pinned into it now, the others as they arrive.
        """
        core = self.core
        todo: list[PageKey] = []
        present = 0
        with core.lock:
            dst = st.residency(target)
            for key in keys:
                if core.fastest_tier_locked(st, key) is None:
                    break
                present += 1
                slot = dst.slots.get(key)
                if slot is None:
                    todo.append(key)
                elif hold is not None and key not in hold.pins:
                    dst.pin(slot)
                    hold.pins[key] = slot
        futures = [self.pool.submit(self._promote, st, key, target, deadline_s, hold) for key in todo]
        return present, futures

    def release_hold_locked(self, st: NamespaceState, target: Tier, hold: Hold,
                            keep: Sequence[PageKey] = ()) -> None:
        """Close ``hold`` and unpin every page it holds except ``keep`` (handed to a lease)."""
        hold.closed = True
        kept = set(keep)
        for key, slot in hold.pins.items():
            if key not in kept:
                self.core.unpin_locked(st, target, slot)
        hold.pins.clear()

    def _promote(self, st: NamespaceState, key: PageKey, target: Tier, deadline_s: float,
                 hold: Hold | None = None) -> bool:
        moved = self._move_up(st, key, target, deadline_s)
        if not moved or hold is None:
            return moved
        with self.core.lock:
            slot = st.mem[target].slots.get(key)
            if slot is None or hold.closed:
                return False  # evicted between arrival and pin, or the acquirer stopped waiting
            if key not in hold.pins:
                st.mem[target].pin(slot)
                hold.pins[key] = slot
        return True

    def _move_up(self, st: NamespaceState, key: PageKey, target: Tier, deadline_s: float) -> bool:
        try:
            with self.core.lock:
                tier = self.core.fastest_tier_locked(st, key)
            if tier is None:
                return False
            if tier is Tier.DISK and not self._hop(st, key, Tier.DISK, Tier.DRAM, deadline_s):
                return False
            if target is Tier.DRAM:
                with self.core.lock:
                    in_dram = key in st.mem[Tier.DRAM].slots
                return in_dram or self._hop(st, key, Tier.HBM, Tier.DRAM, deadline_s)
            return self._hop(st, key, Tier.DRAM, Tier.HBM, deadline_s)
        except Exception:  # task boundary: the waiter sees a miss, the log has the cause
            log.exception("promoting page %s of namespace %d to %s failed", key.hex(),
                          st.ns.ns_id, target.label)
            return False

    def _hop(self, st: NamespaceState, key: PageKey, src: Tier, dst: Tier, deadline_s: float) -> bool:
        """Copy ``key`` from ``src`` into ``dst`` (or wait for whoever is already doing it)."""
        hop_id: HopId = (st.ns.ns_id, dst, key)
        with self.core.lock:
            if key in st.mem[dst].slots:
                return True
            running = self._hops.get(hop_id)
            if running is None:
                mine: cf.Future[bool] = cf.Future()
                self._hops[hop_id] = mine
        if running is not None:
            try:
                return running.result(timeout=max(0.0, deadline_s - time.monotonic()))
            except cf.TimeoutError:
                return False
        ok = False
        try:
            ok = self._copy(st, key, src, dst, deadline_s)
        finally:
            with self.core.lock:
                del self._hops[hop_id]
            mine.set_result(ok)
        return ok

    def _claim(self, st: NamespaceState, key: PageKey, src: Tier, dst: Tier) -> int | None | bool:
        """Under the lock: reserve a ``dst`` slot and pin the source. True: already there;
        False: the source is gone; None: no free slot; else the reserved slot."""
        core = self.core
        dres = st.mem[dst]
        if key in dres.slots:
            return True
        if key in dres.pending:
            return False  # a put is storing it right now; the acquirer looks again
        if src is Tier.DISK:
            dkey = st.dkey(key)
            if dkey not in core.disk_res.pages:
                return False
        elif key not in st.mem[src].slots:
            return False
        got = dres.reserve(1)
        if got is None:
            return None
        if src is Tier.DISK:
            core.begin_disk_read_locked(dkey)
        else:
            st.mem[src].pin(st.mem[src].slots[key])
        dres.begin_store(key, got[0])
        return got[0]

    def _copy(self, st: NamespaceState, key: PageKey, src: Tier, dst: Tier, deadline_s: float) -> bool:
        core = self.core
        while True:
            with core.lock:
                claimed = self._claim(st, key, src, dst)
                src_slot = st.mem[src].slots.get(key) if src is not Tier.DISK else None
            if isinstance(claimed, bool):
                return claimed
            if claimed is not None:
                break
            if not self.evictor.make_room(st, dst, 1, deadline_s):
                return False
        slot = claimed
        status = ReadStatus.OK
        try:
            if src is Tier.DISK:
                status = core.disk.read_into(st.ns.ns_id, key, st.regions[dst].slot_view(slot))
            else:
                st.regions[src].read_slot(src_slot, st.regions[dst].slot_view(slot))
        except Exception:
            log.exception("copying page %s from %s to %s failed", key.hex(), src.label, dst.label)
            status = ReadStatus.MISSING
        ok = status is ReadStatus.OK
        with core.lock:
            if src is Tier.DISK:
                core.end_disk_read_locked(st.dkey(key), status is ReadStatus.OK)
            else:
                core.unpin_locked(st, src, src_slot)
            st.mem[dst].complete_store(key, ok)
            if ok:
                core.counters[src].bytes_out += st.page_bytes
                core.counters[dst].bytes_in += st.page_bytes
        return ok
