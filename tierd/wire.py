"""Conversions between ``tierd.v1`` messages and the shared values, for the server and the client.

A shared value module (imports only other shared value modules and the generated stubs). Inbound
conversions validate: a value the wire allows but tierd does not know (an enum number from a newer
peer) raises ``InvalidArgument`` naming the field; each side turns that into its own error.
"""

from __future__ import annotations

from typing import cast

from tierd.errors import InvalidArgument
from tierd.handles import HandleKind, RegionHandle
from tierd.spec import DEFAULT_LAYOUT, PageSpec
from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd.values import LeaseKind, LeaseWindow, TierStats

# Wire tier values are the tier index + 1; 0 means "unspecified".
_TIER_OFFSET = 1
TIER_UNSPECIFIED = pb.TIER_UNSPECIFIED

_HANDLE_KINDS: dict[HandleKind, pb.HandleKind] = {
    HandleKind.MEMFD: pb.HANDLE_KIND_MEMFD, HandleKind.CUDA_IPC: pb.HANDLE_KIND_CUDA_IPC}
_HANDLE_KINDS_IN: dict[int, HandleKind] = {int(v): k for k, v in _HANDLE_KINDS.items()}
_LEASE_KINDS: dict[LeaseKind, pb.LeaseKind] = {
    LeaseKind.READ: pb.LEASE_KIND_READ, LeaseKind.FILL: pb.LEASE_KIND_FILL}
_LEASE_KINDS_IN: dict[int, LeaseKind] = {int(v): k for k, v in _LEASE_KINDS.items()}
# Write policies by their config names (``tierd.config.WritePolicy`` values).
_WRITE_POLICIES: dict[str, pb.WritePolicy] = {
    "write_back": pb.WRITE_POLICY_WRITE_BACK, "write_through": pb.WRITE_POLICY_WRITE_THROUGH}
_WRITE_POLICIES_IN: dict[int, str] = {int(v): k for k, v in _WRITE_POLICIES.items()}


def tier_to_pb(tier: Tier) -> pb.Tier:
    """``Tier.HBM`` -> ``TIER_HBM``."""
    if not isinstance(tier, Tier):
        raise InvalidArgument(f"tier must be a tierd.Tier (HBM, DRAM, DISK), got {tier!r}")
    return cast("pb.Tier", int(tier) + _TIER_OFFSET)


def tier_from_pb(value: int, field: str) -> Tier:
    """The tier of a (specified) wire value; ``InvalidArgument`` naming ``field`` otherwise."""
    if not _TIER_OFFSET <= value < _TIER_OFFSET + len(Tier):
        names = ", ".join(pb.Tier.Name(tier_to_pb(t)) for t in Tier)
        raise InvalidArgument(f"{field} must be one of {names}, got {value}")
    return Tier(value - _TIER_OFFSET)


def spec_to_pb(spec: PageSpec) -> pb.PageSpec:
    if not isinstance(spec, PageSpec):
        raise InvalidArgument(f"spec must be a PageSpec, got {type(spec).__name__}")
    return pb.PageSpec(model=spec.model, dtype=spec.dtype, num_layers=spec.num_layers,
                       num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
                       page_tokens=spec.page_tokens,
                       layout="" if spec.layout == DEFAULT_LAYOUT else spec.layout,
                       window_tokens=spec.window_tokens, sink_tokens=spec.sink_tokens,
                       cold_format=spec.cold_format)


def spec_from_pb(message: pb.PageSpec) -> PageSpec:
    """A checked ``PageSpec`` (``InvalidArgument`` for a field tierd does not accept); an empty
    ``layout`` (a peer that predates it, or the default) is ``DEFAULT_LAYOUT``; unset window
    fields are full attention; an empty ``cold_format`` is exact."""
    return PageSpec(model=message.model, dtype=message.dtype, num_layers=message.num_layers,
                    num_kv_heads=message.num_kv_heads, head_dim=message.head_dim,
                    page_tokens=message.page_tokens, layout=message.layout or DEFAULT_LAYOUT,
                    window_tokens=message.window_tokens, sink_tokens=message.sink_tokens,
                    cold_format=message.cold_format)


