"""Values that cross the store, the RPC layer and the worker library: leases, lookups, tier stats.

A shared value module (frozen dataclasses and enums only); ``tierd_client`` may import it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tierd.keys import PageKey
from tierd.tier import Tier


class LeaseKind(enum.Enum):
    READ = "read"   # pins published pages so they are neither evicted nor moved
    FILL = "fill"   # holds reserved, unpublished slots the client writes and then commits


@dataclass(frozen=True)
class LeaseWindow:
    """What a READ lease of a windowed namespace covers: of a cached prefix of ``prefix_pages``
    pages of the request's keys, the pages a continuation attends to; the lease's ``keys[i]``
    is the request's key ``page_indices[i]`` (sorted, each below ``prefix_pages``)."""

    prefix_pages: int
    page_indices: tuple[int, ...]


@dataclass(frozen=True)
class Lease:
    """What a client is handed: ``slots[i]`` holds ``keys[i]`` (READ) or is free to fill (FILL).

    ``expires_at_s`` is on the store process's ``time.monotonic`` clock. ``window`` is set on
    READ leases of windowed namespaces only; without it the keys are the request's leading ones.
    """

    lease_id: int
    ns_id: int
    tier: Tier
    kind: LeaseKind
    keys: tuple[PageKey, ...]
    slots: tuple[int, ...]
    expires_at_s: float
    owner: str | None = None
    window: LeaseWindow | None = None

    @property
    def num_pages(self) -> int:
        return len(self.slots)

    @property
    def page_indices(self) -> tuple[int, ...]:
        """The index in the request's keys of each leased page (READ leases)."""
        return self.window.page_indices if self.window is not None else tuple(range(len(self.keys)))

    @property
    def prefix_pages(self) -> int:
        """Length of the cached prefix the lease serves (READ leases): a continuation starts
        after ``prefix_pages`` pages of the request's keys."""
        return self.window.prefix_pages if self.window is not None else len(self.keys)


@dataclass(frozen=True)
class LookupResult:
    """``num_hits`` leading keys are cached; ``tiers[i]`` is the fastest tier holding key ``i``."""

    num_hits: int
    tiers: tuple[Tier, ...]


@dataclass(frozen=True)
class TierStats:
    """One tier's numbers in Stats; bytes are page payload bytes, counters are monotonic."""

    capacity_bytes: int
    used_bytes: int
    pages: int
    hits: int
    misses: int
    evictions: int
    bytes_in: int
    bytes_out: int
    queue_depth: int
    # disk only: pages stored in a cold format (fp8), and the bytes they would take more if
    # stored exactly (payloads; headers are the same either way). 0 in other tiers.
    quantized_pages: int = 0
    quantized_bytes_saved: int = 0
    # dram only: bytes page-locked for the GPU (cudaHostRegister) now; 0 elsewhere and without one.
    pinned_bytes: int = 0
