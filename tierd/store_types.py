"""Values the page store returns: lookup and put results, statistics."""

from __future__ import annotations

from dataclasses import dataclass

from tierd.config import WritePolicy
from tierd.index.leases import Lease, LeaseKind
from tierd.tier import Tier

__all__ = ["Lease", "LeaseKind", "LookupResult", "PutResult", "StoreStats", "TierCounters",
           "TierStats"]


@dataclass(frozen=True)
class LookupResult:
    """``num_hits`` leading keys are cached; ``tiers[i]`` is the fastest tier holding key ``i``."""

    num_hits: int
    tiers: tuple[Tier, ...]


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
class TierStats:
    capacity_bytes: int
    used_bytes: int
    pages: int
    hits: int
    misses: int
    evictions: int
    bytes_in: int
    bytes_out: int
    queue_depth: int


@dataclass(frozen=True)
class StoreStats:
    tiers: dict[Tier, TierStats]
    namespaces: int
    leases: int
    checksum_failures: int
    uptime_s: float
    write_policy: WritePolicy
    disk_writes_refused: int = 0  # page writes refused: the disk budget was full of writes in flight


@dataclass
class TierCounters:
    """Monotonic per-tier counters, updated under the store lock."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
