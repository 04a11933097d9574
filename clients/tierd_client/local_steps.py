"""The client operations that try the local data path first (``tierd_client.local_path``), as
``requests``-style steps: reads from the mapped regions without an RPC, puts as a copy into
pooled FILL slots plus one Commit; whatever the local path cannot do goes over the RPCs.

Both clients run these with their own transport, like ``requests``' steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import grpc
import numpy as np

from tierd import buffers
from tierd.errors import InvalidArgument
from tierd.handles import HandleKind
from tierd.tier import MEMORY_TIERS, Tier
from tierd.v1 import tierd_pb2 as pb
from tierd_client import requests
from tierd_client.arena import ArenaView
from tierd_client.errors import InvalidArgumentError, NotFoundError, TierdRpcError
from tierd_client.local_path import TOUCH_BATCH_KEYS, LocalReader, Pooled, SlotPool
from tierd_client.options import ClientOptions
from tierd_client.pages import checked_key_list, checked_keys_and_pages, checked_parent
from tierd_client.requests import Call, Steps
from tierd_client.types import LeaseState, NamespaceHandle, PutResult

log = logging.getLogger(__name__)

# A local put leases ahead at most 1/this of a region's slots.
POOL_SHARE_DIVISOR = 64

# Codes that mean "no local put here" (hbm disabled, every slot leased, a lease gone with a
# restarted daemon): the pages go over the byte path instead.
_PUT_FALLBACK_CODES = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT})


@dataclass(frozen=True)
class PoolLease:
    """A FILL lease kept for local puts, and the session it was granted in."""

    state: LeaseState
    session_id: str

    @property
    def slots(self) -> tuple[int, ...]:
        return self.state.slots

    @property
    def expires_at_s(self) -> float:
        return self.state.expires_at_s


@dataclass(frozen=True)
class LocalPath:
    """A client's local data path: its reader, its slot pool and how it maps arenas;
    ``page_socket``: whether its byte-path calls may use the daemon's page socket."""

    reader: LocalReader
    pool: SlotPool[PoolLease]
    arena: Callable[[NamespaceHandle, Tier], ArenaView]
    options: ClientOptions
    page_socket: bool = False


def out_views(out: object, num_pages: int, page_bytes: int) -> list[memoryview]:
    """``out`` (``num_pages * page_bytes`` writable bytes: bytearray, numpy, CPU torch) as one
    writable view per page."""
    try:
        flat = buffers.byte_view(out, what="out", expected_bytes=num_pages * page_bytes, writable=True)
    except InvalidArgument as exc:
        raise InvalidArgumentError(str(exc)) from None
    return [flat[i * page_bytes:(i + 1) * page_bytes] for i in range(num_pages)]


def refresh_steps(local: LocalPath, ns: NamespaceHandle) -> Steps[None]:
    """After a daemon restart, register ``ns``'s spec again so that the local path maps the new
    daemon's regions (best effort: the RPC path serves meanwhile)."""
    if not local.reader.needs_refresh(ns):
        return
    try:
        fresh = yield from requests.register_steps(ns.spec, ns.tenant)
    except TierdRpcError as exc:
        log.debug("could not refresh the regions of namespace %d: %s", ns.ns_id, exc)
        return
    local.reader.refreshed(ns, fresh)


def touch_steps(local: LocalPath) -> Steps[None]:
    """Report keys served locally (a Lookup per namespace: hits counted, pages kept warm);
    best effort, errors only logged."""
    for ns_id, keys in local.reader.take_touches().items():
        for start in range(0, len(keys), TOUCH_BATCH_KEYS):
            try:
                yield Call("Lookup", pb.LookupRequest(ns_id=ns_id, keys=keys[start:start + TOUCH_BATCH_KEYS]))
            except TierdRpcError as exc:
                log.debug("could not report local reads of namespace %d: %s", ns_id, exc)
                return


def get_into_steps(local: LocalPath, ns: NamespaceHandle, keys: Sequence[bytes],
                   out: object) -> Steps[int]:
    """Fill ``out`` with the pages of the longest cached prefix of ``keys``; how many."""
    ns = requests.require_ns(ns)
    checked = checked_key_list(keys)
    outs = out_views(out, len(checked), ns.page_bytes)
    done = local.reader.read(ns, checked, outs)
    if done < len(checked):
        pages = yield from requests.get_steps(ns, checked[done:], local.options)
        for view, page in zip(outs[done:], pages):
            view[:] = page
        done += len(pages)
    yield from refresh_steps(local, ns)
    yield from touch_steps(local)
    return done


def get_steps(local: LocalPath, ns: NamespaceHandle, keys: Sequence[bytes]) -> Steps[list[bytes]]:
    """The pages of the longest cached prefix of ``keys``: the resident ones copied straight out
    of the mapped regions (one copy each), the rest over GetPages."""
    ns = requests.require_ns(ns)
    checked = checked_key_list(keys)
    pages = local.reader.read_pages(ns, checked)
    if len(pages) < len(checked):
        pages.extend((yield from requests.get_steps(ns, checked[len(pages):], local.options)))
    yield from refresh_steps(local, ns)
    yield from touch_steps(local)
    return pages


