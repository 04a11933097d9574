"""The local data path: pages read and written through the daemon's mapped regions.

Used by both clients when the daemon shares this machine (``ClientOptions.local_data_path``):

- ``LocalReader`` copies resident pages out of the mapped regions without any RPC, looking each
  key up in the region's page index (``tierd.page_index``: a copy is accepted only if the key's
  bucket did not change during it, so it is never a page evicted, overwritten or deleted
  meanwhile). The daemon does not see these reads, so the reader remembers the keys it served
  and the client reports them in batches (a Lookup, which counts hits and keeps the pages warm).
- ``SlotPool`` keeps a few free slots of a FILL lease per namespace, so a local put is one copy
  and one Commit, with one Allocate per ``ClientOptions.put_slots`` pages.

Neither does any I/O of its own: the clients make the RPCs.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

from tierd.handles import HandleKind
from tierd.page_index import PageIndexReader, loads_are_ordered
from tierd.tier import MEMORY_TIERS, Tier
from tierd_client.arena import ArenaView
from tierd_client.errors import NotFoundError, TierdRpcError
from tierd_client.types import NamespaceHandle

# Keys served locally are reported to the daemon once this many have gathered (one Lookup, so
# one get in this many pays an RPC: rare enough to stay out of the p99).
TOUCH_BATCH_KEYS = 256
# At most this many wait to be reported; more are dropped (only the LRU order misses them).
MAX_PENDING_TOUCHES = 4096
# A pooled lease is not used this close to its expiry (the commit must reach the daemon first).
LEASE_MARGIN_S = 2.0
# Leases kept per (namespace, tier): one per thread that puts at once, up to this many.
MAX_POOLED_PER_NAMESPACE = 4


class _Region:
    """One mapped region with an index: where to look keys up and copy pages from."""

    __slots__ = ("reader", "flat", "page_bytes")

    def __init__(self, reader: PageIndexReader, flat: memoryview, page_bytes: int) -> None:
        self.reader = reader
        self.flat = flat
        self.page_bytes = page_bytes

    def copy_out(self, key: bytes, out: memoryview) -> tuple[_Copy, None]:
        """Copy ``key``'s page into ``out``; anything but ``COPIED`` leaves ``out`` undefined."""
        found = self.reader.find(key)
        if found is None or not self.reader.is_open:
            return _Copy.ABSENT, None
        start = found.slot * self.page_bytes
        out[:] = self.flat[start:start + self.page_bytes]
        return (_Copy.COPIED if self.reader.unchanged(found) else _Copy.REFUSED), None

    def copy_bytes(self, key: bytes) -> tuple[_Copy, bytes]:
        """``key``'s page as new bytes (valid only with ``COPIED``)."""
        found = self.reader.find(key)
        if found is None or not self.reader.is_open:
            return _Copy.ABSENT, b""
        start = found.slot * self.page_bytes
        page = bytes(self.flat[start:start + self.page_bytes])
        return (_Copy.COPIED if self.reader.unchanged(found) else _Copy.REFUSED), page


class _Copy(enum.Enum):
    ABSENT = "absent"    # not in this region's index (or being changed)
    COPIED = "copied"    # certainly the committed page
    REFUSED = "refused"  # the key's bucket changed during the copy: the bytes may be another page's


@dataclass(frozen=True)
class LocalPathStats:
    """What one client's local data path did since it was created.

    ``pages_read``: pages copied out of mapped regions without an RPC; ``pages_missed``: pages
    asked for that were not resident in a mapped region (read over RPCs instead);
    ``copies_refused``: copies thrown away because the page moved during the copy;
    ``pages_put``: pages written into leased slots and committed;
    ``page_socket_calls``: byte-path calls (GetPages, PutPages) answered over the daemon's page
    socket; ``page_socket_fallbacks``: those that went over gRPC although the daemon names one
    (unreachable, busy, another daemon run, or the connection broke). The two page socket counts
    are exact from one thread; concurrent threads may lose an increment.
    """

    pages_read: int = 0
    pages_missed: int = 0
    copies_refused: int = 0
    pages_put: int = 0
    page_socket_calls: int = 0
    page_socket_fallbacks: int = 0


