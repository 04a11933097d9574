"""``AsyncTierClient``: the grpc.aio client of tierd, for workers that run an event loop.

All of its objects belong to the event loop that called ``connect`` (grpc.aio objects cannot move
between loops); ``TierClient`` wraps it for blocking code. Pages are checked client-side (size,
count, key length) before anything is sent.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tierd.spec import PageSpec
from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc
from tierd_client import convert
from tierd_client.arena import ArenaView
from tierd_client.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError, from_grpc
from tierd_client.leases import AsyncLease, LeaseRequest
from tierd_client.options import ClientOptions, grpc_target
from tierd_client.pages import checked_key_list, checked_keys_and_pages
from tierd_client.rpc import RpcRunner
from tierd_client.session import ClientSession
from tierd_client.transfer import PageAssembler, TransferPlan, put_messages
from tierd_client.types import CommitResult, DaemonStats, LeaseState, LookupResult, NamespaceHandle, PutResult

HEALTH_SERVICE = "tierd.v1.Tierd"
# Slack on top of Acquire's own timeout_s so the daemon's DEADLINE_EXCEEDED answer (with its
# message) arrives before gRPC's client-side deadline fires.
ACQUIRE_DEADLINE_SLACK_S = 5.0
# Deadline of a Flush without a timeout: the daemon then uses its flush_timeout_s (120 s by default).
FLUSH_DEADLINE_S = 600.0
# gRPC's reconnect backoff starts at 1 s by default; a restarted daemon is back much sooner.
_RECONNECT_BACKOFF_MS = 100
_MAX_RECONNECT_BACKOFF_MS = 2000


@dataclass(frozen=True)
class _Connection:
    """The grpc.aio objects of one connected client (all bound to its event loop)."""

    channel: grpc.aio.Channel
    stub: pb_grpc.TierdStub
    runner: RpcRunner
    session: ClientSession


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {what} {path}: {exc.strerror}") from None


def _channel_credentials(options: ClientOptions) -> grpc.ChannelCredentials | None:
    """TLS credentials from ``options.tls_*`` files; ``None`` for a plaintext channel."""
    if options.tls_ca is None:
        return None
    key = _read_pem(options.tls_key, "tls_key") if options.tls_key is not None else None
    cert = _read_pem(options.tls_cert, "tls_cert") if options.tls_cert is not None else None
    return grpc.ssl_channel_credentials(root_certificates=_read_pem(options.tls_ca, "tls_ca"),
                                        private_key=key, certificate_chain=cert)


def _require_ns(ns: object) -> NamespaceHandle:
    if not isinstance(ns, NamespaceHandle):
        raise InvalidArgumentError(
            f"expected the NamespaceHandle returned by register(), got {type(ns).__name__}")
    return ns


class AsyncTierClient:
    """Client of one tierd daemon. ``target``: socket path, ``unix:PATH`` or ``host:port``."""

    def __init__(self, target: str | os.PathLike[str] | None = None,
                 options: ClientOptions | None = None) -> None:
        self.target = grpc_target(target)
        self.options = options or ClientOptions()
        # Sent on every call: the options' metadata and the tenant token (or $TIERD_TOKEN's).
        self._metadata = self.options.call_metadata()
        self._conn: _Connection | None = None
        self._arenas: dict[tuple[int, Tier, str, bytes], ArenaView] = {}
        self._arenas_lock = threading.Lock()
        self._closed = False

    # -- life cycle ------------------------------------------------------------------------
    async def connect(self) -> None:
        """Create the channel (no RPC yet; the daemon may start later). Idempotent."""
        if self._closed:
            raise FailedPreconditionError("this client is closed; create a new one")
        if self._conn is not None:
            return
        limit = self.options.max_message_bytes
        channel_options = [("grpc.max_send_message_length", limit),
                           ("grpc.max_receive_message_length", limit),
                           ("grpc.initial_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS),
                           ("grpc.min_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS),
                           ("grpc.max_reconnect_backoff_ms", _MAX_RECONNECT_BACKOFF_MS)]
        credentials = _channel_credentials(self.options)
        if credentials is None:
            channel = grpc.aio.insecure_channel(self.target, options=channel_options)
        else:
            channel = grpc.aio.secure_channel(self.target, credentials, options=channel_options)
        stub = pb_grpc.TierdStub(channel)  # type: ignore[no-untyped-call]
        runner = RpcRunner(self.target, self.options.retry, self.options.max_inflight_rpcs)
        # The session stream lives as long as the client: it takes no in-flight slot (opening it
        # from inside a limited call must not wait for a slot that call holds).
        session = ClientSession(lambda request: stub.Session(request, metadata=self._metadata),
                                self.options.client_name or f"pid-{os.getpid()}",
                                functools.partial(runner.call, limited=False))
        self._conn = _Connection(channel=channel, stub=stub, runner=runner, session=session)

    async def close(self) -> None:
        """End the session (the daemon frees its leases), unmap arenas, close the channel."""
        if self._closed:
            return
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.session.close()
        with self._arenas_lock:
            views = list(self._arenas.values())
            self._arenas.clear()
        for view in views:
            view.close()
        if conn is not None:
            await conn.channel.close()

    async def __aenter__(self) -> AsyncTierClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- plumbing --------------------------------------------------------------------------
    def _ready(self) -> _Connection:
        if self._closed:
            raise FailedPreconditionError("this client is closed; create a new one")
        if self._conn is None:
            raise FailedPreconditionError("call connect() (or use `async with`) before any RPC")
        return self._conn

    async def _unary(self, rpc: str, request: Any, *, timeout_s: float | None = None,
                     session: bool = False) -> Any:
        conn = self._ready()
        method = getattr(conn.stub, rpc)
        timeout = timeout_s or self.options.rpc_timeout_s

        async def attempt() -> Any:
            if not session:
                return await method(request, timeout=timeout, metadata=self._metadata)
            session_metadata = await conn.session.metadata()
            try:
                return await method(request, timeout=timeout,
                                    metadata=self._metadata + session_metadata)
            except grpc.RpcError as exc:
                # The daemon restarted since the session opened: it knows neither the session
                # nor its leases. Try again (the runner retries UNAVAILABLE) in a new session.
                if (exc.code() == grpc.StatusCode.NOT_FOUND
                        and not conn.session.is_open(session_metadata[0][1])):
                    raise UnavailableError(f"the session ended ({exc.details()})", rpc=rpc) from None
                raise

        return await conn.runner.call(rpc, attempt)

    @property
    def session_id(self) -> str:
        """The id of the open session (``""`` before the first lease RPC)."""
        return self._conn.session.session_id if self._conn is not None else ""

    def _plan(self, ns: NamespaceHandle) -> TransferPlan:
        return TransferPlan.from_limits(ns.limits, self.options.max_message_bytes, ns.page_bytes)

    # -- namespaces and lookups ------------------------------------------------------------
    async def register(self, spec: PageSpec, tenant: str = "") -> NamespaceHandle:
        """Register (tenant, spec) (idempotent) and return its handle."""
        request = convert.register_to_wire(spec, tenant)
        response = await self._unary("Register", request)
        return convert.namespace_from_wire(response, spec)

    async def lookup_result(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> LookupResult:
        """The longest cached prefix of ``keys`` and the tier of each hit."""
        ns = _require_ns(ns)
        checked = checked_key_list(keys)
        hits: list[Tier] = []
        for batch in self._plan(ns).key_batches(len(checked)):
            request = pb.LookupRequest(ns_id=ns.ns_id, keys=checked[batch.start:batch.stop])
            result = convert.lookup_from_wire(await self._unary("Lookup", request))
            hits.extend(result.tiers[:result.num_hits])
            if result.num_hits < len(batch):
                break
        return LookupResult(num_hits=len(hits), tiers=tuple(hits))

    async def lookup(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> int:
        """How many leading ``keys`` are cached (in any tier)."""
        return (await self.lookup_result(ns, keys)).num_hits

    async def prefetch(self, ns: NamespaceHandle, keys: Sequence[bytes],
                       target_tier: Tier = Tier.HBM) -> int:
        """Start moving the pages up to ``target_tier``; returns the number scheduled at once."""
        ns = _require_ns(ns)
        request = pb.PrefetchRequest(ns_id=ns.ns_id, keys=checked_key_list(keys),
                                     target_tier=convert.tier_to_wire(target_tier))
        response: pb.PrefetchResponse = await self._unary("Prefetch", request)
        return response.num_scheduled

    async def delete(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> int:
        """Drop the pages from every tier; returns how many were there."""
        ns = _require_ns(ns)
        checked = checked_key_list(keys)
        deleted = 0
        for batch in self._plan(ns).key_batches(len(checked)):
            request = pb.DeleteRequest(ns_id=ns.ns_id, keys=checked[batch.start:batch.stop])
            deleted += (await self._unary("Delete", request)).num_deleted
        return deleted

    # -- byte path -------------------------------------------------------------------------
    async def put(self, ns: NamespaceHandle, keys: Sequence[bytes], pages: object,
                  tier: Tier = Tier.DRAM, wait_durable: bool = False,
                  durable_timeout_s: float | None = None) -> PutResult:
        """Store ``pages`` (one per key, ``ns.page_bytes`` each: bytes-like, numpy or torch).

        ``wait_durable``: answer only once the pages are on disk (or ``durable_timeout_s`` passed).
        """
        ns = _require_ns(ns)
        checked, views = checked_keys_and_pages(keys, pages, ns.page_bytes)
        plan = self._plan(ns)
        stored = skipped = 0
        tickets: list[int] = []
        durable = wait_durable
        for batch in plan.put_batches(len(checked), ns.page_bytes):
            response = await self._put_call(ns, tier, checked[batch.start:batch.stop],
                                            views[batch.start:batch.stop], plan.chunk_bytes,
                                            wait_durable, durable_timeout_s)
            stored += response.num_stored
            skipped += response.num_skipped
            if response.durable_ticket:  # 0: nothing of this call was queued for disk
                tickets.append(response.durable_ticket)
            durable = durable and response.durable
        return PutResult(num_stored=stored, num_skipped=skipped, durable_tickets=tuple(tickets),
                         durable=durable)

    def _durable_deadline_s(self, durable_timeout_s: float | None) -> float:
        """RPC deadline of a call that may wait ``durable_timeout_s`` for disk on top of its work."""
        return self.options.rpc_timeout_s + (durable_timeout_s or 0.0)

    async def _put_call(self, ns: NamespaceHandle, tier: Tier, keys: list[bytes],
                        pages: list[memoryview], chunk_bytes: int, wait_durable: bool,
                        durable_timeout_s: float | None) -> pb.PutPagesResponse:
        """One PutPages call (re-sent from its first message if retried)."""
        conn = self._ready()
        deadline_s = self._durable_deadline_s(durable_timeout_s)

        async def attempt() -> pb.PutPagesResponse:
            messages = put_messages(ns.ns_id, tier, keys, pages, chunk_bytes, wait_durable,
                                    durable_timeout_s)
            response: pb.PutPagesResponse = await conn.stub.PutPages(
                messages, timeout=deadline_s, metadata=self._metadata)
            return response

        return await conn.runner.call("PutPages", attempt)

    async def get(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> list[bytes]:
        """The pages of the longest cached prefix of ``keys``, in order (``page_bytes`` each)."""
        ns = _require_ns(ns)
        checked = checked_key_list(keys)
        pages: list[bytes] = []
        for batch in self._plan(ns).get_batches(len(checked), ns.page_bytes):
            got = await self._get_call(ns, checked[batch.start:batch.stop])
            pages.extend(got)
            if len(got) < len(batch):
                break
        return pages

    async def _get_call(self, ns: NamespaceHandle, keys: list[bytes]) -> list[bytes]:
        """One GetPages call, its stream reassembled into pages."""
        conn = self._ready()
        request = pb.GetPagesRequest(ns_id=ns.ns_id, keys=keys)

        async def attempt() -> list[bytes]:
            assembler = PageAssembler(ns.page_bytes, len(keys))
            call = conn.stub.GetPages(request, timeout=self.options.rpc_timeout_s,
                                      metadata=self._metadata)
            async for message in call:
                assembler.add(message)
            return assembler.pages()

        return await conn.runner.call("GetPages", attempt)

    async def wait_durable(self, ticket: int, timeout_s: float | None = None) -> bool:
        """Wait until the pages of a put's or commit's ticket are on disk; False if ``timeout_s`` passed."""
        request = pb.WaitDurableRequest(ticket=ticket)
        if timeout_s is not None:
            request.timeout_s = timeout_s
        deadline_s = None if timeout_s is None else timeout_s + ACQUIRE_DEADLINE_SLACK_S
        response: pb.WaitDurableResponse = await self._unary("WaitDurable", request, timeout_s=deadline_s)
        return response.durable

    # -- zero-copy path --------------------------------------------------------------------
    def arena(self, ns: NamespaceHandle, tier: Tier = Tier.HBM) -> ArenaView:
        """Map ``ns``'s region of ``tier`` (once per client); slot numbers of leases index it.

        After a daemon restart, register again (new handles) and call ``arena`` again: views of
        the old regions no longer reach the cache, and ``arena(old_ns)`` raises ``NotFoundError``.
        """
        ns = _require_ns(ns)
        handle = ns.region(tier)
        if handle is None:
            raise FailedPreconditionError(
                f"the daemon gave no {tier.label} region for namespace {ns.ns_id}; "
                f"it has {[h.tier.label for h in ns.regions]}")
        key = (ns.ns_id, tier, handle.name, handle.grant)
        # The blocking client calls this from its callers' threads, not from the loop.
        with self._arenas_lock:
            view = self._arenas.pop(key, None)
            if view is not None and view.is_stale():
                view.close()  # mapping it again reports the region gone: register again
                view = None
            if view is None:
                view = ArenaView(handle, ns.spec)
            self._arenas[key] = view
            return view

    def acquire(self, ns: NamespaceHandle, keys: Sequence[bytes], target_tier: Tier = Tier.HBM,
                timeout_s: float | None = None, ttl_s: float | None = None) -> LeaseRequest:
        """READ-lease the longest cached prefix of ``keys``, resident in ``target_tier``."""
        ns = _require_ns(ns)
        request = pb.AcquireRequest(ns_id=ns.ns_id, keys=checked_key_list(keys),
                                    target_tier=convert.tier_to_wire(target_tier))
        if timeout_s is not None:
            request.timeout_s = timeout_s
        if ttl_s is not None:
            request.ttl_s = ttl_s
        deadline_s = self.options.rpc_timeout_s + (timeout_s or 0.0) + ACQUIRE_DEADLINE_SLACK_S
        return LeaseRequest(lambda: self._lease_call(ns, "Acquire", request, deadline_s))

    def allocate(self, ns: NamespaceHandle, num_pages: int, ttl_s: float | None = None) -> LeaseRequest:
        """FILL-lease ``num_pages`` free hbm slots to write pages into, then ``commit``."""
        ns = _require_ns(ns)
        if isinstance(num_pages, bool) or not isinstance(num_pages, int) or num_pages < 1:
            raise InvalidArgumentError(f"num_pages must be a positive integer, got {num_pages!r}")
        request = pb.AllocateRequest(ns_id=ns.ns_id, num_pages=num_pages)
        if ttl_s is not None:
            request.ttl_s = ttl_s
        return LeaseRequest(lambda: self._lease_call(ns, "Allocate", request, None))

    async def _lease_call(self, ns: NamespaceHandle, rpc: str, request: Any,
                          deadline_s: float | None) -> AsyncLease:
        sent_at_s = convert.now_s()
        response = await self._unary(rpc, request, timeout_s=deadline_s, session=True)
        return AsyncLease(self, ns, convert.lease_from_wire(response.lease, sent_at_s))

    async def commit(self, lease: AsyncLease, keys: Sequence[bytes], slots: Sequence[int] | None = None, *,
                     wait_durable: bool = False, durable_timeout_s: float | None = None) -> CommitResult:
        """Bind filled ``slots`` (default: the lease's first ``len(keys)``) to ``keys``.

        ``wait_durable`` (write_through daemons): answer only once the pages are on disk, or once
        ``durable_timeout_s`` passed.
        """
        checked = checked_key_list(keys)
        if slots is None:
            if len(checked) > len(lease.slots):
                raise InvalidArgumentError(f"{len(checked)} keys for a lease of "
                                           f"{len(lease.slots)} slots")
            slots = lease.slots[:len(checked)]
        if len(slots) != len(checked):
            raise InvalidArgumentError(f"got {len(checked)} keys and {len(slots)} slots; commit "
                                       "binds one slot per key")
        request = pb.CommitRequest(lease_id=lease.lease_id, keys=checked, slots=list(slots),
                                   wait_durable=wait_durable)
        if durable_timeout_s is not None:
            request.durable_timeout_s = durable_timeout_s
        deadline_s = self._durable_deadline_s(durable_timeout_s)
        response = await self._unary("Commit", request, timeout_s=deadline_s, session=True)
        ticket = response.durable_ticket if response.HasField("durable_ticket") else None
        return CommitResult(num_committed=response.num_committed, durable_ticket=ticket,
                            durable=wait_durable and response.durable)

    async def renew_state(self, lease_id: int, ttl_s: float | None = None) -> LeaseState:
        request = pb.RenewRequest(lease_id=lease_id)
        if ttl_s is not None:
            request.ttl_s = ttl_s
        sent_at_s = convert.now_s()
        response = await self._unary("Renew", request, session=True)
        return convert.lease_from_wire(response.lease, sent_at_s)

    async def release_id(self, lease_id: int) -> None:
        await self._unary("Release", pb.ReleaseRequest(lease_id=lease_id), session=True)

    # -- operations ------------------------------------------------------------------------
    async def stats(self) -> DaemonStats:
        return convert.stats_from_wire(await self._unary("Stats", pb.StatsRequest()))

    async def flush(self, timeout_s: float | None = None) -> int:
        """Write every dirty page to disk; returns how many were written."""
        request = pb.FlushRequest()
        if timeout_s is not None:
            request.timeout_s = timeout_s
        deadline_s = (timeout_s or FLUSH_DEADLINE_S) + ACQUIRE_DEADLINE_SLACK_S
        response: pb.FlushResponse = await self._unary("Flush", request, timeout_s=deadline_s)
        return response.num_flushed

    async def health(self, service: str = HEALTH_SERVICE, timeout_s: float = 5.0) -> bool:
        """True when the daemon answers SERVING for ``service``; one attempt, no retries, so a
        daemon that is down raises ``UnavailableError`` at once."""
        stub = health_pb2_grpc.HealthStub(self._ready().channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service),
                                        timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_grpc(exc, "Health.Check") from None
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
