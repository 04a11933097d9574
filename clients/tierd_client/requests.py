"""What a client call sends and what it makes of the answers, without any transport.

Each operation is a generator of ``Call``s (sans-IO): it checks the caller's arguments, builds the
requests (batched within the daemon's limits by ``TransferPlan``), yields one ``Call`` per RPC,
is sent each answer back and returns the client's value. ``run_steps`` (blocking) and
``run_steps_async`` drive one over a transport function; ``TierClient`` and ``AsyncTierClient``
only supply that function. A client method can try a local path first and fall back to its steps.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2

from tierd.spec import PageSpec
from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd_client import convert
from tierd_client.errors import InvalidArgumentError, NotFoundError, TierdRpcError
from tierd_client.leases import ReleaseQueue
from tierd_client.options import ClientOptions
from tierd_client.pages import checked_key_list, checked_keys_and_pages, checked_parent
from tierd_client.transfer import TransferPlan, put_messages
from tierd_client.types import (
    CommitResult,
    DaemonStats,
    LeaseState,
    LookupResult,
    NamespaceHandle,
    PageSocketAddress,
    PutResult,
)

log = logging.getLogger(__name__)

HEALTH_SERVICE = "tierd.v1.Tierd"
# Slack on top of Acquire's own timeout_s so the daemon's DEADLINE_EXCEEDED answer (with its
# message) arrives before gRPC's client-side deadline fires.
ACQUIRE_DEADLINE_SLACK_S = 5.0
# Deadline of a Flush without a timeout: the daemon then uses its flush_timeout_s (120 s by default).
FLUSH_DEADLINE_S = 600.0

T = TypeVar("T")


@dataclass(frozen=True)
class PutBatch:
    """The pages of one PutPages call; ``messages`` is rebuilt for every attempt."""

    ns_id: int
    tier: Tier
    keys: list[bytes]
    pages: list[memoryview]
    chunk_bytes: int
    wait_durable: bool
    durable_timeout_s: float | None
    parent: bytes | None = None  # the key before keys[0]

    def messages(self) -> AsyncIterator[pb.PutPagesRequest]:
        return put_messages(self.ns_id, self.tier, self.keys, self.pages, self.chunk_bytes,
                            self.wait_durable, self.durable_timeout_s, self.parent)


@dataclass(frozen=True)
class Call:
    """One RPC of a client operation.

    ``request``: the message (a ``PutBatch`` for PutPages); ``timeout_s``: its deadline (``None``:
    ``rpc_timeout_s``); ``session``: a lease RPC, sent with the session id (the answer sent back
    is then ``(response, session_id)``); ``page_bytes``: GetPages' page size (the answer is the
    list of pages); ``carried``: ``(session_id, lease_id)`` of released leases an Acquire carries;
    ``owner``: the session the call's lease was granted in, which alone may send it;
    ``page_socket``: where a GetPages or PutPages call may go instead of gRPC (``tierd_client.page_socket``).
    """

    rpc: str
    request: Any
    timeout_s: float | None = None
    session: bool = False
    page_bytes: int = 0
    carried: tuple[tuple[str, int], ...] = field(default=())
    owner: str = ""
    page_socket: PageSocketAddress | None = None


Steps = Generator[Call, Any, T]


def run_steps(steps: Steps[T], send: Callable[[Call], Any]) -> T:
    """Drive ``steps`` with the blocking transport ``send``; its errors are thrown into the steps
    (which may handle them) at the ``yield`` of their call."""
    answer: Any = None
    error: TierdRpcError | None = None
    while True:
        try:
            call = steps.send(answer) if error is None else steps.throw(error)
        except StopIteration as done:
            result: T = done.value
            return result
        try:
            answer, error = send(call), None
        except TierdRpcError as exc:
            answer, error = None, exc


async def run_steps_async(steps: Steps[T], send: Callable[[Call], Awaitable[Any]]) -> T:
    """Drive ``steps`` with the async transport ``send`` (errors as in ``run_steps``)."""
    answer: Any = None
    error: TierdRpcError | None = None
    while True:
        try:
            call = steps.send(answer) if error is None else steps.throw(error)
        except StopIteration as done:
            result: T = done.value
            return result
        try:
            answer, error = await send(call), None
        except TierdRpcError as exc:
            answer, error = None, exc


def sync_messages(messages: AsyncIterator[pb.PutPagesRequest]) -> Iterator[pb.PutPagesRequest]:
    """The messages of ``transfer.put_messages`` for a blocking stream: that generator never
    awaits, so each step completes when it is started."""
    while True:
        step: Any = messages.__anext__()
        try:
            step.send(None)
        except StopIteration as done:
            yield done.value
            continue
        except StopAsyncIteration:
            return
        step.close()
        raise RuntimeError("put_messages awaited something; it cannot feed a blocking stream")


def require_ns(ns: object) -> NamespaceHandle:
    if not isinstance(ns, NamespaceHandle):
        raise InvalidArgumentError(
            f"expected the NamespaceHandle returned by register(), got {type(ns).__name__}")
    return ns


def plan_for(ns: NamespaceHandle, options: ClientOptions) -> TransferPlan:
    return TransferPlan.from_limits(ns.limits, options.max_message_bytes, ns.page_bytes)


def durable_deadline_s(options: ClientOptions, durable_timeout_s: float | None) -> float:
    """RPC deadline of a call that may wait ``durable_timeout_s`` for disk on top of its work."""
    return options.rpc_timeout_s + (durable_timeout_s or 0.0)


# -- namespaces and lookups ----------------------------------------------------------------
def register_steps(spec: PageSpec, tenant: str) -> Steps[NamespaceHandle]:
    response = yield Call("Register", convert.register_to_wire(spec, tenant))
    return convert.namespace_from_wire(response, spec)


def lookup_steps(ns: NamespaceHandle, keys: Sequence[bytes], options: ClientOptions) -> Steps[LookupResult]:
    ns = require_ns(ns)
    checked = checked_key_list(keys)
    hits: list[Tier] = []
    for batch in plan_for(ns, options).key_batches(len(checked)):
        request = pb.LookupRequest(ns_id=ns.ns_id, keys=checked[batch.start:batch.stop])
        result = convert.lookup_from_wire((yield Call("Lookup", request)))
        hits.extend(result.tiers[:result.num_hits])
        if result.num_hits < len(batch):
            break
    return LookupResult(num_hits=len(hits), tiers=tuple(hits))


def prefetch_steps(ns: NamespaceHandle, keys: Sequence[bytes], target_tier: Tier) -> Steps[int]:
    ns = require_ns(ns)
    request = pb.PrefetchRequest(ns_id=ns.ns_id, keys=checked_key_list(keys),
                                 target_tier=convert.tier_to_wire(target_tier))
    response: pb.PrefetchResponse = yield Call("Prefetch", request)
    return response.num_scheduled


def delete_steps(ns: NamespaceHandle, keys: Sequence[bytes], options: ClientOptions) -> Steps[int]:
    ns = require_ns(ns)
    checked = checked_key_list(keys)
    deleted = 0
    for batch in plan_for(ns, options).key_batches(len(checked)):
        request = pb.DeleteRequest(ns_id=ns.ns_id, keys=checked[batch.start:batch.stop])
        response: pb.DeleteResponse = yield Call("Delete", request)
        deleted += response.num_deleted
    return deleted


# -- byte path -----------------------------------------------------------------------------
def put_steps(ns: NamespaceHandle, keys: Sequence[bytes], pages: object, tier: Tier,
              wait_durable: bool, durable_timeout_s: float | None,
              options: ClientOptions, parent: bytes | None = None) -> Steps[PutResult]:
    """``parent``: the key of the page before ``keys[0]`` (each batch names the one before it)."""
    ns = require_ns(ns)
    checked, views = checked_keys_and_pages(keys, pages, ns.page_bytes)
    parent = checked_parent(parent)
    plan = plan_for(ns, options)
    deadline_s = durable_deadline_s(options, durable_timeout_s)
    stored = skipped = 0
    tickets: list[int] = []
    durable = wait_durable
    for batch in plan.put_batches(len(checked), ns.page_bytes):
        put = PutBatch(ns.ns_id, tier, checked[batch.start:batch.stop], views[batch.start:batch.stop],
                       plan.chunk_bytes, wait_durable, durable_timeout_s,
                       checked[batch.start - 1] if batch.start else parent)
        # The page socket does not wait for disk: a put that does goes over gRPC.
        response: pb.PutPagesResponse = yield Call("PutPages", put, timeout_s=deadline_s,
                                                   page_socket=None if wait_durable else ns.page_socket)
        stored += response.num_stored
        skipped += response.num_skipped
        if response.durable_ticket:  # 0: nothing of this call was queued for disk
            tickets.append(response.durable_ticket)
        durable = durable and response.durable
    return PutResult(num_stored=stored, num_skipped=skipped, durable_tickets=tuple(tickets),
                     durable=durable)


def get_steps(ns: NamespaceHandle, keys: Sequence[bytes], options: ClientOptions) -> Steps[list[bytes]]:
    ns = require_ns(ns)
    checked = checked_key_list(keys)
    pages: list[bytes] = []
    for batch in plan_for(ns, options).get_batches(len(checked), ns.page_bytes):
        request = pb.GetPagesRequest(ns_id=ns.ns_id, keys=checked[batch.start:batch.stop])
        got: list[bytes] = yield Call("GetPages", request, page_bytes=ns.page_bytes,
                                      page_socket=ns.page_socket)
        pages.extend(got)
        if len(got) < len(batch):
            break
    return pages


def wait_durable_steps(ticket: int, timeout_s: float | None) -> Steps[bool]:
    request = pb.WaitDurableRequest(ticket=ticket)
    if timeout_s is not None:
        request.timeout_s = timeout_s
    deadline_s = None if timeout_s is None else timeout_s + ACQUIRE_DEADLINE_SLACK_S
    response: pb.WaitDurableResponse = yield Call("WaitDurable", request, timeout_s=deadline_s)
    return response.durable


# -- zero-copy path ------------------------------------------------------------------------
def acquire_call(ns: NamespaceHandle, keys: Sequence[bytes], target_tier: Tier, timeout_s: float | None,
                 ttl_s: float | None, options: ClientOptions) -> Call:
    """The Acquire of a READ lease (checked now, sent by ``lease_steps``)."""
    ns = require_ns(ns)
    request = pb.AcquireRequest(ns_id=ns.ns_id, keys=checked_key_list(keys),
                                target_tier=convert.tier_to_wire(target_tier))
    if timeout_s is not None:
        request.timeout_s = timeout_s
    if ttl_s is not None:
        request.ttl_s = ttl_s
    deadline_s = options.rpc_timeout_s + (timeout_s or 0.0) + ACQUIRE_DEADLINE_SLACK_S
    return Call("Acquire", request, timeout_s=deadline_s, session=True)


def allocate_call(ns: NamespaceHandle, num_pages: int, ttl_s: float | None,
                  tier: Tier = Tier.HBM) -> Call:
    """The Allocate of a FILL lease of ``tier`` slots (checked now, sent by ``lease_steps``)."""
    ns = require_ns(ns)
    if isinstance(num_pages, bool) or not isinstance(num_pages, int) or num_pages < 1:
        raise InvalidArgumentError(f"num_pages must be a positive integer, got {num_pages!r}")
    request = pb.AllocateRequest(ns_id=ns.ns_id, num_pages=num_pages, tier=convert.tier_to_wire(tier))
    if ttl_s is not None:
        request.ttl_s = ttl_s
    return Call("Allocate", request, session=True)


def request_for_session(call: Call, session_id: str) -> Any:
    """``call.request`` as sent in session ``session_id``. A lease's id names it only in the
    session that took it (a restarted daemon numbers leases afresh): an Acquire carries the
    released leases of that session only, and a call with another ``owner`` is not sent at all."""
    if call.owner and call.owner != session_id:
        raise NotFoundError("the lease ended with the session that took it", rpc=call.rpc)
    if not call.carried:
        return call.request
    ids = [lease_id for owner, lease_id in call.carried if owner == session_id]
    if not ids:
        return call.request
    request = pb.AcquireRequest()
    request.CopyFrom(call.request)
    request.release_lease_ids.extend(ids)
    return request


def acquire_steps(call: Call, ns: NamespaceHandle, queue: ReleaseQueue,
                  is_open: Callable[[str], bool]) -> Steps[tuple[LeaseState, str]]:
    """``lease_steps`` of an Acquire that carries the queued releases (as many as the daemon's
    key limit allows). If it fails, they are sent as plain Releases (UNAVAILABLE: queued again,
    for the next Acquire or the session's end)."""
    limit = ns.limits.max_keys_per_request or len(queue)
    carried = queue.take(limit, is_open)
    if not carried:
        return (yield from lease_steps(call))
    try:
        return (yield from lease_steps(replace(call, carried=tuple(carried))))
    except TierdRpcError as exc:
        if exc.code == grpc.StatusCode.UNAVAILABLE:
            queue.put_back(carried)
        else:
            yield from release_all_steps(carried, is_open)
        raise
    except GeneratorExit:  # the caller was interrupted: the next Acquire carries them again
        queue.put_back(carried)
        raise


def release_later_steps(queue: ReleaseQueue, session_id: str, lease_id: int,
                        is_open: Callable[[str], bool]) -> Steps[None]:
    """Queue ``lease_id`` for the next Acquire; a full queue sends it as a plain Release now."""
    if not is_open(session_id):
        return  # the lease ended with its session
    if not queue.offer(session_id, lease_id):
        yield from release_all_steps([(session_id, lease_id)], is_open)


def release_all_steps(items: Sequence[tuple[str, int]], is_open: Callable[[str], bool]) -> Steps[None]:
    """Plain Release calls for ``(session_id, lease_id)`` of open sessions; a lease already gone
    is fine, another error is logged (and UNAVAILABLE ends the round: the session ends too)."""
    for session_id, lease_id in items:
        if not is_open(session_id):
            continue
        try:
            yield replace(release_call(lease_id), owner=session_id)
        except NotFoundError:
            continue
        except TierdRpcError as exc:
            log.warning("could not release lease %d: %s", lease_id, exc)
            if exc.code == grpc.StatusCode.UNAVAILABLE:
                return


def lease_steps(call: Call) -> Steps[tuple[LeaseState, str]]:
    """Run a lease-granting ``call``: the lease and the session it belongs to."""
    sent_at_s = convert.now_s()
    response, session_id = yield call
    return convert.lease_from_wire(response.lease, sent_at_s), session_id


def commit_steps(lease: LeaseState, keys: Sequence[bytes], slots: Sequence[int] | None,
                 wait_durable: bool, durable_timeout_s: float | None, release: bool,
                 options: ClientOptions, owner: str = "",
                 parent: bytes | None = None) -> Steps[CommitResult]:
    """``owner``: the session the lease was granted in (the commit is not sent in another);
    ``parent``: the key of the page before ``keys[0]``."""
    checked = checked_key_list(keys)
    parent = checked_parent(parent)
    if slots is None:
        if len(checked) > len(lease.slots):
            raise InvalidArgumentError(f"{len(checked)} keys for a lease of {len(lease.slots)} slots")
        slots = lease.slots[:len(checked)]
    if len(slots) != len(checked):
        raise InvalidArgumentError(f"got {len(checked)} keys and {len(slots)} slots; commit "
                                   "binds one slot per key")
    request = pb.CommitRequest(lease_id=lease.lease_id, keys=checked, slots=list(slots),
                               wait_durable=wait_durable, release_lease=release)
    if durable_timeout_s is not None:
        request.durable_timeout_s = durable_timeout_s
    if parent is not None:
        request.parent_key = parent
    deadline_s = durable_deadline_s(options, durable_timeout_s)
    response, _session = yield Call("Commit", request, timeout_s=deadline_s, session=True, owner=owner)
    ticket = response.durable_ticket if response.HasField("durable_ticket") else None
    return CommitResult(num_committed=response.num_committed, durable_ticket=ticket,
                        durable=wait_durable and response.durable)


def renew_steps(lease_id: int, ttl_s: float | None) -> Steps[LeaseState]:
    request = pb.RenewRequest(lease_id=lease_id)
    if ttl_s is not None:
        request.ttl_s = ttl_s
    sent_at_s = convert.now_s()
    response, _session = yield Call("Renew", request, session=True)
    return convert.lease_from_wire(response.lease, sent_at_s)


def release_call(lease_id: int) -> Call:
    return Call("Release", pb.ReleaseRequest(lease_id=lease_id), session=True)


def release_steps(lease_id: int) -> Steps[None]:
    yield release_call(lease_id)


# -- operations ----------------------------------------------------------------------------
def stats_steps() -> Steps[DaemonStats]:
    response = yield Call("Stats", pb.StatsRequest())
    return convert.stats_from_wire(response)


def flush_steps(timeout_s: float | None) -> Steps[int]:
    request = pb.FlushRequest()
    if timeout_s is not None:
        request.timeout_s = timeout_s
    deadline_s = (timeout_s or FLUSH_DEADLINE_S) + ACQUIRE_DEADLINE_SLACK_S
    response: pb.FlushResponse = yield Call("Flush", request, timeout_s=deadline_s)
    return response.num_flushed


def health_request(service: str) -> health_pb2.HealthCheckRequest:
    return health_pb2.HealthCheckRequest(service=service)


def is_serving(response: health_pb2.HealthCheckResponse) -> bool:
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
