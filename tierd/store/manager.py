"""The bookkeeping manager: the store's index, its decisions, and the one lock that guards them.

It never touches page bytes. Every operation that moves bytes is two-phase: under the lock it
returns a ``Plan`` (sources pinned or marked as read, destinations pending, so nothing in a plan
can be a victim), the caller has the transfer engine run it, then ``complete(plan, outcomes)``
publishes what arrived and rolls back what did not. Public methods take the lock themselves;
private ones named ``*_locked`` expect it held and never block, as do the functions of
``lookups`` (where pages are) and ``leasing`` (leases built, bound and ended) it calls. Nothing
here calls the engine or the disk tier, so a completion callback on any thread may take the lock.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence

from tierd.config import EvictionPolicy, StoreConfig
from tierd.errors import DeadlineExceeded, InvalidArgument, NotFound
from tierd.index.chains import ChainIndex, DiskChains
from tierd.index.leases import LeaseTable
from tierd.index.residency import MemoryResidency, PageDirectory
from tierd.keys import PageKey
from tierd.spec import Namespace, PageSpec
from tierd.store import inspection, leasing, lookups, windows
from tierd.store.completion import COMPLETERS, Durable, drop
from tierd.store.counters import Counters
from tierd.store.disk_book import DiskBook
from tierd.store.durability import DurabilityTracker
from tierd.store.holds import Hold
from tierd.store.namespace_book import NamespaceBook
from tierd.store.plans import ON_DISK, Move, Place, Plan, PlanError, PlanKind
from tierd.store.types import IndexSnapshot
from tierd.tier import Tier
from tierd.values import Lease, LookupResult, TierStats


class Manager:
    """Residency, slots, pins, leases, pending stores, and what moves where. Thread-safe."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._books: dict[int, NamespaceBook] = {}
        self.durability = DurabilityTracker()
        self._chains: dict[int, ChainIndex] = {}  # each book's, by namespace id, for the disk
        self._disk = DiskBook(config, self.durability, DiskChains(self._chains))
        self._leases = LeaseTable()
        self._counters = Counters()
        self._plan_ids = itertools.count(1)
        self._open: dict[int, Plan] = {}
        self._dram_exits: Callable[[int, list[PageKey]], None] | None = None

    def watch_dram_exits(self, listener: Callable[[int, list[PageKey]], None]) -> None:
        """``listener(ns_id, keys)`` hears of pages demoted out of dram (the remote tier's
        ``write_on = demote``); it is called under the lock and must not wait."""
        with self._lock:
            self._dram_exits = listener

    # -- namespaces ---------------------------------------------------------------------------------
    def add_namespace(self, ns: Namespace) -> None:
        with self._lock:
            if ns.ns_id in self._books:
                raise InvalidArgument(f"namespace {ns.ns_id} is registered already")
            chains = self._chains[ns.ns_id] = ChainIndex(windows.eviction_rule(ns.spec))
            keep_chains = self.config.eviction_policy is EvictionPolicy.PREFIX_AWARE
            self._books[ns.ns_id] = NamespaceBook(ns, chains, keep_chains)

    def add_region(self, ns_id: int, tier: Tier, num_slots: int,
                   directory: PageDirectory | None = None) -> None:
        """The namespace now has ``num_slots`` slots in ``tier`` (its region was created);
        ``directory`` (the region's page index) hears of every page published in it."""
        with self._lock:
            book = self._book_locked(ns_id)
            if tier in book.mem:
                raise InvalidArgument(f"namespace {ns_id} has a {tier.label} region already")
            final = tier is Tier.DRAM and self.config.disk.capacity_bytes == 0
            book.mem[tier] = MemoryResidency(num_slots, self.config.eviction_policy, directory,
                                             book.chains, tier, final)

    def find_namespace(self, tenant: str, spec: PageSpec) -> Namespace | None:
        with self._lock:
            return next((b.ns for b in self._books.values()
                         if b.ns.tenant == tenant and b.ns.spec == spec), None)

    def next_namespace_id(self) -> int:
        with self._lock:
            return max(self._books, default=0) + 1

    def namespace(self, ns_id: int) -> Namespace:
        """``NotFound`` for an unknown id. A dict read without the lock: fine on an event loop."""
        return self._book_locked(ns_id).ns

    def namespaces(self) -> list[Namespace]:
        with self._lock:
            return [book.ns for book in self._books.values()]

    def has_region(self, ns_id: int, tier: Tier) -> bool:
        with self._lock:
            return tier in self._book_locked(ns_id).mem

    def num_slots(self, ns_id: int, tier: Tier) -> int:
        """Slots of the namespace in ``tier``; ``FailedPrecondition`` when the tier is disabled."""
        with self._lock:
            return self._book_locked(ns_id).residency(tier).num_slots

    def free_slots(self, ns_id: int, tier: Tier) -> int:
        with self._lock:
            return self._book_locked(ns_id).residency(tier).free_slots

    def load_disk_page(self, ns_id: int, key: PageKey, stored_bytes: int, seq: int,
                       parent: PageKey | None = None) -> bool:
        """A page found on disk at start-up (call oldest first), with the ``parent`` stored with
        it; False for an unknown namespace, whose page is queued for removal."""
        with self._lock:
            self._disk.resume_after(seq)
            book = self._books.get(ns_id)
            if book is None:
                self._disk.deferred_deletes.append((ns_id, key))
                return False
            self._disk.residency.add(book.dkey(key), stored_bytes)
            book.chains.name_parent(key, parent)  # after add: a link of an uncached page is dropped
            return True

    def _book_locked(self, ns_id: int) -> NamespaceBook:
        book = self._books.get(ns_id)
        if book is None:
            raise NotFound(f"namespace {ns_id} is not registered: call Register with its spec first")
        return book

    def _open_locked(self, kind: PlanKind, ns_id: int, moves: Sequence[Move], evict: bool = False,
                     ticket: int | None = None) -> Plan:
        plan = Plan(next(self._plan_ids), kind, ns_id, tuple(moves), evict, ticket)
        self._open[plan.plan_id] = plan
        return plan

    # -- lookups ------------------------------------------------------------------------------------
    def fastest_tier(self, ns_id: int, key: PageKey) -> Tier | None:
        with self._lock:
            return lookups.fastest_tier(self._book_locked(ns_id), self._disk, key)

    def cached_prefix(self, ns_id: int, keys: Sequence[PageKey]) -> int:
        """How many leading ``keys`` are cached in some local tier; touches nothing."""
        with self._lock:
            return lookups.cached_prefix(self._book_locked(ns_id), self._disk, keys)

    def lookup(self, ns_id: int, keys: Sequence[PageKey]) -> LookupResult:
        """The longest cached prefix of ``keys`` and the fastest tier of each hit; touches them."""
        with self._lock:
            tiers = lookups.touch_prefix(self._book_locked(ns_id), self._disk, keys)
            self._counters.lookup(tiers, missed=len(tiers) < len(keys))
        return LookupResult(len(tiers), tuple(tiers))

    # -- reads into callers' buffers ------------------------------------------------------------------
    def plan_read(self, ns_id: int, keys: Sequence[PageKey], *, touch: bool = True,
                  prefix_only: bool = True) -> Plan:
        """Pin the cached prefix of ``keys`` (every cached key, without ``prefix_only``) for a copy
        into callers' buffers, from the fastest tier. ``touch``: count hits and touch them."""
        moves: list[Move] = []
        with self._lock:
            book = self._book_locked(ns_id)
            for key in keys:
                tier = lookups.fastest_tier(book, self._disk, key)
                if tier is None:
                    if prefix_only:
                        break
                    continue
                if touch:
                    lookups.touch(book, self._disk, tier, key)
                if tier is Tier.DISK:
                    self._disk.begin_read(book.dkey(key))
                    moves.append(Move(key, ON_DISK, None))
                else:
                    slot = book.mem[tier].slots[key]
                    book.mem[tier].pin(slot)
                    moves.append(Move(key, Place(tier, slot), None))
            if touch:
                self._counters.lookup([m.src.tier for m in moves if m.src is not None],
                                   missed=len(moves) < len(keys))
            return self._open_locked(PlanKind.READ, ns_id, moves)

    # -- stores from callers' buffers ----------------------------------------------------------------
    def plan_store(self, ns_id: int, tier: Tier, keys: Sequence[PageKey], ticket: int | None,
                   parent: PageKey | None = None) -> tuple[Plan | None, int, int, Plan | None]:
        """Reserve ``tier`` slots for the keys not cached yet (all or none); ``keys`` are a chain
        (``keys[i-1]`` the parent of ``keys[i]``) after ``parent``.

        Returns ``(plan, skipped, needed, persist)``: ``plan`` is None when nothing is new or
        ``needed`` slots must be free first (then plan again); cached keys are touched and, under
        write_through, ``persist`` queues those not on disk yet (``ticket`` waits).
        """
        with self._lock:
            book = self._book_locked(ns_id)
            res = book.residency(tier)
            todo: dict[PageKey, PageKey | None] = {}  # key -> its parent
            persists: list[Move] = []
            skipped = 0
            for key in keys:
                found = lookups.fastest_tier(book, self._disk, key)
                if found is not None or key in res.pending or key in todo:
                    skipped += 1
                    lookups.skip_cached(book, self._disk, found, key, ticket, persists, parent)
                else:
                    todo[key] = parent
                parent = key
            persist = self._persist_plan_locked(book, persists)
            slots = res.reserve(len(todo)) if todo else []
            if slots is None:
                return None, skipped, len(todo), persist
            moves = []
            for (key, key_parent), slot in zip(todo.items(), slots):
                res.begin_store(key, slot)
                moves.append(Move(key, None, Place(tier, slot), parent=key_parent))
            plan = self._open_locked(PlanKind.STORE, ns_id, moves, ticket=ticket) if moves else None
            return plan, skipped, 0, persist

    def _persist_plan_locked(self, book: NamespaceBook, moves: list[Move],
                             evict: bool = False) -> Plan | None:
        return self._open_locked(PlanKind.PERSIST, book.ns_id, moves, evict) if moves else None

    # -- promotion ------------------------------------------------------------------------------------
    def plan_hop(self, ns_id: int, key: PageKey, src: Tier, dst: Tier) -> Plan | bool | None:
        """Copy ``key`` from ``src`` to ``dst``: a PROMOTE plan, or True (already there), False
        (the source is gone, or a put is storing the page right now), None (no free slot)."""
        with self._lock:
            book = self._book_locked(ns_id)
            dres = book.residency(dst)
            if key in dres.slots:
                return True
            if key in dres.pending:
                return False
            dkey = book.dkey(key)
            if src is Tier.DISK:
                if dkey not in self._disk.residency.pages:
                    return False
            elif key not in book.residency(src).slots:
                return False
            got = dres.reserve(1)
            if got is None:
                return None
            if src is Tier.DISK:
                self._disk.begin_read(dkey)
                source = ON_DISK
            else:
                source = Place(src, book.mem[src].slots[key])
                book.mem[src].pin(source.slot)
            dres.begin_store(key, got[0])
            return self._open_locked(PlanKind.PROMOTE, ns_id, [Move(key, source, Place(dst, got[0]))])

    def begin_acquire(self, ns_id: int, keys: Sequence[PageKey], target: Tier,
                      release: Sequence[int] = ()) -> tuple[Hold, int, list[PageKey]]:
        """``(hold, present, todo)``: the length of the cached prefix, the keys of it (of its
        attended pages, in a windowed namespace) that must move into ``target``; those already
        there are pinned into ``hold`` now, after the ``release`` leases ended (unknown ones are
        skipped)."""
        with self._lock:
            book = self._book_locked(ns_id)
            leasing.end_leases(self._leases, self._books, release)
            hold = Hold(ns_id, target)
            present = lookups.cached_prefix(book, self._disk, keys)
            wanted = windows.attended_keys(book.ns.spec, keys, present)
            return hold, present, hold.pin_present(book.residency(target), wanted)

    def to_move(self, ns_id: int, keys: Sequence[PageKey], target: Tier) -> list[PageKey]:
        """The keys of the cached prefix of ``keys`` (of its attended pages, in a windowed
        namespace) not in ``target`` yet (nothing is pinned)."""
        with self._lock:
            book = self._book_locked(ns_id)
            dst = book.residency(target)
            present = lookups.cached_prefix(book, self._disk, keys)
            wanted = windows.attended_keys(book.ns.spec, keys, present)
            return [key for key in wanted if key not in dst.slots]

    def hold_arrived(self, hold: Hold, key: PageKey) -> bool:
        """Pin ``key`` (just moved into the hold's tier) for the acquirer; False when it is gone
        again or the acquirer stopped waiting."""
        with self._lock:
            return hold.arrived(self._book_locked(hold.ns_id).mem[hold.tier], key)

    def finish_acquire(self, hold: Hold, keys: Sequence[PageKey], present: int, pending: int,
                       ttl_s: float, owner: str | None, wait_s: float) -> Lease:
        """A READ lease over the longest prefix whose pages to lease arrived (a page that could
        not be moved ends it); ``DeadlineExceeded`` when ``pending`` moves had not finished in
        ``wait_s``."""
        with self._lock:
            book = self._book_locked(hold.ns_id)
            if pending:
                hold.release(book)
                raise DeadlineExceeded(f"{pending} of {present} pages did not reach {hold.tier.label} "
                                       f"within {wait_s} s; retry with a longer timeout")
            return leasing.read_lease(self._leases, book, self._counters, hold, keys, present,
                                      ttl_s, owner)

    def try_acquire(self, ns_id: int, keys: Sequence[PageKey], target: Tier, ttl_s: float,
                    owner: str | None, release: Sequence[int] = ()) -> Lease | None:
        """``begin_acquire`` and ``finish_acquire`` under one lock hold when every page to lease
        of the cached prefix is in ``target`` already (nothing has to move); ``None``, with nothing
        changed, otherwise. The ``release`` leases end first (unknown ones are skipped)."""
        with self._lock:
            book = self._book_locked(ns_id)
            res = book.residency(target)
            present = lookups.cached_prefix(book, self._disk, keys)
            wanted = windows.attended_keys(book.ns.spec, keys, present)
            if any(key not in res.slots for key in wanted):
                return None
            leasing.end_leases(self._leases, self._books, release)
            hold = Hold(ns_id, target)
            hold.pin_present(res, wanted)
            return leasing.read_lease(self._leases, book, self._counters, hold, keys, present,
                                      ttl_s, owner)

    def release_hold(self, hold: Hold) -> None:
        with self._lock:
            hold.release(self._books[hold.ns_id])

    # -- fill leases ----------------------------------------------------------------------------------
    def allocate(self, ns_id: int, num_pages: int, ttl_s: float, owner: str | None,
                 tier: Tier = Tier.HBM) -> Lease | None:
        """A FILL lease of ``num_pages`` free slots of ``tier``; None when fewer are free (evict
        first)."""
        with self._lock:
            return leasing.new_fill_lease(self._leases, self._book_locked(ns_id), tier, num_pages,
                                          ttl_s, owner)

    def commit(self, lease_id: int, keys: Sequence[PageKey], slots: Sequence[int],
               ticket: int | None, release: bool = False,
               parent: PageKey | None = None) -> tuple[int, Plan | None]:
        """Bind filled slots of a FILL lease to keys (a chain after ``parent``); a key cached
        meanwhile keeps its page (the slot goes back) and counts as skipped. ``release``: then
        end the lease (its open slots go back). Returns ``(bound, persist)``."""
        with self._lock:
            record = self._leases.get(lease_id)
            book = self._books[record.ns_id]
            bound, persists = leasing.bind_fill(book, self._disk, self._counters, record, keys,
                                                slots, ticket, parent)
            if release:
                leasing.end_lease(book, self._leases.pop(lease_id))
            return bound, self._persist_plan_locked(book, persists)

    def plan_lease_slots(self, lease_id: int, slots: Sequence[int] | None, write: bool) -> Plan:
        """A SLOTS plan between a lease's slots and callers' buffers, the slots pinned meanwhile.

        ``write``: into open slots of a FILL lease (``slots``, each once); else out of every slot
        of a READ lease, in its order.
        """
        with self._lock:
            record = self._leases.get(lease_id)
            moves = leasing.slot_moves(self._books[record.ns_id], record, slots, write)
            return self._open_locked(PlanKind.SLOTS, record.ns_id, moves)

    # -- leases ---------------------------------------------------------------------------------------
    def lease_namespace(self, lease_id: int) -> Namespace:
        """The namespace of a live lease (``NotFound`` otherwise). Two dict reads without the lock
        (a lease's ``ns_id`` never changes), so an event loop may call it."""
        return self._book_locked(self._leases.get(lease_id).ns_id).ns

    def renew(self, lease_id: int, ttl_s: float) -> Lease:
        with self._lock:
            record = self._leases.get(lease_id)
            record.expires_at_s = time.monotonic() + ttl_s
            return record.snapshot()

    def release(self, lease_id: int) -> None:
        with self._lock:
            record = self._leases.pop(lease_id)
            leasing.end_lease(self._books[record.ns_id], record)

    def release_owner(self, owner: str) -> int:
        """End every lease held by ``owner`` (a client session that ended)."""
        with self._lock:
            return leasing.end_leases(self._leases, self._books, self._leases.owned_by(owner))

    def expire_leases(self, now_s: float) -> int:
        with self._lock:
            return leasing.end_leases(self._leases, self._books, self._leases.expired(now_s))

    # -- eviction decisions ---------------------------------------------------------------------------
    def plan_hbm_demotion(self, ns_id: int, num_pages: int,
                          fallback: bool = True) -> tuple[int, Plan | None, int]:
        """``(dropped, plan, short)``: victims already held below are dropped at once, the others
        copied to dram by the DEMOTE ``plan``; ``short`` found no free dram slot. ``fallback``:
        see ``EvictionOrder.candidates``."""
        with self._lock:
            book = self._book_locked(ns_id)
            drops, moves, short = book.choose_hbm_demotions(num_pages, self._disk.residency.pages, fallback)
            dropped = sum(drop(book, self._counters, Tier.HBM, key, slot) for key, slot in drops)
            plan = self._open_locked(PlanKind.DEMOTE, ns_id, moves) if moves else None
            return dropped, plan, short

    def plan_dram_demotion(self, ns_id: int, num_pages: int,
                           fallback: bool = True) -> tuple[int, Plan | None, int]:
        """``(dropped, plan, in_flight)``: clean victims are dropped at once, dirty ones written
        by the evicting PERSIST ``plan`` (dropped once on disk). When neither is possible,
        ``in_flight`` counts the disk writes queued: each that commits may clean a victim (its own
        write pinned it) or free budget a refused write needs, so it is worth waiting for."""
        with self._lock:
            book = self._book_locked(ns_id)
            disk = self._disk
            drops, dirty = book.choose_dram_demotions(
                num_pages, disk.residency.pages, disk.residency.pending, disk.capacity_bytes > 0, fallback)
            if self._dram_exits is not None and (drops or dirty):
                self._dram_exits(ns_id, [key for key, _ in drops] + [key for key, _ in dirty])
            dropped = sum(drop(book, self._counters, Tier.DRAM, key, slot) for key, slot in drops)
            moves = disk.eviction_writes(book, Tier.DRAM, dirty)
            in_flight = len(disk.residency.pending) if not dropped and not moves else 0
            return dropped, self._persist_plan_locked(book, moves, evict=True), in_flight

    def watermark_excess(self) -> list[tuple[int, Tier, int]]:
        """``(ns_id, tier, pages)`` to demote for every region above its high watermark (down to
        its low watermark)."""
        with self._lock:
            return inspection.watermark_excess(list(self._books.values()), self.config)

    def evict_disk_to_watermark(self) -> int:
        with self._lock:
            return self._disk.evict_to_watermark()

    def map_full(self) -> None:
        """LMDB's map filled before the budget did: lower the budget so eviction frees map space."""
        with self._lock:
            self._disk.lower_budget()

    def take_disk_deletes(self) -> list[tuple[int, PageKey]]:
        """Disk deletes decided since the last call, for the caller to hand to the disk tier."""
        with self._lock:
            return self._disk.take_deletes()

    # -- flush and delete ------------------------------------------------------------------------------
    def plan_flush(self) -> tuple[list[Plan], int, int, int]:
        """``(plans, ticket, dirty, refused)``: a PERSIST plan per namespace for every memory page
        not on disk (from dram where both tiers hold it), a ticket watching every page not on disk
        yet, and how many pages the budget refused."""
        plans: list[Plan] = []
        dirty: dict[bytes, None] = {}
        refused = 0
        with self._lock:
            for book in self._books.values():
                moves, queued, refused_here = self._disk.flush_moves(book)
                dirty.update(dict.fromkeys(queued))
                refused += refused_here
                if moves:
                    plans.append(self._open_locked(PlanKind.PERSIST, book.ns_id, moves))
            ticket = self.durability.new_ticket()
            for dkey in dirty:
                self.durability.watch(ticket, dkey)
        self.durability.seal(ticket)
        return plans, ticket, len(dirty), refused

    def pages_not_on_disk(self) -> int:
        """Pages held in memory only (hbm or dram, not stored on disk), over every namespace."""
        with self._lock:
            return sum(self._disk.not_on_disk(book) for book in self._books.values())

    def delete(self, ns_id: int, keys: Sequence[PageKey]) -> int:
        """Drop pages from every tier (pinned slots are freed by their last unpin, pending stores
        never publish, queued disk writes are deleted once they commit); how many were cached."""
        with self._lock:
            book = self._book_locked(ns_id)
            # Both books forget the key (no short-circuit): it may be in memory and on disk.
            return sum(book.forget(key) | self._disk.forget(book.dkey(key)) for key in keys)

    # -- completion ----------------------------------------------------------------------------------
    def complete(self, plan: Plan, outcomes: Sequence[bool]) -> Plan | None:
        """Publish what arrived and roll back what did not; returns the PERSIST plan a STORE
        makes under write_through (the caller runs it). Each plan completes exactly once."""
        durable: Durable = []
        with self._lock:
            if len(outcomes) != len(plan.moves) or plan.plan_id not in self._open:
                raise PlanError(f"plan {plan.plan_id} is not open (completed twice, or not this "
                                f"manager's) or got {len(outcomes)} outcomes for {len(plan.moves)} moves")
            del self._open[plan.plan_id]
            book = self._books[plan.ns_id]
            persists = COMPLETERS[plan.kind](book, self._disk, self._counters, plan, outcomes, durable)
            followup = self._persist_plan_locked(book, persists)
        for dkey, ok in durable:
            self.durability.page_done(dkey, ok)
        return followup

    # -- inspection -------------------------------------------------------------------------------------
    def tier_stats(self, capacity_bytes: Callable[[Tier], int],
                   disk_queue_depth: int) -> dict[Tier, TierStats]:
        with self._lock:
            return inspection.tier_stats(list(self._books.values()), self._disk, self._counters,
                                         capacity_bytes, disk_queue_depth)

    def totals(self) -> tuple[int, int, int, int, int]:
        """``(namespaces, leases, disk_writes_refused, disk_budget_bytes,
        evictions_with_children)``, the last over every tier."""
        with self._lock:
            return (len(self._books), len(self._leases), self._disk.writes_refused,
                    self._disk.budget_bytes,
                    self._counters.evictions_with_children + self._disk.evictions_with_children)

    def inspect(self) -> IndexSnapshot:
        """A copy of the whole index, taken under the lock."""
        with self._lock:
            return inspection.snapshot(list(self._books.values()), self._disk, self._leases.records(),
                                       len(self._open))
