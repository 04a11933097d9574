"""The conversions the server and the client share (``tierd.wire``) round-trip, and refuse
values tierd does not know with the field named."""

from __future__ import annotations

import pytest

from tierd import wire
from tierd.errors import InvalidArgument
from tierd.handles import HandleKind, RegionHandle
from tierd.spec import PageSpec
from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd.values import LeaseKind, TierStats


@pytest.mark.parametrize("tier", list(Tier))
def test_tiers_round_trip(tier: Tier) -> None:
    assert wire.tier_from_pb(wire.tier_to_pb(tier), "tier") is tier


@pytest.mark.parametrize("value", [0, 5, 99])
def test_unknown_tier_values_name_the_field(value: int) -> None:
    with pytest.raises(InvalidArgument, match="header.tier must be one of TIER_HBM"):
        wire.tier_from_pb(value, "header.tier")


def test_specs_handles_lease_kinds_and_stats_round_trip() -> None:
    spec = PageSpec("m@r", "bf16", 2, 4, 64, 16)
    assert wire.spec_from_pb(wire.spec_to_pb(spec)) == spec
    handle = RegionHandle(Tier.DRAM, HandleKind.MEMFD, "tierd-dram-ns1-ab", 0, 4096, 1024, 4,
                          grant=bytes(range(32)), socket_path="/run/tierd/tierd-regions.sock",
                          index_bytes=2112)
    assert wire.handle_from_pb(wire.handle_to_pb(handle)) == handle
    for kind in LeaseKind:
        assert wire.lease_kind_from_pb(wire.lease_kind_to_pb(kind)) is kind
    stats = TierStats(1, 2, 3, 4, 5, 6, 7, 8, 9)
    assert wire.tier_stats_from_pb(wire.tier_stats_to_pb(Tier.DISK, stats)) == (Tier.DISK, stats)
    pinned = TierStats(1, 2, 3, 4, 5, 6, 7, 8, 9, pinned_bytes=5 << 30)
    assert wire.tier_stats_to_pb(Tier.DRAM, pinned).pinned_bytes == 5 << 30
    assert wire.tier_stats_from_pb(wire.tier_stats_to_pb(Tier.DRAM, pinned)) == (Tier.DRAM, pinned)
    assert wire.write_policy_from_pb(wire.write_policy_to_pb("write_through")) == "write_through"
    assert wire.write_policy_from_pb(77) == "unspecified"


def test_unknown_enums_and_bad_specs_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="RegionHandle.kind 7"):
        wire.handle_from_pb(pb.RegionHandle(tier=pb.TIER_HBM, kind=7))
    with pytest.raises(InvalidArgument, match="RegionHandle.kind 1"):  # retired named /dev/shm files
        wire.handle_from_pb(pb.RegionHandle(tier=pb.TIER_HBM, kind=pb.HANDLE_KIND_SHM))
    with pytest.raises(InvalidArgument, match="Lease.kind 0"):
        wire.lease_kind_from_pb(0)
    with pytest.raises(InvalidArgument, match="dtype"):
        wire.spec_from_pb(pb.PageSpec(model="m", dtype="float7", num_layers=1, num_kv_heads=1,
                                      head_dim=1, page_tokens=1))
