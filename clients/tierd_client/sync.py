"""``TierClient``: the blocking client, a thin wrapper over ``AsyncTierClient``.

It owns one private event loop on a background thread; every grpc.aio object lives on that loop,
and each blocking call submits a coroutine to it and waits. Safe to call from several threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

from tierd.spec import PageSpec
from tierd.tier import Tier
from tierd_client.aio import HEALTH_SERVICE, AsyncTierClient
from tierd_client.arena import ArenaView
from tierd_client.errors import FailedPreconditionError
from tierd_client.leases import AsyncLease
from tierd_client.options import ClientOptions
from tierd_client.types import (
    CommitResult,
    DaemonStats,
    LeaseKind,
    LeaseState,
    LookupResult,
    NamespaceHandle,
    PutResult,
)

T = TypeVar("T")


class _LoopThread:
    """An asyncio loop running forever on a daemon thread (so a forgotten close never hangs exit)."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._stopped = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._stopped:
            coro.close()
            raise FailedPreconditionError("this client is closed; create a new one")
        if threading.current_thread() is self._thread:
            coro.close()
            raise FailedPreconditionError("a TierClient cannot be called from its own loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except (KeyboardInterrupt, concurrent.futures.CancelledError):
            future.cancel()
            raise

    def stop(self) -> None:
        """Stop the loop and join its thread; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class Lease:
    """A lease (READ: pinned pages; FILL: free hbm slots). ``with`` releases it on exit.

    ``keys[i]`` lives in ``slots[i]`` of ``client.arena(ns, lease.tier)``.
    """

    def __init__(self, runner: _LoopThread, inner: AsyncLease) -> None:
        self._runner = runner
        self._inner = inner

    @property
    def state(self) -> LeaseState:
        return self._inner.state

    @property
    def lease_id(self) -> int:
        return self._inner.lease_id

    @property
    def ns(self) -> NamespaceHandle:
        return self._inner.ns

    @property
    def tier(self) -> Tier:
        return self._inner.tier

    @property
    def kind(self) -> LeaseKind:
        return self._inner.kind

    @property
    def keys(self) -> tuple[bytes, ...]:
        return self._inner.keys

    @property
    def slots(self) -> tuple[int, ...]:
        return self._inner.slots

    @property
    def num_pages(self) -> int:
        return self._inner.num_pages

    @property
    def expires_at_s(self) -> float:
        """``time.monotonic()`` value at which the daemon ends the lease unless renewed."""
        return self._inner.expires_at_s

    @property
    def released(self) -> bool:
        return self._inner.released

    def __repr__(self) -> str:
        return repr(self._inner).replace("AsyncLease", "Lease", 1)

    def commit(self, keys: Sequence[bytes], slots: Sequence[int] | None = None, *,
               wait_durable: bool = False, durable_timeout_s: float | None = None) -> CommitResult:
        """Bind filled slots (default: the first ``len(keys)``) to ``keys``; ``wait_durable``:
        answer once they are on disk (write_through daemons)."""
        return self._runner.run(self._inner.commit(keys, slots, wait_durable=wait_durable,
                                                   durable_timeout_s=durable_timeout_s))

    def renew(self, ttl_s: float | None = None) -> None:
        self._runner.run(self._inner.renew(ttl_s))

    def release(self) -> None:
        """End the lease (a second call does nothing)."""
        self._runner.run(self._inner.release())

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._runner.run(self._inner.release_on_exit())


class TierClient:
    """Blocking client of one tierd daemon; use as a context manager.

    ``socket_path``: the daemon's unix socket (default ``$TIERD_SOCKET`` or
    ``/run/tierd/tierd.sock``), ``unix:PATH`` or ``host:port``. Connecting sends nothing; the
    first call retries with backoff while the daemon is unavailable.
    """

    def __init__(self, socket_path: str | os.PathLike[str] | None = None,
                 options: ClientOptions | None = None) -> None:
        self._aclient = AsyncTierClient(socket_path, options)
        self._runner = _LoopThread(name=f"tierd-client-{id(self):x}")
        try:
            self._runner.run(self._aclient.connect())
        except BaseException:
            self._runner.stop()
            raise

    @property
    def target(self) -> str:
        return self._aclient.target

    @property
    def session_id(self) -> str:
        return self._aclient.session_id

    def close(self) -> None:
        """End the session (the daemon frees this client's leases) and stop the loop. Idempotent."""
        try:
            self._runner.run(self._aclient.close())
        except FailedPreconditionError:
            return  # already closed
        finally:
            self._runner.stop()

    def __enter__(self) -> TierClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def register(self, spec: PageSpec, tenant: str = "") -> NamespaceHandle:
        """Register (tenant, spec); idempotent. The handle computes keys: ``ns.keys(token_ids)``."""
        return self._runner.run(self._aclient.register(spec, tenant))

    def lookup(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> int:
        """How many leading ``keys`` are cached."""
        return self._runner.run(self._aclient.lookup(ns, keys))

    def lookup_result(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> LookupResult:
        """The cached prefix length and the tier of each hit."""
        return self._runner.run(self._aclient.lookup_result(ns, keys))

    def put(self, ns: NamespaceHandle, keys: Sequence[bytes], pages: object,
            tier: Tier = Tier.DRAM, wait_durable: bool = False,
            durable_timeout_s: float | None = None) -> PutResult:
        """Store one page per key (``ns.page_bytes`` each; bytes-like, numpy or torch)."""
        return self._runner.run(self._aclient.put(ns, keys, pages, tier, wait_durable,
                                                  durable_timeout_s))

    def get(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> list[bytes]:
        """The pages of the longest cached prefix of ``keys``, in order."""
        return self._runner.run(self._aclient.get(ns, keys))

    def prefetch(self, ns: NamespaceHandle, keys: Sequence[bytes],
                 target_tier: Tier = Tier.HBM) -> int:
        return self._runner.run(self._aclient.prefetch(ns, keys, target_tier))

    def delete(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> int:
        return self._runner.run(self._aclient.delete(ns, keys))

    def wait_durable(self, ticket: int, timeout_s: float | None = None) -> bool:
        return self._runner.run(self._aclient.wait_durable(ticket, timeout_s))

    def arena(self, ns: NamespaceHandle, tier: Tier = Tier.HBM) -> ArenaView:
        """``ns``'s region of ``tier``, mapped into this process (numpy / torch views)."""
        return self._aclient.arena(ns, tier)

    def acquire(self, ns: NamespaceHandle, keys: Sequence[bytes], target_tier: Tier = Tier.HBM,
                timeout_s: float | None = None, ttl_s: float | None = None) -> Lease:
        """READ-lease the longest cached prefix of ``keys``, resident in ``target_tier``."""
        request = self._aclient.acquire(ns, keys, target_tier, timeout_s, ttl_s)
        return Lease(self._runner, self._runner.run(_awaited(request)))

    def allocate(self, ns: NamespaceHandle, num_pages: int, ttl_s: float | None = None) -> Lease:
        """FILL-lease ``num_pages`` free hbm slots; write pages into them, then ``commit``."""
        request = self._aclient.allocate(ns, num_pages, ttl_s)
        return Lease(self._runner, self._runner.run(_awaited(request)))

    def commit(self, lease: Lease, keys: Sequence[bytes], slots: Sequence[int] | None = None, *,
               wait_durable: bool = False, durable_timeout_s: float | None = None) -> CommitResult:
        return lease.commit(keys, slots, wait_durable=wait_durable, durable_timeout_s=durable_timeout_s)

    def renew(self, lease: Lease, ttl_s: float | None = None) -> None:
        lease.renew(ttl_s)

    def release(self, lease: Lease) -> None:
        lease.release()

    def stats(self) -> DaemonStats:
        return self._runner.run(self._aclient.stats())

    def flush(self, timeout_s: float | None = None) -> int:
        return self._runner.run(self._aclient.flush(timeout_s))

    def health(self, service: str = HEALTH_SERVICE, timeout_s: float = 5.0) -> bool:
        return self._runner.run(self._aclient.health(service, timeout_s))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
