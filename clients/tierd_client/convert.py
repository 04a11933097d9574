"""Translation between the wire messages (``tierd.v1``) and the client's Python values."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from tierd import wire
from tierd.errors import InvalidArgument
from tierd.handles import RegionHandle
from tierd.spec import PageSpec, check_registrable, check_tenant
from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd_client.errors import InvalidArgumentError, TierdRpcError
from tierd_client.types import (
    DaemonStats,
    LeaseState,
    LookupResult,
    NamespaceHandle,
    PageSocketAddress,
    RemoteTierStats,
    ServerLimits,
    TierStats,
)


def tier_to_wire(tier: Tier) -> pb.Tier:
    try:
        return wire.tier_to_pb(tier)
    except InvalidArgument as exc:
        raise InvalidArgumentError(str(exc)) from None


P = ParamSpec("P")
R = TypeVar("R")


def _answered(convert: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``convert(*args)``; a value the daemon sent that this client does not know is the daemon's
    fault (versions differ), not the caller's: ``TierdRpcError``."""
    try:
        return convert(*args, **kwargs)
    except InvalidArgument as exc:
        raise TierdRpcError(f"the daemon answered {exc}; client and daemon versions differ") from None


def tier_from_wire(value: int) -> Tier:
    return _answered(wire.tier_from_pb, value, "tier")


def spec_to_wire(spec: PageSpec) -> pb.PageSpec:
    if not isinstance(spec, PageSpec):
        raise InvalidArgumentError(f"spec must be a tierd_client.PageSpec, got {type(spec).__name__}")
    return wire.spec_to_pb(spec)


def register_to_wire(spec: PageSpec, tenant: str) -> pb.RegisterRequest:
    """A Register request, checked against the daemon's limits before it is sent (the same
    ``InvalidArgumentError`` the daemon would answer)."""
    message = spec_to_wire(spec)
    try:
        if tenant:
            check_tenant(tenant)
        check_registrable(spec)
    except InvalidArgument as exc:
        raise InvalidArgumentError(str(exc)) from None
    return pb.RegisterRequest(spec=message, tenant=tenant)


def region_from_wire(msg: pb.RegionHandle) -> RegionHandle:
    return _answered(wire.handle_from_pb, msg)


def limits_from_wire(msg: pb.ServerLimits) -> ServerLimits:
    return ServerLimits(max_message_bytes=msg.max_message_bytes, chunk_bytes=msg.chunk_bytes,
                        max_put_bytes=msg.max_put_bytes,
                        max_keys_per_request=msg.max_keys_per_request,
                        max_get_bytes=msg.max_get_bytes)


def namespace_from_wire(msg: pb.RegisterResponse, asked: PageSpec) -> NamespaceHandle:
    """The handle of a Register answer; the spec is the daemon's canonical one (same fields)."""
    spec = _answered(wire.spec_from_pb, msg.spec) if msg.HasField("spec") else asked
    if spec != asked:
        raise TierdRpcError(f"the daemon registered {spec} for the requested {asked}; "
                            "client and daemon disagree on the spec")
    return NamespaceHandle(ns_id=msg.ns_id, tenant=msg.tenant, spec=spec,
                           fingerprint=bytes(msg.fingerprint), page_bytes=msg.page_bytes,
                           regions=tuple(region_from_wire(r) for r in msg.regions),
                           limits=limits_from_wire(msg.limits),
                           page_socket=(PageSocketAddress(msg.page_socket, bytes(msg.server_epoch))
                                        if msg.page_socket else None))


def lease_from_wire(msg: pb.Lease, sent_at_s: float) -> LeaseState:
    """``sent_at_s``: ``time.monotonic()`` when the request left, so expiry errs on the early side."""
    kind = _answered(wire.lease_kind_from_pb, msg.kind)
    return LeaseState(lease_id=msg.lease_id, ns_id=msg.ns_id, tier=tier_from_wire(msg.tier),
                      kind=kind, keys=tuple(bytes(k) for k in msg.keys),
                      slots=tuple(msg.slots), expires_at_s=sent_at_s + msg.expires_in_s,
                      window=_answered(wire.lease_window_from_pb, msg))


def lookup_from_wire(msg: pb.LookupResponse) -> LookupResult:
    return LookupResult(num_hits=msg.num_hits, tiers=tuple(tier_from_wire(t) for t in msg.tiers))


def stats_from_wire(msg: pb.StatsResponse) -> DaemonStats:
    tiers: dict[Tier, TierStats] = dict(_answered(wire.tier_stats_from_pb, t) for t in msg.tiers)
    server = msg.server
    return DaemonStats(tiers=tiers, namespaces=msg.namespaces, leases=msg.leases,
                       checksum_failures=msg.checksum_failures, uptime_s=msg.uptime_s,
                       write_policy=wire.write_policy_from_pb(msg.write_policy),
                       sessions=server.sessions, rpcs_in_flight=server.rpcs_in_flight,
                       rpcs_rejected=server.rpcs_rejected, version=server.version,
                       device=server.device, disk_writes_refused=msg.disk_writes_refused,
                       disk_write_failures=msg.disk_write_failures,
                       disk_write_error=msg.disk_write_error,
                       evictions_with_children=msg.evictions_with_children,
                       eviction_policy=msg.eviction_policy,
                       remote=_remote_from_wire(msg.remote) if msg.HasField("remote") else None)


def _remote_from_wire(msg: pb.RemoteStats) -> RemoteTierStats:
    return RemoteTierStats(backend=msg.backend, available=msg.available, errors=msg.errors,
                           checksum_failures=msg.checksum_failures, dropped=msg.dropped,
                           pages_written=msg.pages_written)


def now_s() -> float:
    """The clock lease expiries are measured on."""
    return time.monotonic()
