"""The page store: the library API the daemon serves (see DESIGN.md's page API).

Synchronous and thread-safe. Methods may block on copies or disk I/O, so async callers use a
bounded executor. Owns the media (arenas, disk tier), the bookkeeping (``StoreCore``), the movers'
thread pool and the maintenance thread; ``open``/``close`` are idempotent and ``close`` flushes.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import threading
import time
from collections.abc import Sequence

from tierd.buffers import as_byte_views
from tierd.config import StoreConfig, WritePolicy
from tierd.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable
from tierd.eviction import Evictor
from tierd.index.residency import MemoryResidency
from tierd.keys import PageKey, check_keys, namespace_fingerprint
from tierd.maintenance import Maintenance
from tierd.promotion import Promoter
from tierd.spec import Namespace, PageSpec
from tierd.store_core import DiskJob, NamespaceState, StoreCore
from tierd.store_leases import StoreLeases
from tierd.store_reads import StoreReads
from tierd.store_types import PutResult, StoreStats, TierStats
from tierd.tier import MEMORY_TIERS, Tier
from tierd.tiers.base import Arena, Region, RegionHandle
from tierd.tiers.disk import DiskTier
from tierd.tiers.shm_arena import ShmArena
from tierd.tiers.shm_cleanup import cleanup_stale_segments

log = logging.getLogger(__name__)

MAX_TENANT_CHARS = 128


class PageStore(StoreReads, StoreLeases):
    """hbm/dram/disk page store. ``with PageStore(cfg) as store:`` opens and closes it."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._state_lock = threading.Lock()   # open/close/register, never held during page I/O
        self._opened = False
        self._closed = False
        self._started_at_s = time.monotonic()
        self._core: StoreCore | None = None
        self._pool: cf.ThreadPoolExecutor | None = None
        self._readers: cf.ThreadPoolExecutor | None = None
        self._maintenance: Maintenance | None = None

    # -- life cycle -----------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the disk tier, rebuild the index from it (warm restart), start maintenance."""
        with self._state_lock:
            if self._closed:
                raise Unavailable("this page store was closed; create a new PageStore")
            if self._opened:
                return
            cfg = self.config
            cleanup_stale_segments(cfg.shm_prefix)
            disk = DiskTier(cfg)
            disk.open()
            arenas: dict[Tier, Arena] = {
                tier: ShmArena(tier, cfg.tier_capacity_bytes(tier), cfg.shm_prefix, cfg.prefault)
                for tier in MEMORY_TIERS}
            core = StoreCore(cfg, arenas, disk)
            try:
                self._load_index(core)
            except BaseException:
                disk.close()
                for arena in arenas.values():
                    arena.close()
                raise
            self._pool = cf.ThreadPoolExecutor(cfg.mover_threads, thread_name_prefix="tierd-mover")
            self._readers = cf.ThreadPoolExecutor(cfg.disk.reader_threads,
                                                  thread_name_prefix="tierd-disk-reader")
            self._core = core
            self._evictor = Evictor(core)
            self._promoter = Promoter(core, self._evictor, self._pool)
            self._maintenance = Maintenance(core, self._evictor, self._release_record)
            core.on_disk_progress = self._maintenance.wake
            disk.on_map_full = core.map_full
            self._maintenance.start()
            self._started_at_s = time.monotonic()
            self._opened = True
            log.info("page store open: %d namespaces, %d pages on disk", len(core.namespaces),
                     core.disk_res.num_pages)

    def _load_index(self, core: StoreCore) -> None:
        for ns in core.disk.load_namespaces():
            core.namespaces[ns.ns_id] = NamespaceState(ns)
        entries = sorted(core.disk.scan(), key=lambda entry: entry.seq)
        for entry in entries:
            if entry.ns_id in core.namespaces:
                core.disk_res.add(core.namespaces[entry.ns_id].dkey(entry.key), entry.stored_bytes)
            else:
                log.warning("disk holds a page of unknown namespace %d; dropping it", entry.ns_id)
                core.deferred_deletes.append((entry.ns_id, entry.key))
        if entries:
            core.seq = itertools.count(entries[-1].seq + 1)

    def close(self) -> None:
        """Flush dirty pages to disk (within ``flush_timeout_s``), stop threads, free memory."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            if not self._opened:
                return
        core = self._core
        if core is None or self._maintenance is None or self._pool is None or self._readers is None:
            return
        self._maintenance.close()
        try:
            self._flush(core, self.config.flush_timeout_s)
        except Exception:  # close must go on: log what could not be flushed
            log.exception("flush on close failed; pages not on disk are lost")
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._readers.shutdown(wait=True, cancel_futures=True)
        core.drain_deletes()
        core.disk.close()
        core.durability.fail_all()
        for arena in core.arenas.values():
            arena.close()
        log.info("page store closed")

    def __enter__(self) -> PageStore:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _require(self) -> StoreCore:
        if self._core is None or self._closed:
            raise Unavailable("the page store is not open (starting up or shutting down); retry")
        return self._core

    # -- namespaces -------------------------------------------------------------------------------
    def register(self, spec: PageSpec, tenant: str = "default") -> Namespace:
        """The namespace of (tenant, spec), creating it and its regions on first use. Idempotent."""
        if not isinstance(spec, PageSpec):
            raise InvalidArgument(f"spec must be a PageSpec, got {type(spec).__name__}")
        if not isinstance(tenant, str) or not tenant or len(tenant) > MAX_TENANT_CHARS \
                or not tenant.isprintable():
            raise InvalidArgument(f"tenant must be 1..{MAX_TENANT_CHARS} printable characters, "
                                  f"got {tenant!r}")
        core = self._require()
        with self._state_lock:
            with core.lock:
                found = next((st for st in core.namespaces.values()
                              if st.ns.tenant == tenant and st.ns.spec == spec), None)
                next_id = max(core.namespaces, default=0) + 1
            if found is not None:
                self._ensure_regions(core, found)
                return found.ns
            ns = Namespace(next_id, tenant, spec, namespace_fingerprint(spec, tenant.encode()))
            fresh = NamespaceState(ns)
            try:
                # Regions first: a namespace that cannot get its memory is never persisted.
                self._ensure_regions(core, fresh)
                core.disk.save_namespace(ns)
            except BaseException:
                for region in fresh.regions.values():
                    region.close()
                raise
            with core.lock:
                core.namespaces[ns.ns_id] = fresh
            return ns

    def _ensure_regions(self, core: StoreCore, st: NamespaceState) -> None:
        """Carve this namespace's hbm and dram regions (tenant quota, else a share of what is left)."""
        for tier in MEMORY_TIERS:
            if tier in st.regions:
                continue
            arena = core.arenas[tier]
            budget = self._region_budget(core, st, tier)
            num_slots = min(budget, arena.capacity_bytes - arena.assigned_bytes) // st.page_bytes
            if num_slots < 1:
                if tier is Tier.HBM and arena.capacity_bytes == 0:
                    continue  # hbm disabled: every page lives in dram and below
                raise ResourceExhausted(
                    f"no {tier.label} room for namespace {st.ns.ns_id} of tenant {st.ns.tenant!r}: "
                    f"pages are {st.page_bytes} bytes and only {budget} bytes can be given to it; "
                    f"raise the {tier.label} capacity or the tenant's quota")
            region = arena.create_region(st.ns.ns_id, num_slots, st.page_bytes)
            with core.lock:
                st.regions[tier] = region
                st.mem[tier] = MemoryResidency(num_slots)

    def _region_budget(self, core: StoreCore, st: NamespaceState, tier: Tier) -> int:
        """Bytes a new region may take: what is left of the tenant's quota (shared by all its
        namespaces), else ``region_share`` of the tier's unassigned bytes."""
        arena = core.arenas[tier]
        quota = self.config.tenant_quotas.get(st.ns.tenant, {}).get(tier)
        if quota is None:
            share = self.config.memory_tier(tier).region_share
            return int(share * (arena.capacity_bytes - arena.assigned_bytes))
        with core.lock:
            taken = sum(other.regions[tier].size_bytes for other in core.namespaces.values()
                        if other.ns.tenant == st.ns.tenant and tier in other.regions)
        return max(0, quota - taken)

    def _ready_state(self, ns_id: int) -> NamespaceState:
        core = self._require()
        st = core.state(ns_id)
        if Tier.DRAM not in st.regions:
            with self._state_lock:
                self._ensure_regions(core, st)
        return st

    def namespace(self, ns_id: int) -> Namespace:
        return self._require().state(ns_id).ns

    def namespaces(self) -> list[Namespace]:
        core = self._require()
        with core.lock:
            return [st.ns for st in core.namespaces.values()]

    def region_handles(self, ns_id: int) -> list[RegionHandle]:
        st = self._ready_state(ns_id)
        return [st.regions[tier].handle() for tier in MEMORY_TIERS if tier in st.regions]

    def region(self, ns_id: int, tier: Tier) -> Region:
        st = self._ready_state(ns_id)
        st.residency(tier)
        return st.regions[tier]

    # -- writing -------------------------------------------------------------------------------------
    def put(self, ns_id: int, keys: Sequence[PageKey], pages: Sequence[object],
            tier: Tier = Tier.DRAM) -> PutResult:
        """Cache ``pages[i]`` under ``keys[i]`` in ``tier``; pages already cached are skipped."""
        st = self._ready_state(ns_id)
        keys = check_keys(keys)
        if len(keys) != len(pages):
            raise InvalidArgument(f"got {len(keys)} keys but {len(pages)} pages; give one key per page")
        if tier is Tier.DISK:
            raise InvalidArgument("put targets a memory tier (hbm or dram); pages reach disk by "
                                  "write policy, eviction or flush")
        views = as_byte_views(pages, st.page_bytes)
        st.residency(tier)
        core = self._require()
        through = self.config.write_policy is WritePolicy.WRITE_THROUGH
        ticket = core.durability.new_ticket(ns_id) if through else None
        stored = skipped = 0
        # A batch never needs more free slots than the region has.
        batch = min(self.config.put_batch_pages, st.mem[tier].num_slots)
        deadline_s = time.monotonic() + self.config.acquire_timeout_s
        for start in range(0, len(keys), batch):
            done, dup = self._put_batch(st, tier, keys[start:start + batch],
                                        views[start:start + batch], ticket, deadline_s)
            stored += done
            skipped += dup
        if ticket is not None:
            core.durability.seal(ticket)
        self._maintenance_wake()
        return PutResult(stored, skipped, ticket)

    def _put_batch(self, st: NamespaceState, tier: Tier, keys: list[PageKey],
                   views: list[memoryview], ticket: int | None, deadline_s: float) -> tuple[int, int]:
        core = self._require()
        res = st.mem[tier]
        jobs: list[DiskJob] = []
        while True:
            with core.lock:
                jobs.clear()
                todo: dict[PageKey, memoryview] = {}
                skipped = 0
                for key, view in zip(keys, views):
                    found = core.fastest_tier_locked(st, key)
                    if found is not None or key in res.pending or key in todo:
                        skipped += 1
                        self._skip_locked(st, found, key, ticket, jobs)
                        continue
                    todo[key] = view
                slots = res.reserve(len(todo)) if todo else []
                if slots is not None:
                    for key, slot in zip(todo, slots):
                        res.begin_store(key, slot)
                    break
            core.submit(jobs)
            if not self._evictor.make_room(st, tier, len(todo), deadline_s):
                raise ResourceExhausted(
                    f"namespace {st.ns.ns_id} cannot make {len(todo)} {tier.label} slots free: its "
                    f"{res.num_slots} slots are leased or in flight; release leases or put fewer pages")
        region = st.regions[tier]
        ok = True
        try:
            for (key, view), slot in zip(todo.items(), slots):
                region.write_slot(slot, view)
        except BaseException:
            ok = False
            raise
        finally:
            jobs += self._publish(st, tier, list(todo), slots, ok, ticket)
            core.submit(jobs)
        return len(todo), skipped

    def _skip_locked(self, st: NamespaceState, found: Tier | None, key: PageKey,
                     ticket: int | None, jobs: list[DiskJob]) -> None:
        """A page already cached (or being put): touch it; under write_through make sure it is
        on its way to disk (an earlier write may have failed) and that ``ticket`` waits for it."""
        core = self._require()
        if found is None:
            core.watch_durable_locked(st, key, ticket)
            return
        core.touch_locked(st, found, key)
        if found is Tier.DISK:
            return
        job = core.committed_locked(st, found, key, st.mem[found].slots[key], ticket)
        if job is not None:
            jobs.append(job)

    def _publish(self, st: NamespaceState, tier: Tier, keys: list[PageKey], slots: list[int],
                 ok: bool, ticket: int | None) -> list[DiskJob]:
        core = self._require()
        jobs: list[DiskJob] = []
        with core.lock:
            for key, slot in zip(keys, slots):
                published = st.mem[tier].complete_store(key, ok)
                if published is None:
                    continue
                core.counters[tier].bytes_in += st.page_bytes
                job = core.committed_locked(st, tier, key, published, ticket)
                if job is not None:
                    jobs.append(job)
        return jobs

    def wait_durable(self, ticket: int, timeout_s: float | None = None) -> bool:
        """True once every page of the put or commit that returned ``ticket`` is on disk."""
        return self._require().durability.wait(ticket, timeout_s)

    def ticket_namespace(self, ticket: int) -> int | None:
        """The namespace a durability ticket was issued to, or ``None`` when it is too old to be
        remembered (``InvalidArgument`` when it was never issued). Lock-free of the store lock."""
        durability = self._require().durability
        known, ns_id = durability.owner(durability.check_issued(ticket))
        return ns_id if known else None

    def delete(self, ns_id: int, keys: Sequence[PageKey]) -> int:
        """Drop pages from every tier; returns how many of ``keys`` were cached."""
        core = self._require()
        st = core.state(ns_id)
        keys = check_keys(keys)
        removed = 0
        with core.lock:
            for key in keys:
                found = False
                for tier in st.mem:
                    found |= core.remove_page_locked(st, tier, key)
                    found |= st.mem[tier].cancel_pending(key)
                dkey = st.dkey(key)
                if core.disk_res.remove(dkey):
                    core.deferred_deletes.append((ns_id, key))
                    found = True
                elif dkey in core.disk_res.pending:
                    core.delete_after_write.add(dkey)
                    found = True
                removed += found
        core.drain_deletes()
        return removed

    def flush(self, timeout_s: float | None = None) -> int:
        """Write every page that is not on disk yet; returns how many were written."""
        return self._flush(self._require(), timeout_s)

    @staticmethod
    def _flush(core: StoreCore, timeout_s: float | None) -> int:
        """Queue every page not on disk, then wait for those writes and for any already queued."""
        jobs: list[DiskJob] = []
        dirty: list[bytes] = []
        refused = 0
        with core.lock:
            for st in core.namespaces.values():
                for tier in MEMORY_TIERS:
                    res = st.mem.get(tier)
                    for key, slot in (list(res.slots.items()) if res is not None else ()):
                        job = core.disk_write_locked(st, tier, key, slot)
                        if job is not None:
                            jobs.append(job)
                        dkey = st.dkey(key)
                        if dkey in core.disk_res.pending:
                            dirty.append(dkey)
                        elif dkey not in core.disk_res.pages:
                            refused += 1
            ticket = core.durability.new_ticket()
            for dkey in dict.fromkeys(dirty):
                core.durability.watch(ticket, dkey)
        core.durability.seal(ticket)
        core.submit(jobs)
        if not core.durability.wait(ticket, timeout_s):
            raise DeadlineExceeded(f"flush: {len(dirty)} page(s) were not all committed to disk "
                                   f"within {timeout_s} s, or the disk refused some (see the log)")
        if refused:
            raise ResourceExhausted(f"flush wrote {len(jobs)} page(s) but {refused} did not fit: "
                                    "the disk budget is full of pages being written; raise the "
                                    "disk capacity or flush again once writes complete")
        return len(jobs)

    def _maintenance_wake(self) -> None:
        if self._maintenance is not None:
            self._maintenance.wake()

    # -- statistics -----------------------------------------------------------------------------------
    def stats(self) -> StoreStats:
        core = self._require()
        disk = core.disk.stats()
        with core.lock:
            tiers: dict[Tier, TierStats] = {}
            for tier in Tier:
                counters = core.counters[tier]
                if tier is Tier.DISK:
                    pages, queue = core.disk_res.num_pages, disk.queue_depth
                else:
                    pages = sum(st.mem[tier].num_pages for st in core.namespaces.values() if tier in st.mem)
                    queue = sum(len(st.mem[tier].pending) for st in core.namespaces.values() if tier in st.mem)
                tiers[tier] = TierStats(self.config.tier_capacity_bytes(tier), core.used_bytes_locked(tier),
                                        pages, counters.hits, counters.misses, counters.evictions,
                                        counters.bytes_in, counters.bytes_out, queue)
            return StoreStats(tiers, len(core.namespaces), len(core.leases), disk.checksum_failures,
                              time.monotonic() - self._started_at_s, self.config.write_policy,
                              core.disk_writes_refused)

