"""The page store's lease API: Acquire (READ leases over pages moved up), Allocate and Commit
(FILL leases of free hbm slots), Renew, Release and the end of a client session."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import time
from collections.abc import Sequence

from tierd.config import WritePolicy
from tierd.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, ResourceExhausted
from tierd.index.leases import Lease, LeaseKind, LeaseRecord
from tierd.keys import PageKey, check_keys
from tierd.promotion import Hold
from tierd.spec import Namespace
from tierd.store_core import DiskJob, NamespaceState
from tierd.store_types import CommitResult
from tierd.tier import Tier


class StoreLeases:
    """Mixed into ``PageStore``; relies on its ``config``, ``_require``, ``_ready_state``,
    ``_promoter``, ``_evictor``, ``_skip_locked`` and ``_maintenance_wake``."""

    def _ttl(self, ttl_s: float | None) -> float:
        if ttl_s is None:
            return self.config.lease_ttl_s
        if not 0 < ttl_s <= self.config.max_lease_ttl_s:
            raise InvalidArgument(f"lease ttl must be in (0, {self.config.max_lease_ttl_s}] s, got {ttl_s}")
        return ttl_s

    def acquire(self, ns_id: int, keys: Sequence[PageKey], target_tier: Tier = Tier.HBM,
                timeout_s: float | None = None, ttl_s: float | None = None,
                owner: str | None = None) -> Lease:
        """Lease the longest cached prefix of ``keys``, resident in ``target_tier`` (moved up first)."""
        st = self._ready_state(ns_id)
        keys = check_keys(keys)
        ttl = self._ttl(ttl_s)
        if target_tier is Tier.DISK:
            raise InvalidArgument("acquire targets hbm or dram: disk pages are not addressable")
        if len(set(keys)) != len(keys):
            raise InvalidArgument("acquire keys repeat: a chain names each page once; pass each key once")
        res = st.residency(target_tier)
        if len(keys) > res.num_slots:
            raise ResourceExhausted(f"cannot lease {len(keys)} pages: namespace {ns_id} has "
                                    f"{res.num_slots} {target_tier.label} slots; acquire fewer at a time")
        wait_s = self.config.acquire_timeout_s if timeout_s is None else timeout_s
        deadline_s = time.monotonic() + wait_s
        core = self._require()
        hold = Hold()
        present, futures = self._promoter.schedule(st, keys, target_tier, deadline_s, hold)
        _, pending = cf.wait(futures, timeout=max(0.0, deadline_s - time.monotonic()))
        with core.lock:
            if pending:
                self._promoter.release_hold_locked(st, target_tier, hold)
                raise DeadlineExceeded(f"{len(pending)} of {present} pages did not reach "
                                       f"{target_tier.label} within {wait_s} s; retry with a longer timeout")
            # The lease covers the leading pages that arrived; a page that could not be moved
            # (no unpinned room, failed checksum, deleted) ends it.
            leased = list(itertools.takewhile(lambda key: key in hold.pins, keys[:present]))
            slots = [hold.pins[key] for key in leased]
            self._promoter.release_hold_locked(st, target_tier, hold, keep=leased)
            return self._lease_locked(st, target_tier, leased, slots, ttl, owner, len(keys))

    def _lease_locked(self, st: NamespaceState, tier: Tier, keys: list[PageKey], slots: list[int],
                      ttl_s: float, owner: str | None, asked: int) -> Lease:
        """A READ lease over pages whose slots are already pinned for it."""
        core = self._require()
        res = st.mem[tier]
        for key in keys:
            res.touch(key)
        core.counters[tier].hits += len(keys)
        core.counters[tier].misses += int(len(keys) < asked)
        record = core.leases.add(st.ns.ns_id, tier, LeaseKind.READ, tuple(keys), tuple(slots),
                                 time.monotonic() + ttl_s, owner)
        return record.snapshot()

    def allocate(self, ns_id: int, num_pages: int, ttl_s: float | None = None,
                 owner: str | None = None) -> Lease:
        """Lease ``num_pages`` free hbm slots for the caller to fill and then ``commit``."""
        st = self._ready_state(ns_id)
        ttl = self._ttl(ttl_s)
        res = st.residency(Tier.HBM)
        if isinstance(num_pages, bool) or not isinstance(num_pages, int) or not 0 < num_pages <= res.num_slots:
            raise InvalidArgument(f"num_pages must be in 1..{res.num_slots} (the namespace's hbm "
                                  f"slots), got {num_pages!r}")
        core = self._require()
        deadline_s = time.monotonic() + self.config.acquire_timeout_s
        while True:
            with core.lock:
                slots = res.reserve(num_pages)
                if slots is not None:
                    record = core.leases.add(ns_id, Tier.HBM, LeaseKind.FILL, (), tuple(slots),
                                             time.monotonic() + ttl, owner)
                    return record.snapshot()
            if not self._evictor.make_room(st, Tier.HBM, num_pages, deadline_s):
                raise ResourceExhausted(f"cannot free {num_pages} hbm slots in namespace {ns_id}: "
                                        "the rest are leased or in flight; release leases and retry")

    def commit(self, lease_id: int, keys: Sequence[PageKey], slots: Sequence[int]) -> CommitResult:
        """Bind filled slots of a FILL lease to keys. Under write_through the pages are queued for
        disk and the result's ticket (for ``wait_durable``) covers every key, cached before or not."""
        core = self._require()
        keys = check_keys(keys)
        slots = list(slots)
        if len(keys) != len(slots):
            raise InvalidArgument(f"got {len(keys)} keys but {len(slots)} slots; give one slot per key")
        jobs: list[DiskJob] = []
        with core.lock:
            record = core.leases.get(lease_id)
            if record.kind is not LeaseKind.FILL:
                raise FailedPrecondition(f"lease {lease_id} is a read lease; commit takes a lease "
                                         "from Allocate")
            bad = [s for s in slots if s not in record.open_slots]
            if bad or len(set(slots)) != len(slots):
                raise InvalidArgument(f"slots {bad or slots} are not open slots of lease {lease_id} "
                                      f"(open: {sorted(record.open_slots)}) or repeat")
            st = core.state(record.ns_id)
            through = self.config.write_policy is WritePolicy.WRITE_THROUGH
            ticket = core.durability.new_ticket(record.ns_id) if through else None
            bound = sum(self._bind_locked(st, record, key, slot, ticket, jobs) for key, slot in zip(keys, slots))
        if ticket is not None:
            core.durability.seal(ticket)
        core.submit(jobs)
        self._maintenance_wake()
        return CommitResult(bound, ticket)

    def _bind_locked(self, st: NamespaceState, record: LeaseRecord, key: PageKey, slot: int,
                     ticket: int | None, jobs: list[DiskJob]) -> bool:
        """Publish one filled hbm slot under ``key``; a key cached meanwhile keeps its page (the
        slot goes back to the free list) and is treated as a skipped put."""
        core = self._require()
        record.open_slots.discard(slot)
        res = st.mem[Tier.HBM]
        if not res.publish(key, slot):
            res.unreserve([slot])
            self._skip_locked(st, core.fastest_tier_locked(st, key), key, ticket, jobs)
            return False
        core.counters[Tier.HBM].bytes_in += st.page_bytes
        job = core.committed_locked(st, Tier.HBM, key, slot, ticket)
        if job is not None:
            jobs.append(job)
        return True

    def lease_namespace(self, lease_id: int) -> Namespace:
        """The namespace a live lease belongs to (``NotFound`` otherwise).

        Two dict reads without the store lock (a lease's ``ns_id`` never changes), so an event
        loop may call it to check who owns a lease before handing the call to an executor.
        """
        core = self._require()  # type: ignore[attr-defined]
        return core.state(core.leases.get(lease_id).ns_id).ns

    def renew(self, lease_id: int, ttl_s: float | None = None) -> Lease:
        core = self._require()
        ttl = self._ttl(ttl_s)
        with core.lock:
            record = core.leases.get(lease_id)
            record.expires_at_s = time.monotonic() + ttl
            return record.snapshot()

    def release(self, lease_id: int) -> None:
        core = self._require()
        with core.lock:
            self._release_record(core.leases.pop(lease_id))

    def release_owner(self, owner: str) -> int:
        """End every lease held by ``owner`` (a client session that ended)."""
        core = self._require()
        with core.lock:
            ids = core.leases.owned_by(owner)
            for lease_id in ids:
                self._release_record(core.leases.pop(lease_id))
        return len(ids)

    def _release_record(self, record: LeaseRecord) -> None:
        """Unpin a READ lease's pages or free a FILL lease's unfilled slots (lock held)."""
        core = self._require()
        st = core.namespaces[record.ns_id]
        if record.kind is LeaseKind.READ:
            for slot in record.slots:
                core.unpin_locked(st, record.tier, slot)
        else:
            st.mem[record.tier].unreserve(record.open_slots)
            record.open_slots.clear()
