"""Who may touch which lease (its tenant, its session), and the session registry's side of leases
that end: Release, Commit's ``release_lease``, Acquire's ``release_lease_ids``.

Confined to the server's event loop, like the session registry; the store calls made here are
bookkeeping only (lock-free reads, or a release under the manager's lock), fine on the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tierd.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from tierd.server.auth import Caller
from tierd.server.sessions import Session, SessionRegistry
from tierd.store import PageStore
from tierd.values import Lease

log = logging.getLogger(__name__)


class LeaseAccess:
    """Lease checks and lease ends for one servicer (its store and session registry)."""

    def __init__(self, store: PageStore, sessions: SessionRegistry, max_ids: int) -> None:
        self._store = store
        self._sessions = sessions
        self._max_ids = max_ids

    def check(self, lease_id: int, caller: Caller, session: Session | None) -> None:
        """``NotFound`` / ``PermissionDenied`` unless the caller may use ``lease_id``: with tenants
        it is in one of the caller's namespaces, and no other session took it."""
        if caller.tenant is not None:
            caller.check_namespace(self._store.lease_namespace(lease_id))
        self._sessions.check_access(lease_id, session)

    def alive(self, lease_id: int) -> bool:
        try:
            self._store.lease_namespace(lease_id)
        except NotFound:
            return False
        return True

    def releasable(self, lease_ids: Sequence[int], caller: Caller, session: Session | None) -> list[int]:
        """The live leases among ``lease_ids`` (unknown ones are skipped, repeats dropped), each
        checked like a Release; ``PermissionDenied`` for another tenant's or session's lease,
        before anything ends."""
        if len(lease_ids) > self._max_ids:
            raise InvalidArgument(f"release_lease_ids has {len(lease_ids)} entries; at most "
                                  f"{self._max_ids} per request: release the others with Release")
        live: dict[int, None] = {}
        for index, lease_id in enumerate(lease_ids):
            if lease_id in live or not self.alive(lease_id):
                continue  # expired or released already: what the caller wanted anyway
            try:
                self.check(lease_id, caller, session)
            except PermissionDenied as exc:
                raise PermissionDenied(f"release_lease_ids[{index}]: {exc}; nothing was released "
                                       "or acquired") from None
            except NotFound:
                continue  # expired between the two reads
            live[lease_id] = None
        return list(live)

    def forget_ended(self, lease_ids: Sequence[int]) -> None:
        """Drop from the session registry those of ``lease_ids`` that ended in the store."""
        for lease_id in lease_ids:
            if not self.alive(lease_id):
                self._sessions.forget(lease_id)

    def forget(self, lease_id: int) -> None:
        """``lease_id`` ended (released, or committed with ``release_lease``)."""
        self._sessions.forget(lease_id)

    def release_quietly(self, lease_id: int, why: str) -> None:
        """End a lease nobody will use; one that is gone already is fine."""
        self._sessions.forget(lease_id)
        try:
            self._store.release(lease_id)
            log.info("released lease %d: %s", lease_id, why)
        except (NotFound, Unavailable):
            pass  # expired, its session's release got there first, or the store closed

    def adopt(self, session: Session | None, lease: Lease) -> Lease:
        """Record a new lease under its session; if the session ended meanwhile, release it."""
        if session is None:
            return lease
        if session.closed:
            self.release_quietly(lease.lease_id, "its session ended while it was taken")
            raise NotFound("the session ended while the lease was being taken; the lease was "
                           "released: open a new Session and retry")
        self._sessions.track(session, lease)
        return lease
