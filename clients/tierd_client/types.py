"""Values the client hands back: namespaces, results, lease state, daemon stats. All frozen."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tierd.handles import RegionHandle
from tierd.keys import chain_keys
from tierd.spec import PageSpec
from tierd.tier import Tier
from tierd.values import LeaseKind, LeaseWindow, LookupResult, TierStats

__all__ = ["CommitResult", "DaemonStats", "LeaseKind", "LeaseState", "LeaseWindow", "LookupResult",
           "NamespaceHandle", "PutResult", "ServerLimits", "TierStats"]


@dataclass(frozen=True)
class ServerLimits:
    """What the daemon accepts per message and per request (bytes, pages)."""

    max_message_bytes: int
    chunk_bytes: int
    max_put_bytes: int
    max_keys_per_request: int
    max_get_bytes: int = 0  # 0: not announced (older daemon); then max_put_bytes bounds gets too


@dataclass(frozen=True)
class PageSocketAddress:
    """A daemon's page socket (``path``) and the run it belongs to (``epoch``, 16 bytes)."""

    path: str
    epoch: bytes


@dataclass(frozen=True)
class NamespaceHandle:
    """A registered (tenant, spec): what a worker needs to compute keys and move pages.

    ``fingerprint`` (16 bytes) is the daemon's; ``regions`` are the hbm and dram region handles to
    map for the zero-copy path (``TierClient.arena``); ``page_socket`` is where the daemon serves
    byte-path gets and puts outside gRPC (``None``: it serves none).
    """

    ns_id: int
    tenant: str
    spec: PageSpec
    fingerprint: bytes
    page_bytes: int
    regions: tuple[RegionHandle, ...]
    limits: ServerLimits = field(compare=False)
    page_socket: PageSocketAddress | None = field(default=None, compare=False)

    def keys(self, token_ids: Sequence[int] | np.ndarray, parent: bytes | None = None) -> list[bytes]:
        """Chain keys (16 bytes each) of the full pages of ``token_ids``; a partial tail gets none.

        ``parent`` continues a chain from the key of the page just before ``token_ids[0]``.
        """
        return chain_keys(self.fingerprint, token_ids, self.spec.page_tokens, parent=parent)

    def region(self, tier: Tier) -> RegionHandle | None:
        """The handle of this namespace's ``tier`` region, or ``None`` if the daemon gave none."""
        for handle in self.regions:
            if handle.tier is tier:
                return handle
        return None


@dataclass(frozen=True)
class PutResult:
    """Pages newly stored, pages skipped (already cached), and durability of the put.

    ``durable_tickets``: one per PutPages call that queued pages for disk (``wait_durable`` each);
    ``durable`` is True only when the put asked to wait and every page reached disk in time.
    """

    num_stored: int
    num_skipped: int
    durable_tickets: tuple[int, ...]
    durable: bool


@dataclass(frozen=True)
class CommitResult:
    """Slots newly bound to keys (a key cached meanwhile keeps its page), and durability.

    ``durable_ticket``: set when the daemon (write_through) queued the pages for disk, for
    ``wait_durable``; ``durable`` is True only when the commit asked to wait and every page reached
    disk in time.
    """

    num_committed: int
    durable_ticket: int | None
    durable: bool


@dataclass(frozen=True)
class LeaseState:
    """A lease as the daemon granted it. ``keys[i]`` lives in ``slots[i]`` (READ leases);
    FILL leases have slots and no keys. ``expires_at_s`` is on this process's ``time.monotonic``.
    ``window``: set on READ leases of a windowed namespace, which cover only the pages a
    continuation attends to (``page_indices`` says which of the requested keys).
    """

    lease_id: int
    ns_id: int
    tier: Tier
    kind: LeaseKind
    keys: tuple[bytes, ...]
    slots: tuple[int, ...]
    expires_at_s: float
    window: LeaseWindow | None = None

    @property
    def page_indices(self) -> tuple[int, ...]:
        """The index in the requested keys of each leased page: ``keys[i]`` is requested key
        ``page_indices[i]`` (``0, 1, ...`` without a window)."""
        return self.window.page_indices if self.window is not None else tuple(range(len(self.keys)))

    @property
    def prefix_pages(self) -> int:
        """How many leading requested keys the lease serves: a continuation starts after them
        (``len(keys)`` without a window)."""
        return self.window.prefix_pages if self.window is not None else len(self.keys)


@dataclass(frozen=True)
class RemoteTierStats:
    """The remote tier's own counters (its hits, misses, bytes and queue are in ``tiers``)."""

    backend: str
    available: bool        # False while the daemon backs off after a failure
    errors: int            # backend calls that failed (down, slow, refused)
    checksum_failures: int  # values that failed their check (torn, corrupt, foreign): deleted
    dropped: int           # pages the write queue had no room for
    pages_written: int


@dataclass(frozen=True)
class DaemonStats:
    """One ``Stats`` answer. ``tiers`` maps each tier to its counters."""

    tiers: dict[Tier, TierStats]
    namespaces: int
    leases: int
    checksum_failures: int
    uptime_s: float
    write_policy: str
    sessions: int = 0
    rpcs_in_flight: int = 0
    rpcs_rejected: int = 0
    version: str = ""
    device: str = ""
    disk_writes_refused: int = 0
    disk_write_failures: int = 0  # page writes the disk did not store (e.g. disk full)
    disk_write_error: str = ""    # why the latest failed, while disk writes fail
    remote: RemoteTierStats | None = None  # set when the daemon has a remote tier
    # Evictions of a page that had a child resident in the tier it left (under every policy).
    evictions_with_children: int = 0
    eviction_policy: str = ""     # "lru" or "prefix_aware" ("" from a daemon that does not say)

    def to_json_dict(self) -> dict[str, object]:
        """The ``tierctl stats --json`` object: ``tiers`` keyed ``hbm``/``dram``/``disk`` (and
        ``remote``), then totals; ``remote`` is null without a remote tier."""
        tiers = {
            tier.label: {"capacity_bytes": s.capacity_bytes, "used_bytes": s.used_bytes,
                         "pages": s.pages, "hits": s.hits, "misses": s.misses,
                         "evictions": s.evictions, "bytes_in": s.bytes_in,
                         "bytes_out": s.bytes_out, "queue_depth": s.queue_depth,
                         "quantized_pages": s.quantized_pages,
                         "quantized_bytes_saved": s.quantized_bytes_saved,
                         "pinned_bytes": s.pinned_bytes}
            for tier, s in sorted(self.tiers.items())
        }
        return {"tiers": tiers, "namespaces": self.namespaces, "leases": self.leases,
                "checksum_failures": self.checksum_failures, "uptime_s": self.uptime_s,
                "write_policy": self.write_policy, "disk_writes_refused": self.disk_writes_refused,
                "disk_write_failures": self.disk_write_failures,
                "disk_write_error": self.disk_write_error,
                "eviction_policy": self.eviction_policy,
                "evictions_with_children": self.evictions_with_children,
                "server": {"sessions": self.sessions, "rpcs_in_flight": self.rpcs_in_flight,
                           "rpcs_rejected": self.rpcs_rejected, "version": self.version,
                           "device": self.device},
                "remote": None if self.remote is None else dataclasses.asdict(self.remote)}