def handle_to_pb(handle: RegionHandle) -> pb.RegionHandle:
    return pb.RegionHandle(tier=tier_to_pb(handle.tier), kind=_HANDLE_KINDS[handle.kind],
                           name=handle.name, offset_bytes=handle.offset_bytes,
                           size_bytes=handle.size_bytes, page_bytes=handle.page_bytes,
                           num_slots=handle.num_slots, device=handle.device,
                           ipc_handle=handle.ipc_handle, grant=handle.grant,
                           socket_path=handle.socket_path, index_bytes=handle.index_bytes,
                           epoch=handle.epoch)


def handle_from_pb(message: pb.RegionHandle) -> RegionHandle:
    kind = _HANDLE_KINDS_IN.get(message.kind)
    if kind is None:
        raise InvalidArgument(f"RegionHandle.kind {message.kind} is not a handle kind tierd knows")
    return RegionHandle(tier=tier_from_pb(message.tier, "RegionHandle.tier"), kind=kind,
                        name=message.name, offset_bytes=message.offset_bytes,
                        size_bytes=message.size_bytes, page_bytes=message.page_bytes,
                        num_slots=message.num_slots, device=message.device or "cpu",
                        ipc_handle=bytes(message.ipc_handle), grant=bytes(message.grant),
                        socket_path=message.socket_path, index_bytes=message.index_bytes,
                        epoch=bytes(message.epoch))


def lease_kind_to_pb(kind: LeaseKind) -> pb.LeaseKind:
    return _LEASE_KINDS[kind]


def lease_kind_from_pb(value: int) -> LeaseKind:
    kind = _LEASE_KINDS_IN.get(value)
    if kind is None:
        raise InvalidArgument(f"Lease.kind {value} is not a lease kind tierd knows")
    return kind


def lease_window_from_pb(message: pb.Lease) -> LeaseWindow | None:
    """The window of a READ lease of a windowed namespace; ``None`` when the lease has none (its
    keys are the request's leading ones). ``InvalidArgument`` unless ``page_indices`` gives one
    ascending index per key, the last ``prefix_pages - 1`` (a window always holds the page just
    before the continuation)."""
    indices = tuple(message.page_indices)
    prefix = message.prefix_pages
    if not indices and not prefix:
        return None
    ascending = all(a < b for a, b in zip(indices, indices[1:]))
    if len(indices) != len(message.keys) or not ascending or indices[-1:] != (prefix - 1,):
        raise InvalidArgument(f"Lease.page_indices must be {len(message.keys)} ascending indices "
                              f"ending at Lease.prefix_pages - 1 = {prefix - 1}, got "
                              f"{len(indices)}: {list(indices[:8])}")
    return LeaseWindow(prefix, indices)


def write_policy_to_pb(name: str) -> pb.WritePolicy:
    """``"write_back"`` / ``"write_through"`` (a ``WritePolicy`` value) to the wire enum."""
    return _WRITE_POLICIES[name]


def write_policy_from_pb(value: int) -> str:
    """The config name of a wire write policy; ``"unspecified"`` for one tierd does not know."""
    return _WRITE_POLICIES_IN.get(value, "unspecified")


def tier_stats_to_pb(tier: Tier, stats: TierStats) -> pb.TierStats:
    return pb.TierStats(tier=tier_to_pb(tier), capacity_bytes=stats.capacity_bytes,
                        used_bytes=stats.used_bytes, pages=stats.pages, hits=stats.hits,
                        misses=stats.misses, evictions=stats.evictions, bytes_in=stats.bytes_in,
                        bytes_out=stats.bytes_out, queue_depth=stats.queue_depth,
                        quantized_pages=stats.quantized_pages,
                        quantized_bytes_saved=stats.quantized_bytes_saved,
                        pinned_bytes=stats.pinned_bytes)


def tier_stats_from_pb(message: pb.TierStats) -> tuple[Tier, TierStats]:
    stats = TierStats(capacity_bytes=message.capacity_bytes, used_bytes=message.used_bytes,
                      pages=message.pages, hits=message.hits, misses=message.misses,
                      evictions=message.evictions, bytes_in=message.bytes_in,
                      bytes_out=message.bytes_out, queue_depth=message.queue_depth,
                      quantized_pages=message.quantized_pages,
                      quantized_bytes_saved=message.quantized_bytes_saved,
                      pinned_bytes=message.pinned_bytes)
    return tier_from_pb(message.tier, "TierStats.tier"), stats
