"""Client sessions: who holds which lease, so a session's end frees its pins.

A client opens one ``Session`` stream per process and sends the id it gets as metadata
``tierd-session`` on lease calls; the id becomes the lease's ``owner`` in the store. When the stream
ends (close, crash, broken connection) the servicer calls ``store.release_owner(id)``.

The registry is confined to the server's event loop (every call comes from a coroutine on it),
so it needs no lock.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tierd.errors import NotFound, PermissionDenied
from tierd.values import Lease

SESSION_METADATA_KEY = "tierd-session"
# 128 random bits: a session id is a capability (it can release the session's leases).
SESSION_ID_BYTES = 16
# A daemon run's epoch (``RegionHandle.epoch``, ``SessionEvent.server_epoch``): random, so two
# runs never share one (a restart on the same socket and data directory included).
RUN_EPOCH_BYTES = 16


def new_run_epoch() -> bytes:
    """A fresh ``RUN_EPOCH_BYTES``-byte epoch; the servicer makes one when it is created."""
    return secrets.token_bytes(RUN_EPOCH_BYTES)


@dataclass
class Session:
    """One open client session; ``leases`` maps lease id to its expiry (``time.monotonic``).

    ``tenant`` is the tenant whose token opened it (``None`` when the daemon has no tenants).
    """

    session_id: str
    client_name: str
    client_pid: int
    opened_at_s: float
    tenant: str | None = None
    leases: dict[int, float] = field(default_factory=dict)
    closed: bool = False


class SessionRegistry:
    """Open sessions by id and the owner of each lease taken through one."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._owner_of: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, client_name: str, client_pid: int, tenant: str | None = None) -> Session:
        session_id = secrets.token_hex(SESSION_ID_BYTES)
        session = Session(session_id, client_name, client_pid, time.monotonic(), tenant)
        self._sessions[session_id] = session
        return session

    def close(self, session_id: str) -> Session | None:
        """Forget the session and its leases (the caller releases them in the store)."""
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.closed = True
            for lease_id in session.leases:
                self._owner_of.pop(lease_id, None)
            session.leases.clear()
        return session

    def resolve(self, metadata: Sequence[tuple[str, str | bytes]] | None,
                tenant: str | None = None) -> Session | None:
        """The session named by the call's ``tierd-session`` metadata; ``NotFound`` if it is not
        open, ``PermissionDenied`` if another tenant opened it (``tenant`` None: no tenants)."""
        session_id = next((str(value) for key, value in metadata or () if key == SESSION_METADATA_KEY),
                          None)
        if session_id is None:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFound(f"session {session_id[:8]}... is not open (it ended or never existed): "
                           "open a Session stream and send its id in the tierd-session metadata")
        if tenant is not None and session.tenant != tenant:
            raise PermissionDenied(f"session {session_id[:8]}... was opened by another tenant: "
                                   "open a Session with your own token and send its id")
        return session

    def track(self, session: Session, lease: Lease) -> None:
        session.leases[lease.lease_id] = lease.expires_at_s
        self._owner_of[lease.lease_id] = session.session_id

    def forget(self, lease_id: int) -> None:
        owner = self._owner_of.pop(lease_id, None)
        if owner is not None and owner in self._sessions:
            self._sessions[owner].leases.pop(lease_id, None)

    def check_access(self, lease_id: int, caller: Session | None) -> None:
        """``PermissionDenied`` when another session took ``lease_id``."""
        owner = self._owner_of.get(lease_id)
        if owner is not None and (caller is None or caller.session_id != owner):
            raise PermissionDenied(f"lease {lease_id} belongs to another session: send the "
                                   "tierd-session metadata of the session that took it")

    def prune_expired(self, session: Session, now_s: float) -> int:
        """Drop leases past their expiry from ``session`` (the store expired them); how many."""
        expired = [lease_id for lease_id, expires_s in session.leases.items() if expires_s < now_s]
        for lease_id in expired:
            self.forget(lease_id)
        return len(expired)
