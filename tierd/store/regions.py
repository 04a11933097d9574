"""The regions of every namespace, carved from the tiers' arenas.

A new region gets ``region_share`` of what is left: of its tenant's quota in that tier (shared by
all the tenant's namespaces) when the tenant has one, else of the tier's unassigned bytes; with
``region_share = 0.5`` a tenant's namespaces get 1/2, 1/4, 1/8 ... of its quota. A region that
cannot hold one page is refused. Owns its lock; regions live until close.
"""

from __future__ import annotations

import threading

from tierd.config import StoreConfig
from tierd.errors import FailedPrecondition, ResourceExhausted
from tierd.handles import RegionHandle
from tierd.page_index import PageIndexWriter
from tierd.spec import Namespace
from tierd.tier import MEMORY_TIERS, Tier
from tierd.tiers.base import Arena, Region


class RegionTable:
    def __init__(self, config: StoreConfig, arenas: dict[Tier, Arena]) -> None:
        self._config = config
        self._arenas = arenas
        self._lock = threading.Lock()
        self._regions: dict[tuple[int, Tier], Region] = {}
        self._tenants: dict[int, str] = {}

    def ensure(self, ns: Namespace) -> dict[Tier, int]:
        """Create the namespace's missing regions; ``{tier: num_slots}`` of those created.

        ``ResourceExhausted`` (nothing of this call kept) when a tier cannot give it one slot;
        an hbm tier of capacity 0 is disabled and gives none.
        """
        created: dict[Tier, Region] = {}
        with self._lock:
            try:
                for tier in MEMORY_TIERS:
                    if (ns.ns_id, tier) in self._regions:
                        continue
                    region = self._create_locked(ns, tier)
                    if region is not None:
                        created[tier] = region
                        self._regions[(ns.ns_id, tier)] = region
                        self._tenants[ns.ns_id] = ns.tenant
            except BaseException:
                for tier, region in created.items():
                    del self._regions[(ns.ns_id, tier)]
                    region.close()
                raise
        return {tier: region.num_slots for tier, region in created.items()}

    def _create_locked(self, ns: Namespace, tier: Tier) -> Region | None:
        arena = self._arenas[tier]
        budget = self._budget_locked(ns, tier)
        num_slots = min(budget, arena.capacity_bytes - arena.assigned_bytes) // ns.page_bytes
        if num_slots < 1:
            if tier is Tier.HBM and arena.capacity_bytes == 0:
                return None  # hbm disabled: every page lives in dram and below
            raise ResourceExhausted(
                f"no {tier.label} room for namespace {ns.ns_id} of tenant {ns.tenant!r}: pages are "
                f"{ns.page_bytes} bytes and only {budget} bytes can be given to it; raise the "
                f"{tier.label} capacity or the tenant's quota")
        return arena.create_region(ns.ns_id, num_slots, ns.page_bytes)

    def _budget_locked(self, ns: Namespace, tier: Tier) -> int:
        arena = self._arenas[tier]
        quota = self._config.tenant_quotas.get(ns.tenant, {}).get(tier)
        if quota is None:
            share = self._config.memory_tier(tier).region_share
            return int(share * (arena.capacity_bytes - arena.assigned_bytes))
        taken = sum(region.size_bytes for (ns_id, t), region in self._regions.items()
                    if t is tier and self._tenants[ns_id] == ns.tenant)
        left = max(0, quota - taken)
        share = int(self._config.memory_tier(tier).region_share * left)
        # The last page that fits in the quota is given rather than refused for a rounding.
        return share if share >= ns.page_bytes else left

    def discard(self, ns_id: int) -> None:
        """Close the regions of a namespace whose registration failed."""
        with self._lock:
            gone = [key for key in self._regions if key[0] == ns_id]
            regions = [self._regions.pop(key) for key in gone]
        for region in regions:
            region.close()

    def get(self, ns_id: int, tier: Tier) -> Region:
        region = self._regions.get((ns_id, tier))
        if region is None:
            raise FailedPrecondition(f"namespace {ns_id} has no {tier.label} region")
        return region

    def page_index(self, ns_id: int, tier: Tier) -> PageIndexWriter | None:
        """The page index of the namespace's ``tier`` region, if it has one (host regions)."""
        region = self._regions.get((ns_id, tier))
        return region.page_index if region is not None else None

    def handles(self, ns_id: int) -> list[RegionHandle]:
        """Handles of the regions clients can map, hbm first."""
        out = []
        for tier in MEMORY_TIERS:
            region = self._regions.get((ns_id, tier))
            handle = region.handle() if region is not None else None
            if handle is not None:
                out.append(handle)
        return out
