"""The fake device arena: a budget like any arena, memory no host code reaches."""

from __future__ import annotations

import pytest

from tierd.errors import ResourceExhausted, Unavailable
from tierd.tier import Tier
from tierd.tiers.base import Medium
from tierd.tiers.fake_device import SENTINEL_BYTE, FakeDeviceArena


def test_regions_take_the_budget_and_give_it_back_on_close() -> None:
    arena = FakeDeviceArena(Tier.HBM, 10 * 64)
    first = arena.create_region(1, 6, 64)
    assert arena.assigned_bytes == 6 * 64 and first.size_bytes == 6 * 64
    with pytest.raises(ResourceExhausted, match=r"asks for .* but only .*\(256 bytes\) of the hbm budget"):
        arena.create_region(2, 5, 64)
    first.close()
    first.close()
    assert arena.assigned_bytes == 0
    second = arena.create_region(2, 10, 64)
    arena.close()
    assert second.closed and arena.assigned_bytes == 0
    with pytest.raises(Unavailable, match="closed"):
        arena.create_region(3, 1, 64)


def test_device_memory_starts_as_sentinels_and_has_no_host_view() -> None:
    arena = FakeDeviceArena(Tier.HBM, 4 * 64)
    region = arena.create_region(1, 4, 64)
    assert region.medium is Medium.DEVICE and region.handle() is None
    assert not hasattr(region, "slot_view") and not hasattr(region, "array")
    assert (arena.device_pages(region) == SENTINEL_BYTE).all()
    region.close()
    with pytest.raises(Unavailable):
        arena.device_pages(region)
