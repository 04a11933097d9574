"""Lease objects: a pin on pages (READ) or free hbm slots (FILL), for both clients.

``client.acquire(...)`` gives a ``Lease`` (blocking client) or, awaited, an ``AsyncLease``; ``with``
(``async with``) releases it on exit. A lease ends on release, on a commit with ``release=True``,
on TTL expiry (``expires_at_s``; ``renew`` extends it), or when the client's session ends.
``release_later`` hands the lease back without an RPC of its own: the client's next Acquire
carries its id (``ReleaseQueue``).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tierd.tier import Tier
from tierd_client.convert import now_s
from tierd_client.errors import NotFoundError
from tierd_client.types import CommitResult, LeaseKind, LeaseState, NamespaceHandle

if TYPE_CHECKING:
    from tierd_client.aio import AsyncTierClient
    from tierd_client.sync import TierClient

log = logging.getLogger(__name__)

# Released leases waiting for the next Acquire; beyond this many, release_later sends a Release.
MAX_QUEUED_RELEASES = 64


class ReleaseQueue:
    """``(session_id, lease_id)`` of leases released client-side, for the next Acquire to carry.

    A queued lease on a CUDA region this process maps also names its device: whoever sends its
    release first synchronizes that device (``devices_for``), so the worker's kernels reading its
    slots are done before the daemon may reuse them. Thread-safe; ``take`` on an empty queue (the
    common case) takes no lock.
    """

    def __init__(self, bound: int = MAX_QUEUED_RELEASES) -> None:
        self._bound = bound
        self._items: deque[tuple[str, int]] = deque()
        self._devices: dict[tuple[str, int], frozenset[int]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, session_id: str, lease_id: int) -> bool:
        """Queue one; ``False`` (nothing queued) when the queue is full."""
        with self._lock:
            if len(self._items) >= self._bound:
                return False
            self._items.append((session_id, lease_id))
            return True

    def remember_devices(self, session_id: str, lease_id: int, devices: frozenset[int]) -> None:
        """The devices to synchronize before that lease's queued release is sent (called before
        ``offer``; a full queue sends the release at once, still through ``devices_for``)."""
        if devices:
            with self._lock:
                self._devices[(session_id, lease_id)] = devices

    def devices_for(self, items: Sequence[tuple[str, int]]) -> frozenset[int]:
        """The devices to synchronize before ``items``' releases are sent (each named once: a
        sync covers every kernel queued before it)."""
        if not self._devices:
            return frozenset()
        with self._lock:
            found = [self._devices.pop(item, frozenset()) for item in items]
        return frozenset().union(*found)

    def take(self, limit: int | None = None,
             is_open: Callable[[str], bool] | None = None) -> list[tuple[str, int]]:
        """Remove and return up to ``limit`` (default: all), oldest first; those of sessions that
        are no longer open (``is_open``) are dropped: their leases ended with the session."""
        if not self._items:
            return []
        with self._lock:
            count = len(self._items) if limit is None else min(limit, len(self._items))
            items = [self._items.popleft() for _ in range(count)]
        if is_open is None:
            return items
        kept = [item for item in items if is_open(item[0])]
        if len(kept) < len(items) and self._devices:
            with self._lock:  # leases of ended sessions are never sent: forget their devices
                for item in set(items) - set(kept):
                    self._devices.pop(item, None)
        return kept

    def put_back(self, items: Sequence[tuple[str, int]]) -> None:
        """Return ``items`` (taken by ``take``) to the front of the queue."""
        with self._lock:
            self._items.extendleft(reversed(items))


class _LeaseBase:
    """What both lease classes show. ``keys[i]`` lives in ``slots[i]`` of ``tier``'s region."""

    def __init__(self, ns: NamespaceHandle, state: LeaseState, session_id: str) -> None:
        self.ns = ns
        self._state = state
        self._session_id = session_id  # the session the lease was granted in
        self._released = state.lease_id == 0  # a READ lease over 0 pages holds nothing

    @property
    def state(self) -> LeaseState:
        return self._state

    @property
    def lease_id(self) -> int:
        return self._state.lease_id

    @property
    def tier(self) -> Tier:
        return self._state.tier

    @property
    def kind(self) -> LeaseKind:
        return self._state.kind

    @property
    def keys(self) -> tuple[bytes, ...]:
        return self._state.keys

    @property
    def slots(self) -> tuple[int, ...]:
        return self._state.slots

    @property
    def page_indices(self) -> tuple[int, ...]:
        """READ leases: ``keys[i]`` is requested key ``page_indices[i]``. ``0, 1, ...`` unless
        the namespace has a window: then only the pages a continuation attends to."""
        return self._state.page_indices

    @property
    def prefix_pages(self) -> int:
        """READ leases: how many leading requested keys are served (a continuation starts after
        them); ``len(keys)`` unless the namespace has a window."""
        return self._state.prefix_pages

    @property
    def num_pages(self) -> int:
        """Pages (READ) or slots (FILL) the lease covers."""
        return len(self._state.slots)

    @property
    def expires_at_s(self) -> float:
        """``time.monotonic()`` value at which the daemon ends the lease unless renewed."""
        return self._state.expires_at_s

    @property
    def released(self) -> bool:
        return self._released

    @property
    def session_id(self) -> str:
        """The session the lease was granted in (its id names it there only)."""
        return self._session_id

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(id={self.lease_id}, ns={self.ns.ns_id}, {self.kind.value}, "
                f"{self.tier.label}, pages={self.num_pages}, released={self._released})")

    def _mark_released(self) -> None:
        self._released = True

    def _gone_at_exit(self, exc: NotFoundError) -> None:
        """A ``with`` block ended on a lease that had already ended: logged, not raised."""
        self._released = True
        late = now_s() >= self.expires_at_s
        log.warning("lease %d had already ended when its block exited (%s): %s", self.lease_id,
                    "its TTL had run out; renew() long holds" if late else "session ended",
                    exc.details)


