"""Values the page store returns: put and commit results, statistics, an index snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field

from tierd.config import EvictionPolicy, WritePolicy
from tierd.keys import PageKey
from tierd.remote.tier import RemoteStats
from tierd.tier import Tier
from tierd.values import Lease, LeaseKind, LookupResult, TierStats

__all__ = ["CommitResult", "IndexSnapshot", "Lease", "LeaseKind", "LookupResult", "PeekedPage",
           "PutResult", "RegionSnapshot", "StoreStats", "TierCounters", "TierStats"]


@dataclass(frozen=True)
class PutResult:
    """``stored`` new pages, ``skipped`` already cached ones.

    ``durable_ticket`` is for ``PageStore.wait_durable`` when the write policy queued the pages for
    disk (write_through), else ``None``.
    """

    stored: int
    skipped: int
    durable_ticket: int | None


@dataclass(frozen=True)
class CommitResult:
    """``committed`` slots newly bound to keys (a key cached meanwhile keeps its page).

    ``durable_ticket`` is for ``PageStore.wait_durable`` under write_through, else ``None``.
    """

    committed: int
    durable_ticket: int | None


@dataclass(frozen=True)
class PeekedPage:
    """A page as ``PageStore.peek`` found it: the tier it was read from, and its bytes."""

    tier: Tier
    data: bytes


@dataclass(frozen=True)
class StoreStats:
    tiers: dict[Tier, TierStats]
    namespaces: int
    leases: int
    checksum_failures: int
    uptime_s: float
    write_policy: WritePolicy
    disk_writes_refused: int = 0  # page writes refused: the disk budget was full of writes in flight
    disk_budget_bytes: int = 0    # the disk budget in force (below capacity after LMDB's map filled)
    map_full_events: int = 0      # times LMDB's map filled before the budget did
    engine: str = "cpu"           # the transfer engine copying pages (cpu, fake, cuda)
    # Page writes the disk did not store (an I/O error such as a full file system, or LMDB's map
    # full; the pages stay in memory and are written again), and why the latest failed while
    # writes fail ("" once they commit again).
    disk_write_failures: int = 0
    disk_write_error: str = ""
    remote: RemoteStats | None = None  # the remote tier's own counters, when one is configured
    eviction_policy: EvictionPolicy = EvictionPolicy.LRU
    # Evictions of a page that had a child resident in the tier it left, over every tier: what
    # prefix-aware eviction avoids.
    evictions_with_children: int = 0


@dataclass
class TierCounters:
    """Monotonic per-tier counters, updated under the manager's lock."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(frozen=True)
class RegionSnapshot:
    """The bookkeeping of one namespace's region in one memory tier, at one moment.

    Every allocated slot is exactly one of: a published page, a pending store, an open slot of a
    FILL lease, or an orphan (removed from the index while pinned, freed by its last unpin).
    """

    num_slots: int
    used_slots: int
    pages: dict[PageKey, int] = field(default_factory=dict)
    pending: dict[PageKey, int] = field(default_factory=dict)
    pins: dict[int, int] = field(default_factory=dict)
    fill_slots: frozenset[int] = frozenset()
    orphan_slots: frozenset[int] = frozenset()


@dataclass(frozen=True)
class IndexSnapshot:
    """The manager's whole index, copied under its lock (for tests and debugging)."""

    regions: dict[tuple[int, Tier], RegionSnapshot]
    disk_pages: dict[int, frozenset[PageKey]]      # ns_id -> keys stored on disk
    disk_pending: dict[int, frozenset[PageKey]]    # ns_id -> keys being written
    disk_used_bytes: int
    disk_budget_bytes: int
    used_bytes: dict[Tier, int]
    leases: tuple[Lease, ...]
    open_plans: int