def can_put_locally(local: LocalPath, ns: NamespaceHandle, tier: Tier) -> bool:
    handle = ns.region(tier)
    return (tier in MEMORY_TIERS and handle is not None and handle.kind is HandleKind.MEMFD
            and bool(handle.socket_path) and local.reader.usable(handle.grant))


def put_steps(local: LocalPath, ns: NamespaceHandle, keys: Sequence[bytes], pages: object, tier: Tier,
              wait_durable: bool, durable_timeout_s: float | None,
              parent: bytes | None = None) -> Steps[PutResult]:
    """``requests.put_steps``, but into pooled FILL slots of the mapped region when it can: one
    copy and one Commit per call (plus an Allocate per ``put_slots`` pages). ``parent``: the key
    before ``keys[0]``; each Commit names the key before its own first."""
    ns = local.reader.current(requests.require_ns(ns))
    # The page socket's put (one frame each way, no RPC) is as fast as slots + Commit for big
    # pages and twice as fast for small ones, and holds no slots ahead: it goes first.
    over_page_socket = local.page_socket and ns.page_socket is not None and not wait_durable
    if over_page_socket or not can_put_locally(local, ns, tier):
        return (yield from requests.put_steps(ns, keys, pages, tier, wait_durable, durable_timeout_s,
                                              local.options, parent))
    checked, views = checked_keys_and_pages(keys, pages, ns.page_bytes)
    parent = checked_parent(parent)
    stored = skipped = done = 0
    tickets: list[int] = []
    durable = wait_durable
    try:
        region = _mapped(local, ns, tier)
        while done < len(checked):
            pooled = yield from _checkout(local, ns, tier, len(checked) - done)
            slots = pooled.take(len(checked) - done)
            for slot, view in zip(slots, views[done:]):
                region[slot] = np.frombuffer(view, dtype=np.uint8)
            last = pooled.num_free == 0
            call_keys = checked[done:done + len(slots)]
            result = yield from requests.commit_steps(
                pooled.lease.state, call_keys, slots, wait_durable, durable_timeout_s, last,
                local.options, owner=pooled.lease.session_id,
                parent=checked[done - 1] if done else parent)
            if not last:
                extra = local.pool.checkin(ns.ns_id, tier, pooled)
                if extra is not None:
                    yield from _release(extra)
            stored += result.num_committed
            skipped += len(slots) - result.num_committed
            if result.durable_ticket is not None:
                tickets.append(result.durable_ticket)
            durable = durable and result.durable
            done += len(slots)
    except TierdRpcError as exc:
        if exc.code not in _PUT_FALLBACK_CODES:
            raise
        log.debug("local put of namespace %d fell back to the byte path: %s", ns.ns_id, exc)
        rest = yield from requests.put_steps(ns, checked[done:], views[done:], tier, wait_durable,
                                             durable_timeout_s, local.options,
                                             checked[done - 1] if done else parent)
        stored, skipped = stored + rest.num_stored, skipped + rest.num_skipped
        tickets.extend(rest.durable_tickets)
        durable = durable and rest.durable
    local.reader.count_put(stored)
    yield from refresh_steps(local, ns)
    return PutResult(num_stored=stored, num_skipped=skipped, durable_tickets=tuple(tickets),
                     durable=durable)


def _mapped(local: LocalPath, ns: NamespaceHandle, tier: Tier) -> np.ndarray:
    """The region's ``uint8 [num_slots, page_bytes]``; a region that cannot be mapped here is
    never tried again (the byte path serves it)."""
    handle = ns.region(tier)
    try:
        return local.arena(ns, tier).bytes()
    except NotFoundError:
        if handle is not None:
            local.reader.mark_gone(ns, handle.grant)
        raise
    except TierdRpcError:
        if handle is not None:
            local.reader.mark_unusable(handle.grant)
        raise


def _checkout(local: LocalPath, ns: NamespaceHandle, tier: Tier,
              num_pages: int) -> Steps[Pooled[PoolLease]]:
    """A pooled lease with free slots, allocating one (``put_slots`` or more) when none is."""
    pooled, stale = local.pool.checkout(ns.ns_id, tier)
    for lease in stale:
        yield from _release(lease)
    if pooled is not None:
        return pooled
    limit = ns.limits.max_keys_per_request or num_pages
    handle = ns.region(tier)
    # Slots leased ahead take room from every other worker of the namespace (the daemon evicts
    # to free them): at most a small share of the region, none in a small one.
    ahead = min(local.options.put_slots, (handle.num_slots if handle else 0) // POOL_SHARE_DIVISOR)
    wanted = min(max(ahead, num_pages), limit)
    state, session_id = yield from requests.lease_steps(requests.allocate_call(ns, wanted, None, tier))
    return Pooled(PoolLease(state, session_id))


def _release(lease: PoolLease) -> Steps[None]:
    """Release a pooled lease we no longer keep; gone already is fine."""
    try:
        yield replace(requests.release_call(lease.state.lease_id), owner=lease.session_id)
    except TierdRpcError as exc:
        log.debug("pooled lease %d could not be released: %s", lease.state.lease_id, exc)


def release_pool_steps(local: LocalPath) -> Steps[None]:
    """Release every pooled lease (the client is closing)."""
    for lease in local.pool.drain():
        yield from _release(lease)
