"""Translation between the wire messages (``tierd.v1``) and the client's Python values."""

from __future__ import annotations

import time
from typing import cast

from tierd.spec import PageSpec
from tierd.tier import Tier
from tierd.tiers.base import HandleKind, RegionHandle
from tierd.v1 import tierd_pb2 as pb
from tierd_client.errors import InvalidArgumentError, TierdRpcError
from tierd_client.types import (DaemonStats, LeaseKind, LeaseState, LookupResult, NamespaceHandle,
                                ServerLimits, TierStats)

# Wire tier values are the daemon's tier index + 1; 0 means "unspecified".
_WIRE_TIER_OFFSET = 1

_HANDLE_KINDS = {pb.HANDLE_KIND_SHM: HandleKind.SHM, pb.HANDLE_KIND_CUDA_IPC: HandleKind.CUDA_IPC}
_LEASE_KINDS = {pb.LEASE_KIND_READ: LeaseKind.READ, pb.LEASE_KIND_FILL: LeaseKind.FILL}
_WRITE_POLICIES = {pb.WRITE_POLICY_WRITE_BACK: "write_back",
                   pb.WRITE_POLICY_WRITE_THROUGH: "write_through"}


def tier_to_wire(tier: Tier) -> pb.Tier:
    if not isinstance(tier, Tier):
        raise InvalidArgumentError(f"tier must be a tierd.Tier (HBM, DRAM, DISK), got {tier!r}")
    return cast("pb.Tier", int(tier) + _WIRE_TIER_OFFSET)


def tier_from_wire(value: int) -> Tier:
    try:
        return Tier(value - _WIRE_TIER_OFFSET)
    except ValueError:
        raise TierdRpcError(f"the daemon answered an unknown tier value {value}; "
                            "client and daemon versions differ") from None


def spec_to_wire(spec: PageSpec) -> pb.PageSpec:
    if not isinstance(spec, PageSpec):
        raise InvalidArgumentError(f"spec must be a tierd_client.PageSpec, got {type(spec).__name__}")
    return pb.PageSpec(model=spec.model, dtype=spec.dtype, num_layers=spec.num_layers,
                       num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
                       page_tokens=spec.page_tokens)


def spec_from_wire(msg: pb.PageSpec) -> PageSpec:
    return PageSpec(model=msg.model, dtype=msg.dtype, num_layers=msg.num_layers,
                    num_kv_heads=msg.num_kv_heads, head_dim=msg.head_dim,
                    page_tokens=msg.page_tokens)


def region_from_wire(msg: pb.RegionHandle) -> RegionHandle:
    kind = _HANDLE_KINDS.get(msg.kind)
    if kind is None:
        raise TierdRpcError(f"the daemon answered an unknown region handle kind {msg.kind}")
    return RegionHandle(tier=tier_from_wire(msg.tier), kind=kind, name=msg.name,
                        offset_bytes=msg.offset_bytes, size_bytes=msg.size_bytes,
                        page_bytes=msg.page_bytes, num_slots=msg.num_slots,
                        device=msg.device or "cpu", ipc_handle=bytes(msg.ipc_handle))


def limits_from_wire(msg: pb.ServerLimits) -> ServerLimits:
    return ServerLimits(max_message_bytes=msg.max_message_bytes, chunk_bytes=msg.chunk_bytes,
                        max_put_bytes=msg.max_put_bytes,
                        max_keys_per_request=msg.max_keys_per_request,
                        max_get_bytes=msg.max_get_bytes)


def namespace_from_wire(msg: pb.RegisterResponse, asked: PageSpec) -> NamespaceHandle:
    """The handle of a Register answer; the spec is the daemon's canonical one (same fields)."""
    spec = spec_from_wire(msg.spec) if msg.HasField("spec") else asked
    if spec != asked:
        raise TierdRpcError(f"the daemon registered {spec} for the requested {asked}; "
                            "client and daemon disagree on the spec")
    return NamespaceHandle(ns_id=msg.ns_id, tenant=msg.tenant, spec=spec,
                           fingerprint=bytes(msg.fingerprint), page_bytes=msg.page_bytes,
                           regions=tuple(region_from_wire(r) for r in msg.regions),
                           limits=limits_from_wire(msg.limits))


def lease_from_wire(msg: pb.Lease, sent_at_s: float) -> LeaseState:
    """``sent_at_s``: ``time.monotonic()`` when the request left, so expiry errs on the early side."""
    kind = _LEASE_KINDS.get(msg.kind)
    if kind is None:
        raise TierdRpcError(f"the daemon answered an unknown lease kind {msg.kind}")
    return LeaseState(lease_id=msg.lease_id, ns_id=msg.ns_id, tier=tier_from_wire(msg.tier),
                      kind=kind, keys=tuple(bytes(k) for k in msg.keys),
                      slots=tuple(msg.slots), expires_at_s=sent_at_s + msg.expires_in_s)


def lookup_from_wire(msg: pb.LookupResponse) -> LookupResult:
    return LookupResult(num_hits=msg.num_hits, tiers=tuple(tier_from_wire(t) for t in msg.tiers))


def stats_from_wire(msg: pb.StatsResponse) -> DaemonStats:
    tiers = {}
    for t in msg.tiers:
        tier = tier_from_wire(t.tier)
        tiers[tier] = TierStats(capacity_bytes=t.capacity_bytes,
                                used_bytes=t.used_bytes, pages=t.pages, hits=t.hits,
                                misses=t.misses, evictions=t.evictions, bytes_in=t.bytes_in,
                                bytes_out=t.bytes_out, queue_depth=t.queue_depth)
    server = msg.server
    return DaemonStats(tiers=tiers, namespaces=msg.namespaces, leases=msg.leases,
                       checksum_failures=msg.checksum_failures, uptime_s=msg.uptime_s,
                       write_policy=_WRITE_POLICIES.get(msg.write_policy, "unspecified"),
                       sessions=server.sessions, rpcs_in_flight=server.rpcs_in_flight,
                       rpcs_rejected=server.rpcs_rejected, version=server.version,
                       device=server.device, disk_writes_refused=msg.disk_writes_refused)


def now_s() -> float:
    """The clock lease expiries are measured on."""
    return time.monotonic()
