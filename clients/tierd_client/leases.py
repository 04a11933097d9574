"""Lease objects of the async client: a pin on pages (READ) or free hbm slots (FILL).

``await client.acquire(...)`` gives an ``AsyncLease``; ``async with client.acquire(...) as lease``
releases it on exit. A lease ends on release, on TTL expiry (``expires_at_s``; ``renew`` extends
it), or when the client's session ends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Generator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tierd.tier import Tier
from tierd_client.convert import now_s
from tierd_client.errors import NotFoundError
from tierd_client.types import CommitResult, LeaseKind, LeaseState, NamespaceHandle

if TYPE_CHECKING:
    from tierd_client.aio import AsyncTierClient

log = logging.getLogger(__name__)


class AsyncLease:
    """A lease granted by the daemon. ``keys[i]`` lives in ``slots[i]`` of ``tier``'s region."""

    def __init__(self, client: AsyncTierClient, ns: NamespaceHandle, state: LeaseState) -> None:
        self._client = client
        self.ns = ns
        self._state = state
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

    def __repr__(self) -> str:
        return (f"AsyncLease(id={self.lease_id}, ns={self.ns.ns_id}, {self.kind.value}, "
                f"{self.tier.label}, pages={self.num_pages}, released={self._released})")

    async def commit(self, keys: Sequence[bytes], slots: Sequence[int] | None = None, *,
                     wait_durable: bool = False, durable_timeout_s: float | None = None) -> CommitResult:
        """Bind filled slots (default: the first ``len(keys)`` of this FILL lease) to ``keys``;
        ``wait_durable``: answer once they are on disk (write_through daemons)."""
        return await self._client.commit(self, keys, slots, wait_durable=wait_durable,
                                         durable_timeout_s=durable_timeout_s)

    async def renew(self, ttl_s: float | None = None) -> None:
        """Extend the lease by ``ttl_s`` (default: the daemon's lease TTL) from now."""
        self._state = await self._client.renew_state(self._state.lease_id, ttl_s)

    async def release(self) -> None:
        """End the lease; a second call does nothing. ``NotFoundError`` if it had already ended."""
        if self._released:
            return
        await self._client.release_id(self._state.lease_id)
        self._released = True

    async def release_on_exit(self) -> None:
        """Release at the end of a ``with`` block: a lease already ended there is only logged."""
        try:
            await self.release()
        except NotFoundError as exc:
            self._released = True
            late = now_s() >= self.expires_at_s
            log.warning("lease %d had already ended when its block exited (%s): %s", self.lease_id,
                        "its TTL had run out; renew() long holds" if late else "session ended",
                        exc.details)

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.release_on_exit()


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