class LocalReader:
    """Lease-free reads of one client. ``arena(ns, tier)`` maps (or returns the cached, fresh)
    view of a region. Thread-safe."""

    def __init__(self, arena: Callable[[NamespaceHandle, Tier], ArenaView], enabled: bool) -> None:
        self._arena = arena
        self._enabled = enabled and loads_are_ordered()
        self._unusable: set[bytes] = set()  # grants of regions that cannot be read here
        # Namespaces whose regions are gone (the daemon restarted), and their fresh handles.
        self._stale: set[int] = set()
        self._fresh: dict[int, NamespaceHandle] = {}
        self._lock = threading.Lock()
        self._touched: dict[int, list[bytes]] = {}
        self._num_touched = 0
        self._stats = LocalPathStats()

    @property
    def enabled(self) -> bool:
        return self._enabled

    def read(self, ns: NamespaceHandle, keys: Sequence[bytes], outs: Sequence[memoryview]) -> int:
        """Copy the pages of the leading resident ``keys`` into ``outs`` (one writable
        ``page_bytes`` view each); how many were copied (the rest need an RPC)."""
        done = 0
        for _ in self._copies(ns, keys, lambda region, key, index: region.copy_out(key, outs[index])):
            done += 1
        return done

    def read_pages(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> list[bytes]:
        """The pages of the leading resident ``keys``, each copied once into new bytes."""
        return list(self._copies(ns, keys, lambda region, key, _index: region.copy_bytes(key)))

    def _copies(self, ns: NamespaceHandle, keys: Sequence[bytes],
                copy: Callable[[_Region, bytes, int], tuple[_Copy, T]]) -> Iterator[T]:
        """What ``copy`` made of each leading resident key, stopping at the first it could not
        copy; counts what happened."""
        if not self._enabled or not keys:
            return
        regions = self._regions(self.current(ns))
        done = refused = 0
        try:
            for index, key in enumerate(keys):
                for region in regions:
                    outcome, value = copy(region, key, index)
                    if outcome is _Copy.COPIED:
                        break
                    refused += outcome is _Copy.REFUSED
                else:
                    return
                done += 1
                yield value
        finally:
            self._count(ns.ns_id, keys[:done], len(keys) - done, refused)

    def current(self, ns: NamespaceHandle) -> NamespaceHandle:
        """``ns``, or the fresh handle of its namespace once the daemon restarted."""
        return self._fresh.get(ns.ns_id, ns)

    def needs_refresh(self, ns: NamespaceHandle) -> bool:
        """Whether ``ns``'s regions are gone (a restarted daemon): register again for new ones."""
        return ns.ns_id in self._stale

    def refreshed(self, old: NamespaceHandle, new: NamespaceHandle) -> None:
        """``new`` (from Register) replaces ``old`` on the local path if it is the same namespace."""
        self._stale.discard(old.ns_id)
        if (new.ns_id, new.fingerprint, new.page_bytes) == (old.ns_id, old.fingerprint, old.page_bytes):
            self._fresh[old.ns_id] = new

    def usable(self, grant: bytes) -> bool:
        """Whether the region of ``grant`` may still be mapped here."""
        return self._enabled and grant not in self._unusable

    def mark_gone(self, ns: NamespaceHandle, grant: bytes) -> None:
        """The daemon no longer serves the region of ``grant`` (it restarted): the client
        registers ``ns`` again for the new daemon's regions."""
        self.mark_unusable(grant)
        self._stale.add(ns.ns_id)

    def mark_unusable(self, grant: bytes) -> None:
        """The region of ``grant`` cannot be mapped here (gone with a restarted daemon, or not
        ours): RPCs serve it from now on."""
        self._unusable.add(grant)

    def count_put(self, num_pages: int) -> None:
        with self._lock:
            self._stats = replace(self._stats, pages_put=self._stats.pages_put + num_pages)

    def stats(self) -> LocalPathStats:
        return self._stats

    def _regions(self, ns: NamespaceHandle) -> list[_Region]:
        out: list[_Region] = []
        for tier in MEMORY_TIERS:
            handle = ns.region(tier)
            if (handle is None or handle.kind is not HandleKind.MEMFD or handle.index_bytes <= 0
                    or handle.grant in self._unusable):
                continue
            try:
                index = self._arena(ns, tier).page_index()
            except NotFoundError:
                self.mark_gone(ns, handle.grant)
                continue
            except TierdRpcError:
                # Gone (the daemon restarted: register again for fresh handles), or not ours to
                # map: the RPC path serves these reads from now on.
                self.mark_unusable(handle.grant)
                continue
            # A handle names its namespace's regions only: one carried over to another ns_id (a
            # hand-made handle) reads nothing here.
            if index is not None and index[0].ns_id == ns.ns_id:
                out.append(_Region(index[0], index[1], handle.page_bytes))
        return out

    def _count(self, ns_id: int, keys: Sequence[bytes], missed: int, refused: int) -> None:
        with self._lock:
            stats = self._stats
            self._stats = LocalPathStats(stats.pages_read + len(keys), stats.pages_missed + missed,
                                         stats.copies_refused + refused, stats.pages_put)
            if keys and self._num_touched + len(keys) <= MAX_PENDING_TOUCHES:
                self._touched.setdefault(ns_id, []).extend(keys)
                self._num_touched += len(keys)

    def take_touches(self) -> dict[int, list[bytes]]:
        """Keys served locally since the last call, by namespace, once ``TOUCH_BATCH_KEYS`` have
        gathered; the client reports them with Lookups."""
        with self._lock:
            if self._num_touched < TOUCH_BATCH_KEYS:
                return {}
            touched, self._touched, self._num_touched = self._touched, {}, 0
        return touched


class PooledLease(Protocol):
    """What the pool needs of a client's FILL lease."""

    @property
    def slots(self) -> tuple[int, ...]: ...

    @property
    def expires_at_s(self) -> float: ...


L = TypeVar("L", bound=PooledLease)
T = TypeVar("T")


class Pooled(Generic[L]):
    """A FILL lease and its slots nobody has written yet; used by one caller at a time."""

    def __init__(self, lease: L) -> None:
        self.lease = lease
        self._free = list(lease.slots)

    @property
    def num_free(self) -> int:
        return len(self._free)

    def take(self, num_pages: int) -> tuple[int, ...]:
        """Up to ``num_pages`` free slots, now the caller's to write and commit."""
        taken, self._free = tuple(self._free[:num_pages]), self._free[num_pages:]
        return taken

    def usable(self, now_s: float) -> bool:
        """Free slots left, and time enough before expiry for a commit to reach the daemon."""
        return bool(self._free) and self.lease.expires_at_s - LEASE_MARGIN_S > now_s


class SlotPool(Generic[L]):
    """Pooled FILL leases per (namespace, tier), for local puts. ``checkout`` hands a lease to one
    caller only (a slot must never be written by two, nor a lease ended under a writer);
    ``checkin`` gives it back. Thread-safe."""

    def __init__(self, max_per_namespace: int = MAX_POOLED_PER_NAMESPACE) -> None:
        self._lock = threading.Lock()
        self._max = max_per_namespace
        self._pools: dict[tuple[int, Tier], list[Pooled[L]]] = {}

    def checkout(self, ns_id: int, tier: Tier) -> tuple[Pooled[L] | None, list[L]]:
        """A usable pooled lease (``None``: allocate one), and leases too close to their expiry
        to use, which the caller releases."""
        now_s = time.monotonic()
        stale: list[L] = []
        with self._lock:
            pooled = self._pools.get((ns_id, tier), [])
            while pooled:
                candidate = pooled.pop()
                if candidate.usable(now_s):
                    return candidate, stale
                stale.append(candidate.lease)
        return None, stale

    def checkin(self, ns_id: int, tier: Tier, pooled: Pooled[L]) -> L | None:
        """Give a lease with free slots back; returns it instead when the pool is full (the
        caller releases it)."""
        with self._lock:
            leases = self._pools.setdefault((ns_id, tier), [])
            if len(leases) >= self._max:
                return pooled.lease
            leases.append(pooled)
        return None

    def drain(self) -> list[L]:
        """Every pooled lease (for the client to release on close); the pool is empty after."""
        with self._lock:
            leases = [pooled.lease for group in self._pools.values() for pooled in group]
            self._pools.clear()
        return leases
