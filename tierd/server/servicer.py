"""The ``tierd.v1.Tierd`` servicer: each RPC validated, then mapped onto the page store.

Runs on the server's one event loop. Store calls that never wait (bookkeeping under the store
manager's lock, microseconds: Lookup, Release, Renew, Delete, Stats, a write_back Commit, the
durability check, Allocate of free slots, Acquire of pages in the target tier already) run on the
loop itself, where a hop to a thread would cost more than the call. What may wait (page copies,
disk I/O, eviction, promotion, condition variables) goes through a bounded thread pool (quick
calls and waiting calls have separate pools, so waiters cannot starve lookups), and so does a
call over more than ``INLINE_MAX_KEYS`` keys, whose lock hold would stall the loop. Requests are
checked before the store sees them, so a rejected request changes no state. At most
``max_inflight_rpcs`` RPCs run at once (``Session`` streams excepted); more get RESOURCE_EXHAUSTED
at once instead of queueing. With tenants configured, every RPC first authenticates its caller
(``tierd.server.auth``) and may only touch its own tenant's namespaces and leases.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc

from tierd import wire
from tierd.errors import InvalidArgument, ResourceExhausted, TierdError, Unauthenticated, Unavailable
from tierd.server import convert
from tierd.server.auth import Authenticator, Caller
from tierd.server.bytepath import PutMessage
from tierd.server.bytepath_rpc import BytePath
from tierd.server.lease_access import LeaseAccess
from tierd.server.metrics import ServerCounters
from tierd.server.sessions import Session as ClientSession
from tierd.server.sessions import SessionRegistry, new_run_epoch
from tierd.server.settings import ServingSettings
from tierd.server.status import status_code_of
from tierd.store import PageStore
from tierd.tier import MEMORY_TIERS, Tier
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc
from tierd.values import Lease

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
# Client-chosen names only ever reach logs; cap them so a client cannot flood the journal.
MAX_CLIENT_NAME_CHARS = 128
# A store call that never waits runs on the loop up to this many keys (well under a millisecond
# of lock hold); a bigger one goes to the pool, so one request cannot stall every other.
INLINE_MAX_KEYS = 1024

R = TypeVar("R")


def _rpc(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Authentication, admission (in-flight cap, shutdown) and error mapping around one RPC
    handler; the handler gets the authenticated ``Caller`` as its third argument."""

    @functools.wraps(method)
    async def handler(self: TierdServicer, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            caller = self._auth.caller(context.invocation_metadata())
            with self._admit():
                return await method(self, request, context, caller)
        except Unauthenticated as exc:
            code, details = grpc.StatusCode.UNAUTHENTICATED, str(exc)
            log.info("%s from %s refused: %s", method.__name__, context.peer(), details)
        except TierdError as exc:
            code, details = status_code_of(exc), str(exc)
            log.debug("%s rejected: %s: %s", method.__name__, code.name, details)
        except grpc.aio.AbortError:
            raise
        except Exception:  # the RPC boundary: a bug must not take the daemon down
            log.exception("%s failed", method.__name__)
            code = grpc.StatusCode.INTERNAL
            details = f"internal error in {method.__name__}; the daemon log has the traceback"
        await context.abort(code, details)
        raise AssertionError("unreachable: context.abort raises")

    return handler


class TierdServicer(pb_grpc.TierdServicer):
    """Serves one ``PageStore``. The store is opened and closed by the caller, not here.

    Owns its two thread pools (``close`` shuts them down), the session registry and, with
    tenants, the tenant of every lease it hands out. ``epoch``: 16 random bytes naming this
    servicer's run (one per daemon start), put on every region handle and session event, so a
    worker tells a restarted daemon's regions from the dead one's (CUDA mappings cannot ``stat``).
    """

    def __init__(self, store: PageStore, settings: ServingSettings) -> None:
        self._store = store
        self._settings = settings
        self._epoch = new_run_epoch()
        self._auth = Authenticator(settings.tenant_tokens)
        self._limits = pb.ServerLimits(
            max_message_bytes=settings.max_message_bytes, chunk_bytes=settings.chunk_bytes,
            max_put_bytes=settings.max_put_bytes, max_get_bytes=settings.max_get_bytes,
            max_keys_per_request=settings.max_keys_per_request)
        self._sessions = SessionRegistry()
        self._leases = LeaseAccess(store, self._sessions, settings.max_keys_per_request)
        self._pool = cf.ThreadPoolExecutor(settings.rpc_threads, thread_name_prefix="tierd-rpc")
        self._wait_pool = cf.ThreadPoolExecutor(settings.wait_threads, thread_name_prefix="tierd-wait")
        self._bytes = BytePath(store, settings, self._pool)
        self._in_flight = 0
        self._rejected = 0
        self._closing = False
        self._closed = False
        self._shutdown = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._background: set[asyncio.Task[None]] = set()

    # -- life cycle -----------------------------------------------------------------------------------
    @property
    def epoch(self) -> bytes:
        """This run's 16 random bytes (``RegionHandle.epoch``, ``server_epoch``)."""
        return self._epoch

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def num_sessions(self) -> int:
        return len(self._sessions)

    def counters(self) -> ServerCounters:
        """The RPC side's numbers, for Stats and the metrics endpoint (call on the loop)."""
        return ServerCounters(sessions=len(self._sessions), rpcs_in_flight=self._in_flight,
                              rpcs_rejected=self._rejected, version=self._settings.version,
                              device=self._settings.device)

    def begin_shutdown(self) -> None:
        """New RPCs get UNAVAILABLE from now on; Session streams end (freeing their leases)."""
        self._closing = True
        self._shutdown.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no RPC is in flight and session leases are released; ``False`` on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
                while self._background:
                    await asyncio.gather(*self._background, return_exceptions=True)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Stop the thread pools (running store calls finish on their own). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.begin_shutdown()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._wait_pool.shutdown(wait=False, cancel_futures=True)

    @contextlib.contextmanager
    def _admit(self) -> Iterator[None]:
        if self._closing:
            raise Unavailable("tierd is shutting down: retry against the restarted daemon")
        cap = self._settings.max_inflight_rpcs
        if self._in_flight >= cap:
            self._rejected += 1
            raise ResourceExhausted(f"{cap} RPCs are already in flight (the daemon's "
                                    "server.max_inflight_rpcs): retry with backoff")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _call(self, fn: Callable[..., R], *args: Any, wait: bool = False, **kwargs: Any) -> R:
        """``fn(*args, **kwargs)`` on a pool thread; ``wait`` picks the pool of calls that wait."""
        pool = self._wait_pool if wait else self._pool
        return await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(fn, *args, **kwargs))

    async def _quick(self, num_keys: int, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """A store call that never waits: on the loop, or on the pool over many keys."""
        if num_keys <= INLINE_MAX_KEYS:
            return fn(*args, **kwargs)
        return await self._call(fn, *args, **kwargs)

    async def _lease_call(self, fn: Callable[..., Lease], *args: Any, **kwargs: Any) -> Lease:
        """Like ``_call`` for a call that makes a lease: if the RPC is cancelled meanwhile, the
        lease it makes is released (nobody would ever learn its id)."""
        future = asyncio.get_running_loop().run_in_executor(
            self._wait_pool, functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._release_orphan)
            raise

    def _release_orphan(self, future: asyncio.Future[Lease]) -> None:
        """A done callback: runs on the loop."""
        if future.cancelled() or future.exception() is not None:
            return
        self._leases.release_quietly(future.result().lease_id, "its RPC was cancelled")

    def _spawn(self, coro: Awaitable[None]) -> None:
        """Run ``coro`` as a task the servicer keeps until it ends (and waits for on shutdown)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # -- helpers ---------------------------------------------------------------------------------------
    def _keys(self, keys: Any, field: str = "keys") -> list[bytes]:
        return convert.keys_from_pb(keys, self._settings.max_keys_per_request, field)

    def _session(self, context: grpc.aio.ServicerContext, caller: Caller) -> ClientSession | None:
        return self._sessions.resolve(context.invocation_metadata(), caller.tenant)

    def _check_namespace(self, ns_id: int, caller: Caller) -> None:
        """With tenants: ``NotFound`` / ``PermissionDenied`` unless ``ns_id`` is the caller's."""
        if caller.tenant is not None:
            # A dict lookup without the store lock: fine on the event loop.
            caller.check_namespace(self._store.namespace(ns_id))

    @staticmethod
    def _wait_s(requested_s: float | None, context: grpc.aio.ServicerContext) -> float | None:
        """The shorter of the requested wait and the RPC's remaining deadline (``None``: neither)."""
        remaining: float | None = context.time_remaining()
        remaining_s = remaining
        if remaining_s is None:
            return requested_s
        return remaining_s if requested_s is None else min(requested_s, remaining_s)

    # -- control plane -------------------------------------------------------------------------------
    @_rpc
    async def Register(self, request: pb.RegisterRequest, context: Any,
                       caller: Caller) -> pb.RegisterResponse:
        spec, requested = convert.register_from_pb(request)
        tenant = caller.register_tenant(requested, DEFAULT_TENANT)
        ns = await self._call(self._store.register, spec, tenant)
        handles = await self._call(self._store.region_handles, ns.ns_id)
        response = convert.register_to_pb(ns, handles, self._limits,
                                          self._settings.advertised_region_socket, epoch=self._epoch)
        response.page_socket = self._settings.advertised_page_socket
        response.server_epoch = self._epoch
        return response

    @_rpc
    async def Lookup(self, request: pb.LookupRequest, context: Any,
                     caller: Caller) -> pb.LookupResponse:
        self._check_namespace(request.ns_id, caller)
        keys = self._keys(request.keys)
        result = None
        if len(keys) <= INLINE_MAX_KEYS:  # all local (or no remote tier): no wait
            result = self._store.try_lookup(request.ns_id, keys)
        if result is None:
            result = await self._call(self._store.lookup, request.ns_id, keys, wait=True)
        return pb.LookupResponse(num_hits=result.num_hits,
                                 tiers=[wire.tier_to_pb(t) for t in result.tiers])

    @_rpc
    async def Prefetch(self, request: pb.PrefetchRequest, context: Any,
                       caller: Caller) -> pb.PrefetchResponse:
        self._check_namespace(request.ns_id, caller)
        keys = self._keys(request.keys)
        target = convert.tier_from_pb(request.target_tier, Tier.HBM, "target_tier", MEMORY_TIERS)
        num = await self._call(self._store.prefetch, request.ns_id, keys, target)
        return pb.PrefetchResponse(num_scheduled=num)

    @_rpc
    async def Acquire(self, request: pb.AcquireRequest, context: Any,
                      caller: Caller) -> pb.AcquireResponse:
        self._check_namespace(request.ns_id, caller)
        session = self._session(context, caller)
        keys = self._keys(request.keys)
        target = convert.tier_from_pb(request.target_tier, Tier.HBM, "target_tier", MEMORY_TIERS)
        ttl_s = convert.seconds_from_pb(request, "ttl_s")
        wait_s = self._wait_s(convert.seconds_from_pb(request, "timeout_s", allow_zero=True), context)
        release = self._leases.releasable(request.release_lease_ids, caller, session)
        owner = session.session_id if session else None
        try:
            lease = None
            if len(keys) + len(release) <= INLINE_MAX_KEYS:  # pages in the tier already: no wait
                lease = self._store.try_acquire(request.ns_id, keys, target, ttl_s=ttl_s,
                                                owner=owner, release=release)
            if lease is None:
                lease = await self._lease_call(self._store.acquire, request.ns_id, keys, target,
                                               timeout_s=wait_s, ttl_s=ttl_s, owner=owner,
                                               release=release)
        finally:
            self._leases.forget_ended(release)
        lease = self._leases.adopt(session, lease)
        return pb.AcquireResponse(lease=convert.lease_to_pb(lease))

    @_rpc
    async def Allocate(self, request: pb.AllocateRequest, context: Any,
                       caller: Caller) -> pb.AllocateResponse:
        self._check_namespace(request.ns_id, caller)
        session = self._session(context, caller)
        if not 0 < request.num_pages <= self._settings.max_keys_per_request:
            raise InvalidArgument(f"num_pages must be in 1..{self._settings.max_keys_per_request}, "
                                  f"got {request.num_pages}")
        ttl_s = convert.seconds_from_pb(request, "ttl_s")
        tier = convert.tier_from_pb(request.tier, Tier.HBM, "tier", MEMORY_TIERS)
        owner = session.session_id if session else None
        lease = None
        if request.num_pages <= INLINE_MAX_KEYS:  # free slots now: no eviction to wait for
            lease = self._store.try_allocate(request.ns_id, request.num_pages, ttl_s=ttl_s, owner=owner,
                                             tier=tier)
        if lease is None:
            lease = await self._lease_call(self._store.allocate, request.ns_id, request.num_pages,
                                           ttl_s=ttl_s, owner=owner, tier=tier)
        lease = self._leases.adopt(session, lease)
        return pb.AllocateResponse(lease=convert.lease_to_pb(lease))

    @_rpc
    async def Commit(self, request: pb.CommitRequest, context: Any,
                     caller: Caller) -> pb.CommitResponse:
        self._leases.check(request.lease_id, caller, self._session(context, caller))
        keys = self._keys(request.keys)
        if len(keys) != len(request.slots):
            raise InvalidArgument(f"Commit got {len(keys)} keys but {len(request.slots)} slots; "
                                  "give one slot per key")
        durable_timeout_s = convert.seconds_from_pb(request, "durable_timeout_s", allow_zero=True)
        parent = convert.parent_from_pb(request)
        slots, release = list(request.slots), request.release_lease
        result = None
        if len(keys) <= INLINE_MAX_KEYS:  # write_back: binds slots, queues nothing
            result = self._store.try_commit(request.lease_id, keys, slots, release=release,
                                            parent=parent)
        if result is None:
            result = await self._call(self._store.commit, request.lease_id, keys, slots,
                                      release=release, parent=parent)
        if release:
            self._leases.forget(request.lease_id)
        response = pb.CommitResponse(num_committed=result.committed)
        if result.durable_ticket is not None:
            response.durable_ticket = result.durable_ticket
            if request.wait_durable:
                response.durable = await self._wait_durable(result.durable_ticket, durable_timeout_s, context)
        return response

    @_rpc
    async def Release(self, request: pb.ReleaseRequest, context: Any,
                      caller: Caller) -> pb.ReleaseResponse:
        self._leases.check(request.lease_id, caller, self._session(context, caller))
        self._store.release(request.lease_id)
        self._leases.forget(request.lease_id)
        return pb.ReleaseResponse()

    @_rpc
    async def Renew(self, request: pb.RenewRequest, context: Any,
                    caller: Caller) -> pb.RenewResponse:
        session = self._session(context, caller)
        self._leases.check(request.lease_id, caller, session)
        ttl_s = convert.seconds_from_pb(request, "ttl_s")
        lease = self._store.renew(request.lease_id, ttl_s)
        if session is not None and lease.owner == session.session_id:
            self._sessions.track(session, lease)  # its new expiry
        return pb.RenewResponse(lease=convert.lease_to_pb(lease))

    @_rpc
    async def Delete(self, request: pb.DeleteRequest, context: Any,
                     caller: Caller) -> pb.DeleteResponse:
        self._check_namespace(request.ns_id, caller)
        keys = self._keys(request.keys)
        num = await self._quick(len(keys), self._store.delete, request.ns_id, keys)
        return pb.DeleteResponse(num_deleted=num)

    # Stats and Flush are daemon-wide: any authenticated tenant may call them.
    @_rpc
    async def Stats(self, request: pb.StatsRequest, context: Any,
                    caller: Caller) -> pb.StatsResponse:
        stats = self._store.stats()
        return convert.stats_to_pb(stats, self.counters())

    @_rpc
    async def WaitDurable(self, request: pb.WaitDurableRequest, context: Any,
                          caller: Caller) -> pb.WaitDurableResponse:
        timeout_s = convert.seconds_from_pb(request, "timeout_s", allow_zero=True)
        if caller.tenant is not None:  # open mode: no owner lookup needed
            ns_id = self._store.ticket_namespace(request.ticket)
            caller.check_ticket(request.ticket, None if ns_id is None else self._store.namespace(ns_id))
        return pb.WaitDurableResponse(durable=await self._wait_durable(request.ticket, timeout_s, context))

    async def _wait_durable(self, ticket: int, timeout_s: float | None, context: Any) -> bool:
        """Whether ``ticket``'s pages are on disk: checked on the loop, waited for (within the
        deadline) on the blocking pool only while writes are still queued."""
        done = self._store.try_wait_durable(ticket)
        if done is not None:
            return done
        wait_s = self._wait_s(timeout_s, context)
        if wait_s is not None and wait_s <= 0:
            return False
        return await self._call(self._store.wait_durable, ticket, wait_s, wait=True)

    @_rpc
    async def Flush(self, request: pb.FlushRequest, context: Any,
                    caller: Caller) -> pb.FlushResponse:
        requested_s = convert.seconds_from_pb(request, "timeout_s", allow_zero=True)
        wait_s = self._wait_s(requested_s if requested_s is not None
                              else self._settings.flush_timeout_s, context)
        num = await self._call(self._store.flush, wait_s, wait=True)
        return pb.FlushResponse(num_flushed=num)

    # -- byte path -------------------------------------------------------------------------------------
    @_rpc
    async def PutPages(self, request_iterator: AsyncIterator[PutMessage],
                       context: Any, caller: Caller) -> pb.PutPagesResponse:
        header, result = await self._bytes.put(request_iterator, caller)
        response = pb.PutPagesResponse(num_stored=result.stored, num_skipped=result.skipped)
        if result.durable_ticket is not None:
            response.durable_ticket = result.durable_ticket
            if header.wait_durable:
                timeout_s = convert.seconds_from_pb(header, "durable_timeout_s", allow_zero=True)
                response.durable = await self._wait_durable(result.durable_ticket, timeout_s, context)
        return response

    @_rpc
    async def GetPages(self, request: pb.GetPagesRequest, context: Any, caller: Caller) -> None:
        # Messages serialized already (tierd.server.bytepath): the first carries the counts.
        for message in await self._bytes.get(request, caller):
            await context.write(message)

    # -- sessions ----------------------------------------------------------------------------------------
    async def Session(self, request: pb.SessionRequest, context: Any) -> None:
        """Open a session and hold it until the client goes away or the daemon stops."""
        try:
            caller = self._auth.caller(context.invocation_metadata())
        except Unauthenticated as exc:
            log.info("Session from %s refused: %s", context.peer(), exc)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise AssertionError("unreachable: context.abort raises") from exc
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "tierd is shutting down: retry "
                                "against the restarted daemon")
        if len(self._sessions) >= self._settings.max_sessions:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self._settings.max_sessions} sessions are open (the daemon's "
                                "server.max_sessions): open one session per process and share it")
        session = self._sessions.open(request.client_name[:MAX_CLIENT_NAME_CHARS], request.client_pid,
                                      caller.tenant)
        log.info("session %s opened by %r (pid %d%s)", session.session_id[:8], session.client_name,
                 session.client_pid, f", tenant {caller.tenant!r}" if caller.tenant else "")
        interval_s = self._settings.session_heartbeat_s
        try:
            await context.write(pb.SessionEvent(session_id=session.session_id,
                                                heartbeat_interval_s=interval_s, limits=self._limits,
                                                server_epoch=self._epoch))
            seq = 0
            while not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._shutdown.wait(), interval_s)
                    break
                seq += 1
                self._sessions.prune_expired(session, time.monotonic())
                await context.write(pb.SessionEvent(session_id=session.session_id,
                                                    heartbeat_interval_s=interval_s, heartbeat_seq=seq,
                                                    server_epoch=self._epoch))
        finally:
            self._end_session(session)

    def _end_session(self, session: ClientSession) -> None:
        self._sessions.close(session.session_id)
        self._spawn(self._release_session(session))

    async def _release_session(self, session: ClientSession) -> None:
        try:
            num = await self._call(self._store.release_owner, session.session_id)
        except TierdError as exc:
            log.warning("could not release the leases of session %s: %s", session.session_id[:8], exc)
            return
        log.info("session %s of %r (pid %d) ended; released %d lease(s)", session.session_id[:8],
                 session.client_name, session.client_pid, num)
