"""The server's conversions between ``tierd.v1`` messages and the store's values.

Conversions the client shares (tiers, specs, handles, lease kinds, tier stats) are in
``tierd.wire``; what is here is the server's own: request fields to checked values, answers.

Inbound conversions validate: a value the wire allows but tierd does not (an enum number from a
newer client, a key of the wrong length) raises ``InvalidArgument`` naming the field.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace

from tierd import wire
from tierd.errors import InvalidArgument
from tierd.handles import HandleKind, RegionHandle
from tierd.keys import PageKey, check_key, check_keys
from tierd.remote.tier import RemoteStats
from tierd.server.metrics import ServerCounters
from tierd.spec import Namespace, PageSpec, check_registrable, check_tenant
from tierd.store.types import StoreStats
from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd.values import Lease


def tier_from_pb(value: int, default: Tier, field: str, allowed: Sequence[Tier] = tuple(Tier)) -> Tier:
    """The tier of wire value ``value``; ``default`` for unspecified; ``InvalidArgument`` for a
    value that is not one of ``allowed``."""
    if value == wire.TIER_UNSPECIFIED:
        return default
    try:
        tier = wire.tier_from_pb(value, field)
    except InvalidArgument:
        tier = None
    if tier is None or tier not in allowed:
        names = ", ".join(pb.Tier.Name(wire.tier_to_pb(t)) for t in allowed)
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


def parent_from_pb(message: object, field: str = "parent_key") -> PageKey | None:
    """An ``optional bytes`` parent key: ``None`` when absent, else a checked 16-byte key."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    try:
        return check_key(getattr(message, field))
    except InvalidArgument as exc:
        raise InvalidArgument(f"{type(message).__name__}.{field}: {exc} (the key of the page just "
                              "before keys[0]; leave it unset when keys[0] starts a chain)") from None


def seconds_from_pb(message: object, field: str, allow_zero: bool = False) -> float | None:
    """An ``optional double`` field: ``None`` when absent, else finite and above (or at) zero."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    value = float(getattr(message, field))
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "above 0"
        raise InvalidArgument(f"{field} must be a finite number of seconds {bound}, got {value}")
    return value


def register_from_pb(request: pb.RegisterRequest) -> tuple[PageSpec, str]:
    """The checked spec and tenant name ("" when not named) of a Register; ``InvalidArgument``
    naming the field, its limit and the value's size (never the whole value)."""
    if not request.HasField("spec"):
        raise InvalidArgument("RegisterRequest.spec is required: model, dtype, num_layers, "
                              "num_kv_heads, head_dim, page_tokens")
    tenant = request.tenant
    if tenant:
        check_tenant(tenant, "RegisterRequest.tenant")
    spec = wire.spec_from_pb(request.spec)
    check_registrable(spec)
    return spec, tenant


def register_to_pb(ns: Namespace, handles: Sequence[RegionHandle], limits: pb.ServerLimits,
                   region_socket: str = "", epoch: bytes = b"") -> pb.RegisterResponse:
    """``region_socket``: where memfd handles are opened (empty: this daemon serves none);
    ``epoch``: the daemon run's epoch, stamped on every handle."""
    located = [replace(h, epoch=epoch,
                       socket_path=region_socket if h.kind is HandleKind.MEMFD else h.socket_path)
               for h in handles]
    return pb.RegisterResponse(ns_id=ns.ns_id, page_bytes=ns.page_bytes, fingerprint=ns.fingerprint,
                               regions=[wire.handle_to_pb(h) for h in located], tenant=ns.tenant,
                               spec=wire.spec_to_pb(ns.spec), limits=limits)


def lease_to_pb(lease: Lease, now_s: float | None = None) -> pb.Lease:
    """``expires_in_s`` is relative: the store's ``expires_at_s`` is this process's monotonic clock."""
    now_s = time.monotonic() if now_s is None else now_s
    message = pb.Lease(lease_id=lease.lease_id, ns_id=lease.ns_id, tier=wire.tier_to_pb(lease.tier),
                       kind=wire.lease_kind_to_pb(lease.kind), keys=list(lease.keys),
                       slots=list(lease.slots), expires_in_s=max(0.0, lease.expires_at_s - now_s))
    if lease.window is not None:  # windowed namespaces only: other leases stay as they were
        message.page_indices.extend(lease.window.page_indices)
        message.prefix_pages = lease.window.prefix_pages
    return message


def stats_to_pb(stats: StoreStats, counters: ServerCounters) -> pb.StatsResponse:
    tiers = [wire.tier_stats_to_pb(tier, stats.tiers[tier]) for tier in Tier if tier in stats.tiers]
    server = pb.ServerStats(sessions=counters.sessions, rpcs_in_flight=counters.rpcs_in_flight,
                            rpcs_rejected=counters.rpcs_rejected, version=counters.version,
                            device=counters.device)
    return pb.StatsResponse(tiers=tiers, namespaces=stats.namespaces, leases=stats.leases,
                            checksum_failures=stats.checksum_failures, uptime_s=stats.uptime_s,
                            write_policy=wire.write_policy_to_pb(stats.write_policy.value),
                            server=server, disk_writes_refused=stats.disk_writes_refused,
                            disk_write_failures=stats.disk_write_failures,
                            disk_write_error=stats.disk_write_error,
                            remote=_remote_to_pb(stats.remote),
                            evictions_with_children=stats.evictions_with_children,
                            eviction_policy=stats.eviction_policy.value)


def _remote_to_pb(remote: RemoteStats | None) -> pb.RemoteStats | None:
    if remote is None:
        return None
    return pb.RemoteStats(backend=remote.backend, available=remote.available, errors=remote.errors,
                          checksum_failures=remote.checksum_failures, dropped=remote.dropped,
                          pages_written=remote.pages_written)
