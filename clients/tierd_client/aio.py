"""``AsyncTierClient``: the grpc.aio client of tierd, for workers that run an event loop.

All of its objects belong to the event loop that called ``connect`` (grpc.aio objects cannot move
between loops); ``TierClient`` is the blocking client. Pages are checked client-side (size,
count, key length) before anything is sent. What a call sends and makes of the answers is
``requests``' (shared with ``TierClient``); this module only moves it.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc

from tierd.spec import PageSpec
from tierd.tier import Tier
from tierd.v1 import tierd_pb2_grpc as pb_grpc
from tierd_client import cuda_ipc, local_steps, page_socket, requests
from tierd_client.base import ClientBase, client_name, open_channel
from tierd_client.errors import FailedPreconditionError, from_grpc
from tierd_client.leases import AsyncLease, LeaseRequest
from tierd_client.options import ClientOptions
from tierd_client.requests import ACQUIRE_DEADLINE_SLACK_S, FLUSH_DEADLINE_S, HEALTH_SERVICE, Call, Steps
from tierd_client.rpc import RpcRunner
from tierd_client.session import ClientSession, session_lost
from tierd_client.transfer import PageAssembler
from tierd_client.types import CommitResult, DaemonStats, LeaseState, LookupResult, NamespaceHandle, PutResult
from tierd_client.wire_pages import get_pages_callable

__all__ = ["ACQUIRE_DEADLINE_SLACK_S", "FLUSH_DEADLINE_S", "HEALTH_SERVICE", "AsyncTierClient"]

T = TypeVar("T")


async def _synchronize(devices: frozenset[int]) -> None:
    """``cuda_ipc.synchronize`` in a thread (it blocks until the device is idle); nothing to do,
    and no cupy import, for an empty set."""
    if devices:
        await asyncio.to_thread(cuda_ipc.synchronize, devices)


@dataclass(frozen=True)
class _Connection:
    """The grpc.aio objects of one connected client (all bound to its event loop)."""

    channel: grpc.aio.Channel
    stub: pb_grpc.TierdStub
    get_pages: Any  # GetPages with the response deserializer of tierd_client.wire_pages
    runner: RpcRunner
    session: ClientSession


class AsyncTierClient(ClientBase):
    """Client of one tierd daemon. ``target``: socket path, ``unix:PATH`` or ``host:port``."""

    def __init__(self, target: str | os.PathLike[str] | None = None,
                 options: ClientOptions | None = None) -> None:
        super().__init__(target, options)
        self._conn: _Connection | None = None

    # -- life cycle ------------------------------------------------------------------------
    async def connect(self) -> None:
        """Create the channel (no RPC yet; the daemon may start later). Idempotent."""
        self._check_open()
        if self._conn is not None:
            return
        channel = open_channel(grpc.aio, self.target, self.options)
        stub = pb_grpc.TierdStub(channel)  # type: ignore[no-untyped-call]
        runner = RpcRunner(self.target, self.options.retry, self.options.max_inflight_rpcs)
        # The session stream lives as long as the client: it takes no in-flight slot (opening it
        # from inside a limited call must not wait for a slot that call holds).
        session = ClientSession(lambda request: stub.Session(request, metadata=self._metadata),
                                client_name(self.options), functools.partial(runner.call, limited=False),
                                on_epoch=self._on_server_epoch)
        self._conn = _Connection(channel=channel, stub=stub, get_pages=get_pages_callable(channel),
                                 runner=runner, session=session)

    async def close(self) -> None:
        """End the session (the daemon frees its leases), unmap arenas, close the channel."""
        if self._closed:
            return
        conn = self._conn
        try:
            # The session's end releases every lease: this process's kernels go first.
            await _synchronize(self._view_devices())
            if conn is not None:
                await self._run(requests.release_all_steps(self._releases.take(), conn.session.is_open))
        finally:
            self._closed = True
            self._conn = None
            if conn is not None:
                await conn.session.close()
            self._close_arenas()
            if conn is not None:
                await conn.channel.close()

    async def __aenter__(self) -> AsyncTierClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- transport -------------------------------------------------------------------------
    def _ready(self) -> _Connection:
        self._check_open()
        if self._conn is None:
            raise FailedPreconditionError("call connect() (or use `async with`) before any RPC")
        return self._conn

    async def _run(self, steps: Steps[T]) -> T:
        return await requests.run_steps_async(steps, self._send)

    async def _send(self, call: Call) -> Any:
        """Run one ``call`` (retried on UNAVAILABLE); its answer for the steps."""
        conn = self._ready()
        await _synchronize(self.handback_devices(call))  # queued releases of CUDA slots
        timeout = call.timeout_s or self.options.rpc_timeout_s
        page = self.page_request(call)
        if page is not None:
            answer = await page_socket.run_async(self._page_sockets, page)
            if answer is not None:
                return answer
        if call.rpc == "PutPages":
            return await conn.runner.call(call.rpc, lambda: conn.stub.PutPages(
                call.request.messages(), timeout=timeout, metadata=self._metadata))
        if call.rpc == "GetPages":
            return await conn.runner.call(call.rpc, lambda: self._get_pages(conn, call, timeout))
        method = getattr(conn.stub, call.rpc)
        if not call.session:
            return await conn.runner.call(call.rpc, lambda: method(call.request, timeout=timeout,
                                                                   metadata=self._metadata))
        return await conn.runner.call(call.rpc,
                                      lambda: self._session_attempt(conn, method, call, timeout))

    async def _session_attempt(self, conn: _Connection, method: Any, call: Call,
                               timeout: float) -> tuple[Any, str]:
        session_metadata = await conn.session.metadata()
        session_id = session_metadata[0][1]
        request = requests.request_for_session(call, session_id)
        try:
            response = await method(request, timeout=timeout,
                                    metadata=self._metadata + session_metadata)
        except grpc.RpcError as exc:
            lost = session_lost(exc, conn.session.is_open(session_id), call.rpc)
            if lost is not None:
                raise lost from None
            raise
        return response, session_id

    async def _get_pages(self, conn: _Connection, call: Call, timeout: float) -> list[bytes]:
        """One GetPages call, its stream reassembled into pages."""
        assembler = PageAssembler(call.page_bytes, len(call.request.keys))
        stream = conn.get_pages(call.request, timeout=timeout, metadata=self._metadata)
        async for message in stream:
            assembler.add(message)
        return assembler.pages()

    @property
    def session_id(self) -> str:
        """The id of the open session (``""`` before the first lease RPC)."""
        return self._conn.session.session_id if self._conn is not None else ""

    # -- namespaces and lookups ------------------------------------------------------------
    async def register(self, spec: PageSpec, tenant: str = "") -> NamespaceHandle:
        """Register (tenant, spec) (idempotent) and return its handle."""
        return await self._run(requests.register_steps(spec, tenant))

    async def lookup_result(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> LookupResult:
        """The longest cached prefix of ``keys`` and the tier of each hit."""
        return await self._run(requests.lookup_steps(ns, keys, self.options))

    async def lookup(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> int:
        """How many leading ``keys`` are cached (in any tier)."""
        return (await self.lookup_result(ns, keys)).num_hits

    async def prefetch(self, ns: NamespaceHandle, keys: Sequence[bytes],
                       target_tier: Tier = Tier.HBM) -> int:
        """Start moving the pages up to ``target_tier``; returns the number scheduled at once."""
        return await self._run(requests.prefetch_steps(ns, keys, target_tier))

    async def delete(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> int:
        """Drop the pages from every tier; returns how many were there."""
        return await self._run(requests.delete_steps(ns, keys, self.options))

    # -- byte path -------------------------------------------------------------------------
    async def put(self, ns: NamespaceHandle, keys: Sequence[bytes], pages: object,
                  tier: Tier = Tier.DRAM, wait_durable: bool = False,
                  durable_timeout_s: float | None = None, *,
                  parent: bytes | None = None) -> PutResult:
        """Store ``pages`` (one per key, ``ns.page_bytes`` each: bytes-like, numpy or torch).

        ``wait_durable``: answer only once the pages are on disk (or ``durable_timeout_s`` passed).
        ``parent``: the key of the page before ``keys[0]`` (``TierClient.put``).
        """
        return await self._run(local_steps.put_steps(self._local, ns, keys, pages, tier, wait_durable,
                                                     durable_timeout_s, parent))

    async def get(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> list[bytes]:
        """The pages of the longest cached prefix of ``keys``, in order (``page_bytes`` each);
        resident ones straight from the daemon's regions when it shares this machine."""
        return await self._run(local_steps.get_steps(self._local, ns, keys))

    async def get_into(self, ns: NamespaceHandle, keys: Sequence[bytes], out: object) -> int:
        """``TierClient.get_into``: the longest cached prefix of ``keys`` into ``out``; how many."""
        return await self._run(local_steps.get_into_steps(self._local, ns, keys, out))

    async def wait_durable(self, ticket: int, timeout_s: float | None = None) -> bool:
        """Wait until the pages of a put's or commit's ticket are on disk; False if ``timeout_s`` passed."""
        return await self._run(requests.wait_durable_steps(ticket, timeout_s))

    # -- zero-copy path --------------------------------------------------------------------
    def acquire(self, ns: NamespaceHandle, keys: Sequence[bytes], target_tier: Tier = Tier.HBM,
                timeout_s: float | None = None, ttl_s: float | None = None) -> LeaseRequest:
        """READ-lease the longest cached prefix of ``keys``, resident in ``target_tier``.

        Carries the ids of leases given back with ``release_later`` (the daemon ends them first).
        """
        call = requests.acquire_call(ns, keys, target_tier, timeout_s, ttl_s, self.options)
        return LeaseRequest(lambda: self._lease_call(ns, call, carry=True))

    def allocate(self, ns: NamespaceHandle, num_pages: int, ttl_s: float | None = None,
                 tier: Tier = Tier.HBM) -> LeaseRequest:
        """FILL-lease ``num_pages`` free slots of ``tier`` (hbm or dram) to write pages into, then
        ``commit``."""
        call = requests.allocate_call(ns, num_pages, ttl_s, tier)
        return LeaseRequest(lambda: self._lease_call(ns, call, carry=False))

    async def _lease_call(self, ns: NamespaceHandle, call: Call, carry: bool) -> AsyncLease:
        conn = self._ready()
        if carry:
            steps = requests.acquire_steps(call, ns, self._releases, conn.session.is_open)
        else:
            steps = requests.lease_steps(call)
        state, session_id = await self._run(steps)
        return AsyncLease(self, ns, state, session_id)

    async def commit(self, lease: AsyncLease, keys: Sequence[bytes], slots: Sequence[int] | None = None, *,
                     wait_durable: bool = False, durable_timeout_s: float | None = None,
                     release: bool = False, parent: bytes | None = None) -> CommitResult:
        """Bind filled ``slots`` (default: the lease's first ``len(keys)``) to ``keys``.

        ``wait_durable`` (write_through daemons): answer only once the pages are on disk, or once
        ``durable_timeout_s`` passed. ``release``: the daemon then ends the lease (its other
        slots go back) and ``lease`` counts as released. ``parent``: the key before ``keys[0]``.

        On a CUDA region this process maps, the device is synchronized first (in a thread, off
        the loop), so the daemon never copies a slot a kernel is still writing.
        """
        await _synchronize(self.fence_devices(lease.ns, lease.tier))
        result = await self._run(requests.commit_steps(lease.state, keys, slots, wait_durable,
                                                       durable_timeout_s, release, self.options,
                                                       parent=parent))
        if release:
            lease._mark_released()
        return result

    async def renew_state(self, lease_id: int, ttl_s: float | None = None) -> LeaseState:
        return await self._run(requests.renew_steps(lease_id, ttl_s))

    async def release_lease(self, lease: AsyncLease) -> None:
        """Release ``lease``; on a mapped CUDA region after this process's kernels are done."""
        await _synchronize(self.fence_devices(lease.ns, lease.tier))
        await self._run(requests.release_steps(lease.lease_id))

    async def release_later_lease(self, lease: AsyncLease) -> None:
        """Queue ``lease`` for the next Acquire to release (it synchronizes the device first)."""
        conn = self._ready()
        if conn.session.is_open(lease.session_id):
            self._releases.remember_devices(lease.session_id, lease.lease_id,
                                            self.fence_devices(lease.ns, lease.tier))
        await self._run(requests.release_later_steps(self._releases, lease.session_id, lease.lease_id,
                                                     conn.session.is_open))

    # -- operations ------------------------------------------------------------------------
    async def stats(self) -> DaemonStats:
        return await self._run(requests.stats_steps())

    async def flush(self, timeout_s: float | None = None) -> int:
        """Write every dirty page to disk; returns how many were written."""
        return await self._run(requests.flush_steps(timeout_s))

    async def health(self, service: str = HEALTH_SERVICE, timeout_s: float = 5.0) -> bool:
        """True when the daemon answers SERVING for ``service``; one attempt, no retries, so a
        daemon that is down raises ``UnavailableError`` at once."""
        stub = health_pb2_grpc.HealthStub(self._ready().channel)
        try:
            response = await stub.Check(requests.health_request(service), timeout=timeout_s,
                                        metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_grpc(exc, "Health.Check") from None
        return requests.is_serving(response)
