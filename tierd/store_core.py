"""The page store's shared state and the small steps every operation is built from.

``StoreCore`` owns the one bookkeeping lock, the namespaces with their regions and residency
tables, the disk residency, leases, counters and the media. Methods named ``*_locked`` must be
called with ``lock`` held and never block; they return ``DiskJob``s that the caller submits after
releasing the lock (the disk writer's completion callbacks take the lock, so submitting under it
could deadlock on a full queue).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tierd.config import StoreConfig, WritePolicy
from tierd.durability import DurabilityTracker
from tierd.errors import FailedPrecondition, NotFound
from tierd.index.leases import LeaseTable
from tierd.index.residency import DiskResidency, MemoryResidency
from tierd.keys import PageKey
from tierd.spec import Namespace
from tierd.store_types import TierCounters
from tierd.tier import MEMORY_TIERS, Tier
from tierd.tiers.base import Arena, Region
from tierd.tiers.disk import DiskTier, PageWrite
from tierd.tiers.page_format import HEADER_BYTES, disk_key

log = logging.getLogger(__name__)

# Under sustained pressure every page write can be refused: log that at most this often, with a
# count, rather than once per page (the count is also in Stats as disk_writes_refused).
REFUSED_WRITES_LOG_INTERVAL_S = 10.0


@dataclass
class NamespaceState:
    """A namespace with its regions and residency tables (memory tiers it has a region in)."""

    ns: Namespace
    regions: dict[Tier, Region] = field(default_factory=dict)
    mem: dict[Tier, MemoryResidency] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prefix = disk_key(self.ns.ns_id, bytes(16))[:-16]
        self.page_bytes = self.ns.page_bytes
        self.stored_bytes = HEADER_BYTES + self.page_bytes

    def dkey(self, key: PageKey) -> bytes:
        return self.prefix + key

    def residency(self, tier: Tier) -> MemoryResidency:
        res = self.mem.get(tier)
        if res is None:
            raise FailedPrecondition(f"namespace {self.ns.ns_id} has no {tier.label} region: the "
                                     f"{tier.label} tier is disabled (capacity 0) in this daemon's config")
        return res


@dataclass
class DiskJob:
    """A page write to hand to the disk writer once the lock is released."""

    ns_id: int
    key: PageKey
    payload: memoryview
    seq: int
    on_done: Callable[[bool], None]


class StoreCore:
    """State shared by the store's operations; see the module docstring for the locking rule."""

    def __init__(self, config: StoreConfig, arenas: dict[Tier, Arena], disk: DiskTier) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.arenas = arenas
        self.disk = disk
        self.namespaces: dict[int, NamespaceState] = {}
        self.disk_res = DiskResidency()
        # The disk byte budget in force: the configured capacity, lowered when LMDB's map filled.
        self.disk_budget_bytes = config.disk.capacity_bytes
        self.leases = LeaseTable()
        self.durability = DurabilityTracker()
        self.counters: dict[Tier, TierCounters] = {tier: TierCounters() for tier in Tier}
        self.seq = itertools.count(1)
        self.delete_after_write: set[bytes] = set()
        # Disk deletes decided under the lock (or on the writer thread), handed over by ``submit``.
        self.deferred_deletes: list[tuple[int, PageKey]] = []
        # Disk keys being read by promotions or gets: never chosen as disk victims meanwhile.
        self.disk_reading: dict[bytes, int] = {}
        # Slots removed from the index while pinned; the last unpin frees them.
        self.orphans: dict[tuple[int, Tier], set[int]] = {}
        # Called (outside the lock) after disk writes complete, to wake waiters of room in dram.
        self.on_disk_progress: Callable[[], None] = lambda: None
        # Page writes refused because the disk budget was full of writes in flight.
        self.disk_writes_refused = 0
        self._refused_logged_at_s = -REFUSED_WRITES_LOG_INTERVAL_S
        self._refused_since_log = 0

    # -- namespaces --------------------------------------------------------------------------------
    def state(self, ns_id: int) -> NamespaceState:
        st = self.namespaces.get(ns_id)
        if st is None:
            raise NotFound(f"namespace {ns_id} is not registered: call Register with its spec first")
        return st

    # -- pins ----------------------------------------------------------------------------------------
    def unpin_locked(self, st: NamespaceState, tier: Tier, slot: int) -> None:
        res = st.mem[tier]
        res.unpin(slot)
        if not res.is_pinned(slot):
            orphans = self.orphans.get((st.ns.ns_id, tier))
            if orphans and slot in orphans:
                orphans.discard(slot)
                res.unreserve([slot])

    def remove_page_locked(self, st: NamespaceState, tier: Tier, key: PageKey) -> bool:
        """Drop ``key`` from a memory tier; a pinned slot is freed by its last unpin."""
        res = st.mem[tier]
        slot = res.slots.get(key)
        if slot is None:
            return False
        res.remove(key)
        if res.is_pinned(slot):
            self.orphans.setdefault((st.ns.ns_id, tier), set()).add(slot)
        return True

    # -- disk writes ---------------------------------------------------------------------------------
    def disk_write_locked(self, st: NamespaceState, tier: Tier, key: PageKey, slot: int,
                          then: Callable[[bool], None] | None = None) -> DiskJob | None:
        """Queue the page in ``slot`` of ``tier`` for disk; None when it is stored or queued already.

        The slot stays pinned until the write's transaction has committed or failed; ``then(ok)``
        runs under the lock after the bookkeeping.
        """
        dkey = st.dkey(key)
        if dkey in self.disk_res.pages or dkey in self.disk_res.pending:
            return None
        if not self.disk_room_locked(st.stored_bytes):
            self._refused_write_locked(tier)
            return None
        self.disk_res.begin_write(dkey, st.stored_bytes)
        st.mem[tier].pin(slot)
        payload = st.regions[tier].slot_view(slot)

        def on_done(ok: bool) -> None:
            with self.lock:
                self.unpin_locked(st, tier, slot)
                self.disk_res.complete_write(dkey, ok)
                if ok:
                    self.counters[Tier.DISK].bytes_in += st.page_bytes
                    self.counters[tier].bytes_out += st.page_bytes
                    if dkey in self.delete_after_write:
                        self.delete_after_write.discard(dkey)
                        self.disk_res.remove(dkey)
                        self.deferred_deletes.append((st.ns.ns_id, key))
                else:
                    self.delete_after_write.discard(dkey)
                if then is not None:
                    then(ok)
            self.durability.page_done(dkey, ok)
            self.on_disk_progress()

        return DiskJob(st.ns.ns_id, key, payload, next(self.seq), on_done)

    def _refused_write_locked(self, tier: Tier) -> None:
        """Count a page write the disk budget refused; warn at most once per interval."""
        self.disk_writes_refused += 1
        self._refused_since_log += 1
        now_s = time.monotonic()
        if now_s - self._refused_logged_at_s >= REFUSED_WRITES_LOG_INTERVAL_S:
            log.warning("disk budget full of pages being written: %d page write(s) refused since the "
                        "last warning (latest from %s; those pages stay in memory only); raise the "
                        "disk capacity or write less at once", self._refused_since_log, tier.label)
            self._refused_logged_at_s = now_s
            self._refused_since_log = 0

    def submit(self, jobs: list[DiskJob]) -> None:
        """Hand deferred deletes, then ``jobs``, to the disk writer.

        Call without the lock (a full queue blocks). Deletes go first so the space they free is
        reusable by the writes that follow.
        """
        self.drain_deletes()
        if not jobs:
            return
        queued = 0
        try:
            queued = self.disk.submit_writes(
                [PageWrite(job.ns_id, job.key, job.payload, job.seq, job.on_done) for job in jobs])
        except Exception:  # the disk tier is closed: nothing was queued
            log.exception("disk writer refused %d page(s)", len(jobs))
        # Pages never queued are failed here, so their pins and tickets are released.
        for job in jobs[queued:]:
            job.on_done(False)

    def drain_deletes(self) -> None:
        with self.lock:
            pending, self.deferred_deletes = self.deferred_deletes, []
        by_ns: dict[int, list[PageKey]] = {}
        for ns_id, key in pending:
            by_ns.setdefault(ns_id, []).append(key)
        for ns_id, keys in by_ns.items():
            self.disk.delete(ns_id, keys)

    def evict_disk_locked(self, num_bytes: int) -> int:
        """Drop least recently used disk pages worth at least ``num_bytes``; bytes freed."""
        freed = 0
        for dkey in self.disk_res.victims(num_bytes, exclude=self.disk_reading.keys()):
            size = self.disk_res.pages[dkey]
            self.disk_res.remove(dkey)
            ns_id = int.from_bytes(dkey[:-16], "big")
            self.deferred_deletes.append((ns_id, dkey[-16:]))
            self.counters[Tier.DISK].evictions += 1
            freed += size
        return freed

    def disk_room_locked(self, num_bytes: int) -> bool:
        """Make the disk budget hold ``num_bytes`` more, evicting LRU pages if needed."""
        capacity = self.disk_budget_bytes
        over = self.disk_res.used_bytes + num_bytes - capacity
        if over > 0:
            self.evict_disk_locked(over)
        return self.disk_res.used_bytes + num_bytes <= capacity

    def map_full(self) -> None:
        """LMDB's map filled before the budget did: lower the budget below what is stored so
        eviction frees map space (called by the disk writer; never blocks on it)."""
        with self.lock:
            lowered = int(self.disk_res.used_bytes * self.config.disk.map_full_budget_factor)
            if lowered < self.disk_budget_bytes:
                self.disk_budget_bytes = lowered
                log.warning("the LMDB map is full at %d bytes stored: the disk budget is now %d "
                            "bytes (raise disk.map_headroom to use the configured capacity)",
                            self.disk_res.used_bytes, lowered)
        self.on_disk_progress()

    def committed_locked(self, st: NamespaceState, tier: Tier, key: PageKey, slot: int,
                         ticket: int | None) -> DiskJob | None:
        """A page is cached in ``tier``: under write_through, queue it for disk (if it is not
        there or queued yet) and make ``ticket`` wait for it."""
        if self.config.write_policy is not WritePolicy.WRITE_THROUGH:
            return None
        job = self.disk_write_locked(st, tier, key, slot)
        self.watch_durable_locked(st, key, ticket)
        return job

    def watch_durable_locked(self, st: NamespaceState, key: PageKey, ticket: int | None) -> None:
        """Make ``ticket`` wait for ``key``'s disk write; fail it when the page is neither on disk
        nor queued (disk budget full, or another put of the same key not published yet)."""
        if ticket is None:
            return
        dkey = st.dkey(key)
        if dkey in self.disk_res.pending:
            self.durability.watch(ticket, dkey)
        elif dkey not in self.disk_res.pages:
            self.durability.fail(ticket)

    # -- disk reads in progress ------------------------------------------------------------------
    def begin_disk_read_locked(self, dkey: bytes) -> None:
        """``dkey`` is being read: not a disk victim until ``end_disk_read_locked``."""
        self.disk_reading[dkey] = self.disk_reading.get(dkey, 0) + 1

    def end_disk_read_locked(self, dkey: bytes, ok: bool) -> None:
        """A read ended; a failed one (corrupt: the disk tier dropped it; missing: the index was
        stale) removes the page from the index."""
        left = self.disk_reading[dkey] - 1
        if left:
            self.disk_reading[dkey] = left
        else:
            del self.disk_reading[dkey]
        if not ok:
            self.disk_res.remove(dkey)

    # -- lookups -------------------------------------------------------------------------------------
    def fastest_tier_locked(self, st: NamespaceState, key: PageKey) -> Tier | None:
        for tier in MEMORY_TIERS:
            res = st.mem.get(tier)
            if res is not None and key in res.slots:
                return tier
        if st.prefix + key in self.disk_res.pages:
            return Tier.DISK
        return None

    def touch_locked(self, st: NamespaceState, tier: Tier, key: PageKey) -> None:
        if tier is Tier.DISK:
            self.disk_res.touch(st.prefix + key)
        else:
            st.mem[tier].touch(key)

    def used_bytes_locked(self, tier: Tier) -> int:
        if tier is Tier.DISK:
            return self.disk_res.used_bytes
        return sum(st.mem[tier].used_slots * st.page_bytes for st in self.namespaces.values()
                   if tier in st.mem)
