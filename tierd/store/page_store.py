"""The page store: the library API the daemon serves (see DESIGN.md's page API).

A thin facade over the parts ``assembly`` composes: the bookkeeping manager, the media (arenas
and transfer engine, from one factory keyed by the device), the disk tier, the plan runner,
promotion, eviction and the maintenance thread; ``lease_checks`` checks lease requests.
Synchronous and thread-safe; methods may block on copies or disk I/O, so async callers use a
bounded executor. The ``try_*`` entry points and ``renew``, ``release``, ``delete``, ``stats``
never wait (bookkeeping under the manager's lock only, no page bytes, no disk or remote I/O), so
an event loop may call them; a ``try_*`` returns ``None``, having changed nothing, where its
counterpart would have to wait. ``lookup`` waits only to ask the remote tier (when one is
configured) about keys after the local prefix; ``try_lookup`` never does. ``open``/``close``
are idempotent; ``close`` flushes and shuts the parts down in reverse order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace

from tierd.buffers import PAGE_BYTES_NOTE, byte_view, page_views
from tierd.config import StoreConfig, WritePolicy
from tierd.errors import InvalidArgument, ResourceExhausted, Unavailable
from tierd.handles import RegionHandle
from tierd.keys import PageKey, check_keys, check_parent, namespace_fingerprint
from tierd.remote.base import RemoteBackend
from tierd.spec import Namespace, PageSpec
from tierd.store.acquiring import acquire_rounds
from tierd.store.admission import check_register, check_room_for_namespace
from tierd.store.assembly import Parts, assemble, take_down
from tierd.store.completion import place
from tierd.store.durability import Durability
from tierd.store.flushing import disk_failure_note, flush_to_disk
from tierd.store.lease_checks import check_acquire, check_allocate, lease_ttl
from tierd.store.plans import Plan
from tierd.store.putting import fill_dram_from_remote, store_pages
from tierd.store.remote_link import remote_lookup
from tierd.store.types import CommitResult, IndexSnapshot, PeekedPage, PutResult, StoreStats
from tierd.tier import MEMORY_TIERS, Tier
from tierd.tiers.cuda_runtime import CudaRuntime
from tierd.tiers.shm_arena import ShmArena
from tierd.values import Lease, LookupResult

log = logging.getLogger(__name__)


class PageStore:
    """hbm/dram/disk(/remote) page store. ``with PageStore(cfg) as store:`` opens and closes it.

    ``remote_backend``: the remote tier's backend to use instead of the one ``config.remote``
    names (tests, other stores); either way the store closes it."""

    def __init__(self, config: StoreConfig, remote_backend: RemoteBackend | None = None,
                 cuda_runtime: CudaRuntime | None = None) -> None:
        self.config = config
        self._remote_backend = remote_backend
        self._cuda_runtime = cuda_runtime  # device cuda:N: None opens CuPy's (tests give a fake)
        self._state_lock = threading.Lock()   # open/close/register, never held during page I/O
        self._parts: Parts | None = None
        self._closed = False
        self._started_at_s = time.monotonic()

    # -- life cycle -----------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the disk tier, rebuild the index from it (warm restart), start maintenance."""
        with self._state_lock:
            if self._closed:
                raise Unavailable("this page store was closed; create a new PageStore")
            if self._parts is not None:
                return
            self._parts = parts = assemble(self.config, self._remote_backend, self._cuda_runtime)
            parts.maintenance.start()
            self._started_at_s = time.monotonic()
            log.info("page store open (%s engine): %d namespaces, %d pages on disk",
                     parts.media.engine.name, len(parts.manager.namespaces()),
                     parts.manager.tier_stats(self.config.tier_capacity_bytes, 0)[Tier.DISK].pages)

    def close(self) -> int:
        """Flush dirty pages to disk (within ``flush_timeout_s``), stop threads, free memory.

        Returns how many pages the flush could not write, now lost: 0 when it completed (or
        the disk tier is disabled, capacity 0, so memory pages are meant to go)."""
        with self._state_lock:
            if self._closed:
                return 0
            self._closed = True
            parts = self._parts
        if parts is None:
            return 0
        lost = take_down(parts, self.config)
        if lost:
            log.error("page store closed: %d page(s) could not be written to disk and are lost", lost)
        else:
            log.info("page store closed")
        return lost

    def __enter__(self) -> PageStore:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _require(self) -> Parts:
        parts = self._parts
        if parts is None or self._closed:
            raise Unavailable("the page store is not open (starting up or shutting down); retry")
        return parts

    # -- namespaces -------------------------------------------------------------------------------
    def register(self, spec: PageSpec, tenant: str = "default") -> Namespace:
        """The namespace of (tenant, spec), creating it and its regions on first use. Idempotent."""
        check_register(spec, tenant, self.config)
        parts = self._require()
        with self._state_lock:
            found = parts.manager.find_namespace(tenant, spec)
            if found is not None:
                self._ensure_regions_locked(parts, found)
                return found
            check_room_for_namespace(tenant, parts.manager.namespaces(), self.config)
            ns = Namespace(parts.manager.next_namespace_id(), tenant, spec,
                           namespace_fingerprint(spec, tenant.encode()))
            try:
                # Regions first: a namespace that cannot get its memory is never persisted.
                slots = parts.regions.ensure(ns)
                parts.disk.save_namespace(ns)
            except BaseException:
                parts.regions.discard(ns.ns_id)
                raise
            parts.manager.add_namespace(ns)
            for tier, num_slots in slots.items():
                parts.manager.add_region(ns.ns_id, tier, num_slots,
                                         parts.regions.page_index(ns.ns_id, tier))
            return ns

    def _ensure_regions_locked(self, parts: Parts, ns: Namespace) -> None:
        for tier, num_slots in parts.regions.ensure(ns).items():
            parts.manager.add_region(ns.ns_id, tier, num_slots, parts.regions.page_index(ns.ns_id, tier))

    def _ready(self, ns_id: int) -> Parts:
        """The parts, with ``ns_id``'s regions created (a namespace loaded from disk gets them on
        first use)."""
        parts = self._require()
        ns = parts.manager.namespace(ns_id)
        if not parts.manager.has_region(ns_id, Tier.DRAM):
            with self._state_lock:
                self._ensure_regions_locked(parts, ns)
        return parts

    def namespace(self, ns_id: int) -> Namespace:
        return self._require().manager.namespace(ns_id)

    def namespaces(self) -> list[Namespace]:
        return self._require().manager.namespaces()

    def region_handles(self, ns_id: int) -> list[RegionHandle]:
        """Handles of the namespace's regions that local clients can map."""
        return self._ready(ns_id).regions.handles(ns_id)

    @contextmanager
    def shared_region_fd(self, grant: bytes, index: bool = False) -> Iterator[int | None]:
        """The descriptor of the region ``grant`` opens (``index``: of its page index), valid
        inside the ``with`` (for the region socket to send); ``None`` when no open region has
        that grant."""
        parts = self._parts
        if parts is None:
            yield None
            return
        with parts.media.shared_fd(grant, index) as fd:
            yield fd

    def num_slots(self, ns_id: int, tier: Tier) -> int:
        """Slots of the namespace's ``tier`` region (``FailedPrecondition`` if it has none)."""
        return self._ready(ns_id).manager.num_slots(ns_id, tier)

    # -- writing -------------------------------------------------------------------------------------
    def put(self, ns_id: int, keys: Sequence[PageKey], pages: Sequence[object],
            tier: Tier = Tier.DRAM, parent: PageKey | None = None) -> PutResult:
        """Cache ``pages[i]`` under ``keys[i]`` in ``tier``; pages already cached are skipped.
        ``keys`` are a chain: ``keys[i-1]`` comes before ``keys[i]``, ``parent`` before ``keys[0]``."""
        parts = self._ready(ns_id)
        keys, parent = check_keys(keys), check_parent(parent)
        if tier not in MEMORY_TIERS:
            raise InvalidArgument(f"put targets a memory tier (hbm or dram), not {tier.label}; pages reach disk by "
                                  "write policy, eviction or flush")
        views = page_views(pages, parts.manager.namespace(ns_id).page_bytes)
        if len(keys) != len(views):
            raise InvalidArgument(f"got {len(keys)} keys but {len(views)} pages; give one key per page")
        through = self.config.write_policy is WritePolicy.WRITE_THROUGH
        ticket = parts.manager.durability.new_ticket(ns_id) if through else None
        try:
            stored, skipped = store_pages(parts, self.config, ns_id, tier, keys, views, ticket, parent)
        finally:
            if ticket is not None:
                parts.manager.durability.seal(ticket)
        if parts.remote is not None and stored:
            parts.remote.published(ns_id, keys)
        parts.maintenance.wake()
        return PutResult(stored, skipped, ticket)

    def allocate(self, ns_id: int, num_pages: int, ttl_s: float | None = None,
                 owner: str | None = None, tier: Tier = Tier.HBM) -> Lease:
        """Lease ``num_pages`` free slots of ``tier`` (hbm or dram) for the caller to fill and
        then ``commit``."""
        parts = self._ready(ns_id)
        ttl = check_allocate(self.config, parts.manager, ns_id, num_pages, ttl_s, tier)
        deadline_s = time.monotonic() + self.config.acquire_timeout_s
        while True:
            lease = parts.manager.allocate(ns_id, num_pages, ttl, owner, tier)
            if lease is not None:
                return lease
            if not parts.evictor.make_room(ns_id, tier, num_pages, deadline_s):
                raise ResourceExhausted(f"cannot free {num_pages} {tier.label} slots in namespace {ns_id}: "
                                        "the rest are leased or in flight; release leases and retry"
                                        + disk_failure_note(parts.disk))

    def try_allocate(self, ns_id: int, num_pages: int, ttl_s: float | None = None,
                     owner: str | None = None, tier: Tier = Tier.HBM) -> Lease | None:
        """``allocate`` when ``num_pages`` hbm slots are free now; ``None`` (nothing changed) when
        slots must be evicted first or the namespace's regions are not created yet."""
        parts = self._require()
        if not parts.manager.has_region(ns_id, Tier.DRAM):
            return None
        ttl = check_allocate(self.config, parts.manager, ns_id, num_pages, ttl_s, tier)
        return parts.manager.allocate(ns_id, num_pages, ttl, owner, tier)

    def write_slots(self, lease_id: int, slots: Sequence[int], pages: Sequence[object]) -> None:
        """Copy ``pages[i]`` into open slot ``slots[i]`` of a FILL lease (then ``commit``): the
        in-process counterpart of a worker writing into its mapped arena."""
        parts = self._require()
        ns = parts.manager.lease_namespace(lease_id)
        views = page_views(pages, ns.page_bytes)
        if len(views) != len(slots):
            raise InvalidArgument(f"got {len(slots)} slots but {len(views)} pages; give one page per slot")
        plan = parts.manager.plan_lease_slots(lease_id, list(slots), write=True)
        if not all(parts.runner.run(plan, views)):
            raise Unavailable("the pages could not be copied into the lease's slots (see the log)")

    def commit(self, lease_id: int, keys: Sequence[PageKey], slots: Sequence[int],
               release: bool = False, parent: PageKey | None = None) -> CommitResult:
        """Bind filled slots of a FILL lease to keys (a chain after ``parent``, as in ``put``). Under write_through
        the pages are queued for disk and the result's ticket (for ``wait_durable``) covers every key, cached
        before or not. ``release``: end the lease once they are bound (its open slots go back)."""
        parts = self._require()
        keys, parent, slots = check_keys(keys), check_parent(parent), list(slots)
        if len(keys) != len(slots):
            raise InvalidArgument(f"got {len(keys)} keys but {len(slots)} slots; give one slot per key")
        through = self.config.write_policy is WritePolicy.WRITE_THROUGH
        ns_id = parts.manager.lease_namespace(lease_id).ns_id
        ticket = parts.manager.durability.new_ticket(ns_id) if through else None
        bound, persist = parts.manager.commit(lease_id, keys, slots, ticket, release, parent)
        if ticket is not None:
            parts.manager.durability.seal(ticket)
        if parts.remote is not None and bound:
            parts.remote.published(ns_id, keys)
        parts.runner.start_all([persist])
        parts.maintenance.wake()
        return CommitResult(bound, ticket)

    def try_commit(self, lease_id: int, keys: Sequence[PageKey], slots: Sequence[int],
                   release: bool = False, parent: PageKey | None = None) -> CommitResult | None:
        """``commit`` under write_back, where it only binds slots; ``None`` (nothing changed)
        under write_through, whose commit checksums the pages and may wait for room in the disk
        writer's queue."""
        if self.config.write_policy is WritePolicy.WRITE_THROUGH:
            return None
        return self.commit(lease_id, keys, slots, release, parent)

    def wait_durable(self, ticket: int, timeout_s: float | None = None) -> bool:
        """True once every page of the put or commit that returned ``ticket`` is on disk."""
        return self._require().manager.durability.wait(ticket, timeout_s)

    def try_wait_durable(self, ticket: int) -> bool | None:
        """``wait_durable`` without waiting: True (on disk), False (a write failed), or ``None``
        while writes of ``ticket`` are still queued."""
        outcome = self._require().manager.durability.wait_outcome(ticket, 0.0)
        return None if outcome is Durability.PENDING else outcome is Durability.DURABLE

    def ticket_namespace(self, ticket: int) -> int | None:
        """The namespace a durability ticket was issued to, or ``None`` when it is too old to be
        remembered (``InvalidArgument`` when it was never issued)."""
        durability = self._require().manager.durability
        known, ns_id = durability.owner(durability.check_issued(ticket))
        return ns_id if known else None

    def delete(self, ns_id: int, keys: Sequence[PageKey]) -> int:
        """Drop pages from every tier; returns how many of ``keys`` were cached."""
        parts = self._require()
        keys = check_keys(keys)
        removed = parts.manager.delete(ns_id, keys)
        parts.runner.drain_deletes()
        if parts.remote is not None:
            parts.remote.deleted(ns_id, keys)
        return removed

    def flush(self, timeout_s: float | None = None) -> int:
        """Write every page that is not on disk yet; returns how many were written.

        ``DiskWriteFailed`` when the disk did not store some (disk full: the pages stay in
        memory), ``DeadlineExceeded`` when writes were still queued at ``timeout_s``."""
        parts = self._require()
        return flush_to_disk(parts.manager, parts.runner, parts.disk, timeout_s)

    # -- reading -------------------------------------------------------------------------------------
    def lookup(self, ns_id: int, keys: Sequence[PageKey]) -> LookupResult:
        """Length of the longest cached prefix of ``keys`` and the fastest tier of each hit.

        Touches the hits for eviction; moves nothing. Keys after the local prefix may be hits
        of the remote tier (``Tier.REMOTE``): asking it waits up to ``remote.timeout_s``."""
        parts = self._require()
        keys = check_keys(keys)
        local = parts.manager.lookup(ns_id, keys)
        if parts.remote is None or local.num_hits == len(keys):
            return local
        return remote_lookup(parts.remote, parts.manager.namespace(ns_id), keys, local)

    def try_lookup(self, ns_id: int, keys: Sequence[PageKey]) -> LookupResult | None:
        """``lookup`` when it needs no remote call: every key cached locally, or no remote tier;
        ``None`` otherwise (nothing touched)."""
        parts = self._require()
        keys = check_keys(keys)
        if parts.remote is not None and parts.manager.cached_prefix(ns_id, keys) < len(keys):
            return None
        return parts.manager.lookup(ns_id, keys)

    def get(self, ns_id: int, keys: Sequence[PageKey]) -> list[bytearray]:
        """Copies of the pages of the longest cached prefix of ``keys``, in order."""
        page_bytes = self._require().manager.namespace(ns_id).page_bytes
        outs = [bytearray(page_bytes) for _ in range(len(keys))]
        got = self.get_into(ns_id, keys, [memoryview(out) for out in outs])
        return outs[:got]

    def get_into(self, ns_id: int, keys: Sequence[PageKey], outs: Sequence[object]) -> int:
        """Copy the longest cached prefix of ``keys`` into ``outs``; returns how many were copied.

        ``outs[i]`` must be a writable buffer of ``page_bytes``. Pages are read from their fastest
        tier without being promoted. A disk page failing its checksum ends the prefix.
        """
        parts = self._require()
        page_bytes = parts.manager.namespace(ns_id).page_bytes
        keys = check_keys(keys)
        if len(outs) < len(keys):
            raise InvalidArgument(f"got {len(keys)} keys but only {len(outs)} output buffers")
        views = [byte_view(out, what=f"outs[{i}]", expected_bytes=page_bytes, writable=True,
                           expected_note=PAGE_BYTES_NOTE) for i, out in enumerate(outs[:len(keys)])]
        fill_dram_from_remote(self._ready(ns_id), self.config, ns_id, keys)
        return _arrived_prefix(parts.runner.run(parts.manager.plan_read(ns_id, keys), views))

    @contextmanager
    def read_pinned(self, ns_id: int, keys: Sequence[PageKey]) -> Iterator[Sequence[memoryview]]:
        """The pages of the longest cached prefix of ``keys``, valid inside the ``with``: views of
        the host-memory slots they are in, pinned (never evicted, overwritten or freed) until it
        ends, so a caller can hand them to the kernel without copying them first. Where a page of
        the prefix is on disk or in device memory, every page is copied out instead (as ``get``).
        Keep the ``with`` short: eviction passes over pinned slots."""
        parts = self._require()
        keys = check_keys(keys)
        fill_dram_from_remote(self._ready(ns_id), self.config, ns_id, keys)
        plan = parts.manager.plan_read(ns_id, keys)
        try:
            views = parts.runner.host_views(plan)
        except BaseException:  # the pins go (a failed outcome would drop disk pages from the index)
            parts.manager.complete(plan, (True,) * len(plan.moves))
            raise
        if views is None:
            outs, outcomes = self._copy_out(parts, plan, parts.manager.namespace(ns_id).page_bytes)
            yield [memoryview(out) for out in outs[:_arrived_prefix(outcomes)]]
            return
        try:
            yield views
        finally:
            for view in views:
                with suppress(BufferError):  # a view the caller still exports stays valid
                    view.release()
            parts.manager.complete(plan, (True,) * len(plan.moves))

    def peek(self, ns_id: int, keys: Sequence[PageKey]) -> list[PeekedPage | None]:
        """Each page wherever it is now, with the tier it was read from; ``None`` for a page not
        cached (or failing its checksum). Touches nothing and counts nothing: for inspection."""
        parts = self._require()
        page_bytes = parts.manager.namespace(ns_id).page_bytes
        plan = parts.manager.plan_read(ns_id, check_keys(keys), touch=False, prefix_only=False)
        outs, outcomes = self._copy_out(parts, plan, page_bytes)
        found = {move.key: PeekedPage(place(move.src).tier, bytes(out))
                 for move, out, ok in zip(plan.moves, outs, outcomes) if ok}
        return [found.get(key) for key in keys]

    def read_slots(self, lease_id: int) -> list[bytes]:
        """Copies of the pages a READ lease holds, in its order (through the transfer engine)."""
        parts = self._require()
        plan = parts.manager.plan_lease_slots(lease_id, None, write=False)
        # The plan's namespace, not the lease's: a lease released meanwhile must not leave the
        # plan's pins behind.
        outs, outcomes = self._copy_out(parts, plan, parts.manager.namespace(plan.ns_id).page_bytes)
        if not all(outcomes):
            raise Unavailable("the lease's pages could not be copied out (see the log)")
        return [bytes(out) for out in outs]

    @staticmethod
    def _copy_out(parts: Parts, plan: Plan, page_bytes: int) -> tuple[list[bytearray], tuple[bool, ...]]:
        """Run a plan that copies pages into fresh buffers; the buffers and each move's outcome."""
        outs = [bytearray(page_bytes) for _ in plan.moves]
        return outs, parts.runner.run(plan, [memoryview(out) for out in outs])

    def prefetch(self, ns_id: int, keys: Sequence[PageKey], target_tier: Tier) -> int:
        """Start moving the cached prefix of ``keys`` (its window, in a windowed namespace) up
        into ``target_tier``; returns at once with the number of pages that will move."""
        parts = self._ready(ns_id)
        keys = check_keys(keys)
        if target_tier not in MEMORY_TIERS:
            raise InvalidArgument(f"prefetch moves pages up into hbm or dram, not {target_tier.label}")
        fill_dram_from_remote(parts, self.config, ns_id, keys)
        todo = parts.manager.to_move(ns_id, keys, target_tier)
        deadline_s = time.monotonic() + self.config.acquire_timeout_s
        return len(parts.promoter.schedule(ns_id, todo, target_tier, deadline_s))

    # -- leases --------------------------------------------------------------------------------------
    def acquire(self, ns_id: int, keys: Sequence[PageKey], target_tier: Tier = Tier.HBM,
                timeout_s: float | None = None, ttl_s: float | None = None,
                owner: str | None = None, release: Sequence[int] = ()) -> Lease:
        """Lease the longest cached prefix of ``keys`` (its window: ``Lease.window``), resident
        in ``target_tier`` (moved up first). ``release``: leases the caller is done with, ended
        (unknown ones skipped) once the request is checked, under the lock hold that pins the
        pages present."""
        parts = self._ready(ns_id)
        keys, ttl = check_acquire(self.config, parts.manager, ns_id, keys, target_tier, ttl_s)
        wait_s = self.config.acquire_timeout_s if timeout_s is None else timeout_s
        deadline_s = time.monotonic() + wait_s
        fill_dram_from_remote(parts, self.config, ns_id, keys)
        return acquire_rounds(parts.manager, parts.promoter, ns_id, keys, target_tier, deadline_s,
                              ttl, owner, wait_s, release)

    def try_acquire(self, ns_id: int, keys: Sequence[PageKey], target_tier: Tier = Tier.HBM,
                    ttl_s: float | None = None, owner: str | None = None,
                    release: Sequence[int] = ()) -> Lease | None:
        """``acquire`` when every page of the cached prefix is in ``target_tier`` already; ``None``
        (nothing changed, ``release`` included) when a page would have to move first or the
        namespace's regions are not created yet."""
        parts = self._require()
        if not parts.manager.has_region(ns_id, Tier.DRAM):
            return None
        keys, ttl = check_acquire(self.config, parts.manager, ns_id, keys, target_tier, ttl_s)
        if parts.remote is not None and parts.manager.cached_prefix(ns_id, keys) < len(keys):
            return None  # the remote tier may hold the rest: acquire asks it
        return parts.manager.try_acquire(ns_id, keys, target_tier, ttl, owner, release)

    def lease_namespace(self, lease_id: int) -> Namespace:
        """The namespace a live lease belongs to (``NotFound`` otherwise); lock-free."""
        return self._require().manager.lease_namespace(lease_id)

    def renew(self, lease_id: int, ttl_s: float | None = None) -> Lease:
        return self._require().manager.renew(lease_id, lease_ttl(self.config, ttl_s))

    def release(self, lease_id: int) -> None:
        self._require().manager.release(lease_id)

    def release_owner(self, owner: str) -> int:
        """End every lease held by ``owner`` (a client session that ended)."""
        return self._require().manager.release_owner(owner)

    # -- inspection ----------------------------------------------------------------------------------
    def stats(self) -> StoreStats:
        parts = self._require()
        disk = parts.disk.stats()
        tiers = parts.manager.tier_stats(self.config.tier_capacity_bytes, disk.queue_depth)
        # What is stored quantized (a cold format) only the disk tier itself knows.
        tiers[Tier.DISK] = replace(tiers[Tier.DISK], quantized_pages=disk.quantized_pages,
                                   quantized_bytes_saved=disk.quantized_bytes_saved)
        # What is page-locked for a GPU only the dram arena knows (0 unless it is pinned).
        dram = parts.media.arenas.get(Tier.DRAM)
        if isinstance(dram, ShmArena):
            tiers[Tier.DRAM] = replace(tiers[Tier.DRAM], pinned_bytes=dram.pinned_bytes)
        remote = parts.remote.stats() if parts.remote is not None else None
        if remote is not None:
            tiers[Tier.REMOTE] = remote.as_tier_stats()
        namespaces, leases, refused, budget, with_children = parts.manager.totals()
        return StoreStats(tiers, namespaces, leases, disk.checksum_failures,
                          time.monotonic() - self._started_at_s, self.config.write_policy,
                          refused, budget, disk.map_full_events, parts.media.engine.name,
                          disk.write_failures, disk.write_error, remote,
                          self.config.eviction_policy, with_children)

    def wait_remote_writes(self, timeout_s: float) -> bool:
        """True once the remote writer has nothing queued or in flight (at once without a
        remote tier); False at ``timeout_s``."""
        remote = self._require().remote
        return remote is None or remote.writer.wait_idle(timeout_s)

    def inspect(self) -> IndexSnapshot:
        """A copy of the whole index (for tests and debugging)."""
        return self._require().manager.inspect()

    def run_maintenance(self) -> None:
        """One maintenance round now (lease expiry, eviction to the watermarks)."""
        self._require().maintenance.run_once()


def _arrived_prefix(outcomes: Sequence[bool]) -> int:
    """How many copies arrived before the first that did not (the pages a read returns)."""
    return outcomes.index(False) if False in outcomes else len(outcomes)