class AsyncLease(_LeaseBase):
    """A lease granted by the daemon to an ``AsyncTierClient``."""

    def __init__(self, client: AsyncTierClient, ns: NamespaceHandle, state: LeaseState,
                 session_id: str = "") -> None:
        super().__init__(ns, state, session_id)
        self._client = client

    async def commit(self, keys: Sequence[bytes], slots: Sequence[int] | None = None, *,
                     wait_durable: bool = False, durable_timeout_s: float | None = None,
                     release: bool = False, parent: bytes | None = None) -> CommitResult:
        """Bind filled slots (default: the first ``len(keys)`` of this FILL lease) to ``keys``;
        ``wait_durable``: answer once they are on disk (write_through daemons); ``release``: the
        daemon ends the lease once they are bound (its other slots go back), saving a Release;
        ``parent``: the key of the page before ``keys[0]``."""
        return await self._client.commit(self, keys, slots, wait_durable=wait_durable,
                                         durable_timeout_s=durable_timeout_s, release=release,
                                         parent=parent)

    async def renew(self, ttl_s: float | None = None) -> None:
        """Extend the lease by ``ttl_s`` (default: the daemon's lease TTL) from now."""
        self._state = await self._client.renew_state(self._state.lease_id, ttl_s)

    async def release(self) -> None:
        """End the lease; a second call does nothing. ``NotFoundError`` if it had already ended."""
        if self._released:
            return
        await self._client.release_lease(self)
        self._released = True

    async def release_later(self) -> None:
        """Mark the lease released now and let the client's next Acquire end it on the daemon
        (no Release RPC of its own). Its pages stay pinned until that Acquire, ``close()`` or the
        session's end; with 64 leases already waiting, it is released at once instead."""
        if self._released:
            return
        self._released = True
        await self._client.release_later_lease(self)

    async def release_on_exit(self) -> None:
        """Release at the end of a ``with`` block: a lease already ended there is only logged."""
        try:
            await self.release()
        except NotFoundError as exc:
            self._gone_at_exit(exc)

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.release_on_exit()


class Lease(_LeaseBase):
    """A lease (READ: pinned pages; FILL: free hbm slots). ``with`` releases it on exit.

    ``keys[i]`` lives in ``slots[i]`` of ``client.arena(ns, lease.tier)``.
    """

    def __init__(self, client: TierClient, ns: NamespaceHandle, state: LeaseState,
                 session_id: str = "") -> None:
        super().__init__(ns, state, session_id)
        self._client = client

    def commit(self, keys: Sequence[bytes], slots: Sequence[int] | None = None, *,
               wait_durable: bool = False, durable_timeout_s: float | None = None,
               release: bool = False, parent: bytes | None = None) -> CommitResult:
        """Bind filled slots (default: the first ``len(keys)``) to ``keys``; ``wait_durable``:
        answer once they are on disk (write_through daemons); ``release``: the daemon ends the
        lease once they are bound (its other slots go back), saving a Release RPC; ``parent``:
        the key of the page before ``keys[0]``."""
        return self._client.commit(self, keys, slots, wait_durable=wait_durable,
                                   durable_timeout_s=durable_timeout_s, release=release,
                                   parent=parent)

    def renew(self, ttl_s: float | None = None) -> None:
        """Extend the lease by ``ttl_s`` (default: the daemon's lease TTL) from now."""
        self._state = self._client._renew_state(self._state.lease_id, ttl_s)

    def release(self) -> None:
        """End the lease (a second call does nothing)."""
        if self._released:
            return
        self._client._release_lease(self)
        self._released = True

    def release_later(self) -> None:
        """Mark the lease released now and let the client's next Acquire end it on the daemon
        (no Release RPC of its own). Its pages stay pinned until that Acquire, ``close()`` or the
        session's end; with 64 leases already waiting, it is released at once instead."""
        if self._released:
            return
        self._released = True
        self._client._release_later_lease(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.release()
        except NotFoundError as exc_gone:
            self._gone_at_exit(exc_gone)


class LeaseRequest:
    """``await`` it for the lease, or use it as ``async with`` to release on exit."""

    def __init__(self, start: Callable[[], Awaitable[AsyncLease]]) -> None:
        self._start = start
        self._lease: AsyncLease | None = None

    def __await__(self) -> Generator[Any, None, AsyncLease]:
        return self._start().__await__()

    async def __aenter__(self) -> AsyncLease:
        self._lease = await self._start()
        return self._lease

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._lease is not None:
            await self._lease.release_on_exit()
