"""Per-tier counters of Stats: hits, misses, evictions, bytes in and out.

Owned by the manager and changed under its lock only.
"""

from __future__ import annotations

from collections.abc import Sequence

from tierd.store.types import TierCounters
from tierd.tier import LOCAL_TIERS, Tier

ALL_TIERS: tuple[Tier, ...] = LOCAL_TIERS  # the remote tier counts its own (tierd.remote.tier)


class Counters:
    def __init__(self) -> None:
        self.tiers: dict[Tier, TierCounters] = {tier: TierCounters() for tier in ALL_TIERS}
        # Memory evictions of pages with a child resident in the tier they left (the disk book
        # counts its own): what prefix-aware eviction avoids, counted under every policy.
        self.evictions_with_children = 0

    def __getitem__(self, tier: Tier) -> TierCounters:
        return self.tiers[tier]

    def lookup(self, tiers: Sequence[Tier], missed: bool) -> None:
        """A hit counts in the tier that served it and a miss in each faster tier it passed;
        the first key not cached counts a miss in every tier."""
        passed = 0  # hits served below the tier being counted
        for tier in reversed(ALL_TIERS):
            served = tiers.count(tier)
            self.tiers[tier].hits += served
            self.tiers[tier].misses += passed + int(missed)
            passed += served

    def moved(self, src: Tier, dst: Tier, num_bytes: int) -> None:
        """A page's bytes left ``src`` and arrived in ``dst``."""
        self.tiers[src].bytes_out += num_bytes
        self.tiers[dst].bytes_in += num_bytes
