"""Leases: time-limited pins a client holds on pages (READ) or on free slots it fills (FILL).

Bookkeeping only: a lease records which slots of which region it pins and until when; the store
pins/unpins those slots in the residency tables. Lease ids are random 63-bit integers so one
client cannot guess another's. The caller holds the store lock.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from tierd.errors import NotFound
from tierd.keys import PageKey
from tierd.tier import Tier
from tierd.values import Lease, LeaseKind, LeaseWindow

LEASE_ID_BITS = 63


@dataclass
class LeaseRecord:
    """The table's mutable view of a lease. ``open_slots`` are FILL slots not committed yet."""

    lease_id: int
    ns_id: int
    tier: Tier
    kind: LeaseKind
    keys: tuple[PageKey, ...]
    slots: tuple[int, ...]
    expires_at_s: float
    owner: str | None
    open_slots: set[int] = field(default_factory=set)
    window: LeaseWindow | None = None  # READ leases of windowed namespaces

    def snapshot(self) -> Lease:
        return Lease(self.lease_id, self.ns_id, self.tier, self.kind, self.keys, self.slots,
                     self.expires_at_s, self.owner, self.window)


class LeaseTable:
    """Live leases by id, with expiry and per-owner lookup."""

    def __init__(self) -> None:
        self._leases: dict[int, LeaseRecord] = {}

    def __len__(self) -> int:
        return len(self._leases)

    def add(self, ns_id: int, tier: Tier, kind: LeaseKind, keys: tuple[PageKey, ...],
            slots: tuple[int, ...], expires_at_s: float, owner: str | None,
            window: LeaseWindow | None = None) -> LeaseRecord:
        lease_id = secrets.randbits(LEASE_ID_BITS)
        while lease_id == 0 or lease_id in self._leases:
            lease_id = secrets.randbits(LEASE_ID_BITS)
        record = LeaseRecord(lease_id, ns_id, tier, kind, keys, slots, expires_at_s, owner,
                             set(slots) if kind is LeaseKind.FILL else set(), window)
        self._leases[lease_id] = record
        return record

    def get(self, lease_id: int) -> LeaseRecord:
        record = self._leases.get(lease_id)
        if record is None:
            raise NotFound(f"lease {lease_id} does not exist: it was released, expired, or belonged "
                           "to a session that ended; acquire the pages again")
        return record

    def pop(self, lease_id: int) -> LeaseRecord:
        record = self.get(lease_id)
        del self._leases[lease_id]
        return record

    def expired(self, now_s: float) -> list[int]:
        return [lid for lid, rec in self._leases.items() if rec.expires_at_s <= now_s]

    def owned_by(self, owner: str) -> list[int]:
        return [lid for lid, rec in self._leases.items() if rec.owner == owner]

    def records(self) -> list[LeaseRecord]:
        """Every live lease's record (for inspection; the caller holds the manager's lock)."""
        return list(self._leases.values())
