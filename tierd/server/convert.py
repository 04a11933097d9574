"""Conversions between ``tierd.v1`` messages and the store's values.

Inbound conversions validate: a value the wire allows but tierd does not (an enum number from a
newer client, a key of the wrong length) raises ``InvalidArgument`` naming the field.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from tierd.config import WritePolicy
from tierd.errors import InvalidArgument
from tierd.index.leases import Lease, LeaseKind
from tierd.keys import PageKey, check_keys
from tierd.server.metrics import ServerCounters
from tierd.spec import Namespace, PageSpec
from tierd.store_types import StoreStats
from tierd.tier import Tier
from tierd.tiers.base import HandleKind, RegionHandle
from tierd.v1 import tierd_pb2 as pb

_HANDLE_KINDS = {HandleKind.SHM: pb.HANDLE_KIND_SHM, HandleKind.CUDA_IPC: pb.HANDLE_KIND_CUDA_IPC}
_LEASE_KINDS = {LeaseKind.READ: pb.LEASE_KIND_READ, LeaseKind.FILL: pb.LEASE_KIND_FILL}
_WRITE_POLICIES = {WritePolicy.WRITE_BACK: pb.WRITE_POLICY_WRITE_BACK,
                   WritePolicy.WRITE_THROUGH: pb.WRITE_POLICY_WRITE_THROUGH}


def tier_to_pb(tier: Tier) -> int:
    """``Tier.HBM`` -> ``TIER_HBM`` (the wire value is the tier index + 1; 0 is unspecified)."""
    return int(tier) + 1


def tier_from_pb(value: int, default: Tier, field: str, allowed: Sequence[Tier] = tuple(Tier)) -> Tier:
    """The tier of wire value ``value``; ``default`` for unspecified; ``InvalidArgument`` else."""
    if value == pb.TIER_UNSPECIFIED:
        return default
    tier = Tier(value - 1) if 1 <= value <= len(Tier) else None
    if tier is None or tier not in allowed:
        names = ", ".join(pb.Tier.Name(tier_to_pb(t)) for t in allowed)
        raise InvalidArgument(f"{field} must be one of {names} (or unspecified), got {value}")
    return tier


def keys_from_pb(keys: Sequence[bytes], max_keys: int, field: str = "keys") -> list[PageKey]:
    """Checked 16-byte keys; ``InvalidArgument`` for too many or a bad one (naming its index)."""
    if len(keys) > max_keys:
        raise InvalidArgument(f"{field} has {len(keys)} entries; at most {max_keys} per request: "
                              "split the request")
    try:
        return check_keys(keys)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{field}: {exc}") from None


def seconds_from_pb(message: object, field: str, allow_zero: bool = False) -> float | None:
    """An ``optional double`` field: ``None`` when absent, else finite and above (or at) zero."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    value = getattr(message, field)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "above 0"
        raise InvalidArgument(f"{field} must be a finite number of seconds {bound}, got {value}")
    return value


def spec_from_pb(message: pb.PageSpec) -> PageSpec:
    return PageSpec(model=message.model, dtype=message.dtype, num_layers=message.num_layers,
                    num_kv_heads=message.num_kv_heads, head_dim=message.head_dim,
                    page_tokens=message.page_tokens)


def spec_to_pb(spec: PageSpec) -> pb.PageSpec:
    return pb.PageSpec(model=spec.model, dtype=spec.dtype, num_layers=spec.num_layers,
                       num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
                       page_tokens=spec.page_tokens)


def handle_to_pb(handle: RegionHandle) -> pb.RegionHandle:
    return pb.RegionHandle(tier=tier_to_pb(handle.tier), kind=_HANDLE_KINDS[handle.kind],
                           name=handle.name, offset_bytes=handle.offset_bytes,
                           size_bytes=handle.size_bytes, page_bytes=handle.page_bytes,
                           num_slots=handle.num_slots, device=handle.device,
                           ipc_handle=handle.ipc_handle)


def register_to_pb(ns: Namespace, handles: Sequence[RegionHandle],
                   limits: pb.ServerLimits) -> pb.RegisterResponse:
    return pb.RegisterResponse(ns_id=ns.ns_id, page_bytes=ns.page_bytes, fingerprint=ns.fingerprint,
                               regions=[handle_to_pb(h) for h in handles], tenant=ns.tenant,
                               spec=spec_to_pb(ns.spec), limits=limits)


def lease_to_pb(lease: Lease, now_s: float | None = None) -> pb.Lease:
    """``expires_in_s`` is relative: the store's ``expires_at_s`` is this process's monotonic clock."""
    now_s = time.monotonic() if now_s is None else now_s
    return pb.Lease(lease_id=lease.lease_id, ns_id=lease.ns_id, tier=tier_to_pb(lease.tier),
                    kind=_LEASE_KINDS[lease.kind], keys=list(lease.keys), slots=list(lease.slots),
                    expires_in_s=max(0.0, lease.expires_at_s - now_s))


def stats_to_pb(stats: StoreStats, counters: ServerCounters) -> pb.StatsResponse:
    tiers = []
    for tier in Tier:
        t = stats.tiers[tier]
        tiers.append(pb.TierStats(tier=tier_to_pb(tier), capacity_bytes=t.capacity_bytes,
                                  used_bytes=t.used_bytes, pages=t.pages, hits=t.hits,
                                  misses=t.misses, evictions=t.evictions, bytes_in=t.bytes_in,
                                  bytes_out=t.bytes_out, queue_depth=t.queue_depth))
    server = pb.ServerStats(sessions=counters.sessions, rpcs_in_flight=counters.rpcs_in_flight,
                            rpcs_rejected=counters.rpcs_rejected, version=counters.version,
                            device=counters.device)
    return pb.StatsResponse(tiers=tiers, namespaces=stats.namespaces, leases=stats.leases,
                            checksum_failures=stats.checksum_failures, uptime_s=stats.uptime_s,
                            write_policy=_WRITE_POLICIES[stats.write_policy], server=server,
                            disk_writes_refused=stats.disk_writes_refused)
