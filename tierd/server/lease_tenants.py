"""The tenant of each lease the servicer handed out, so a lease id of another tenant is refused.

Only used when tenants are configured. Every lease of a daemon is made by the servicer (Acquire,
Allocate), which records it here; Release forgets it, Renew moves its expiry. Leases the store
ends on its own (expiry, a session's end) are pruned once well past their expiry, so an id this
table does not know is unknown to the store as well (NOT_FOUND), never another tenant's.

Confined to the server's event loop, like the session registry: no lock.
"""

from __future__ import annotations

from tierd.errors import NotFound, PermissionDenied

# An entry outlives its lease's expiry by this long: the store expires leases in its maintenance
# pass (every store.maintenance_interval_s, 0.05 s by default), so after a minute the store has
# certainly dropped it too and forgetting it here cannot turn a live lease into an unknown one.
EXPIRY_GRACE_S = 60.0
# Pruning scans the whole table; it runs when the table has doubled since the last scan (and is
# at least this big), which keeps the cost per recorded lease constant.
MIN_PRUNE_ENTRIES = 1024


class LeaseTenants:
    """lease id -> (tenant, expiry on ``time.monotonic``)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[str, float]] = {}
        self._prune_at_entries = MIN_PRUNE_ENTRIES

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, lease_id: int, tenant: str, expires_at_s: float, now_s: float) -> None:
        """Remember (or, after a renew, update) the tenant and expiry of ``lease_id``."""
        self._entries[lease_id] = (tenant, expires_at_s)
        if len(self._entries) >= self._prune_at_entries:
            self.prune(now_s)
            self._prune_at_entries = max(MIN_PRUNE_ENTRIES, 2 * len(self._entries))

    def forget(self, lease_id: int) -> None:
        self._entries.pop(lease_id, None)

    def check(self, lease_id: int, tenant: str) -> None:
        """``PermissionDenied`` for another tenant's lease, ``NotFound`` for an unknown one."""
        entry = self._entries.get(lease_id)
        if entry is None:
            raise NotFound(f"lease {lease_id} is unknown: it was released, expired, or never "
                           "existed; take a new lease with Acquire or Allocate")
        if entry[0] != tenant:
            raise PermissionDenied(f"lease {lease_id} belongs to another tenant, not to "
                                   f"{tenant!r}: use a lease your own Acquire or Allocate returned")

    def prune(self, now_s: float) -> int:
        """Forget leases that expired more than ``EXPIRY_GRACE_S`` ago; how many."""
        stale = [lease_id for lease_id, (_tenant, expires_s) in self._entries.items()
                 if expires_s + EXPIRY_GRACE_S < now_s]
        for lease_id in stale:
            del self._entries[lease_id]
        return len(stale)
