"""A fake device tier for tests: memory that no host code can read or write.

``FakeDeviceArena`` hands out regions whose bytes live in arrays only the fake device engine
(``tierd.store.transfer.fake``) reaches, through ``device_pages`` (the "driver"): a region has no
``slot_view`` at all, so code that still reads hbm through a host pointer fails. Fresh slots hold
``SENTINEL_BYTE``, so code that reads a page before its copy completed sees sentinels.
"""

from __future__ import annotations

import threading

import numpy as np

from tierd.errors import InvalidArgument, Unavailable
from tierd.handles import RegionHandle
from tierd.page_index import PageIndexWriter
from tierd.tier import Tier
from tierd.tiers.base import Medium, RegionGeometry
from tierd.tiers.budget import ArenaBudget

SENTINEL_BYTE = 0xA5


class FakeDeviceRegion(RegionGeometry):
    """One namespace's pages in fake device memory (see the module docstring)."""

    def __init__(self, arena: FakeDeviceArena, ns_id: int, num_slots: int, page_bytes: int) -> None:
        super().__init__(num_slots, page_bytes)
        self._arena = arena
        self.ns_id = ns_id
        self._closed = False

    @property
    def medium(self) -> Medium:
        return Medium.DEVICE

    @property
    def closed(self) -> bool:
        return self._closed

    def handle(self) -> RegionHandle | None:
        """None: no client process can map fake device memory."""
        return None

    @property
    def page_index(self) -> PageIndexWriter | None:
        """None: no client reads fake device memory without a lease."""
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._arena.release(self)

    def __repr__(self) -> str:
        return f"FakeDeviceRegion(ns{self.ns_id}, {self._num_slots} x {self._page_bytes} B)"


class FakeDeviceArena:
    """The ``hbm`` tier of ``device = "fake"``: a budget of fake device memory (``ArenaBudget``)."""

    def __init__(self, tier: Tier, capacity_bytes: int) -> None:
        self._tier = tier
        self._budget = ArenaBudget(tier, capacity_bytes)
        self._lock = threading.Lock()
        self._memory: dict[int, np.ndarray] = {}   # id(region) -> [num_slots, page_bytes]
        self._regions: dict[int, FakeDeviceRegion] = {}

    @property
    def tier(self) -> Tier:
        return self._tier

    @property
    def capacity_bytes(self) -> int:
        return self._budget.capacity_bytes

    @property
    def assigned_bytes(self) -> int:
        return self._budget.assigned_bytes

    def create_region(self, ns_id: int, num_slots: int, page_bytes: int) -> FakeDeviceRegion:
        if num_slots < 1 or page_bytes < 1:
            raise InvalidArgument(f"a region needs at least one slot of at least one byte, got "
                                  f"{num_slots} x {page_bytes}")
        self._budget.reserve(ns_id, num_slots, page_bytes)
        region = FakeDeviceRegion(self, ns_id, num_slots, page_bytes)
        with self._lock:
            self._memory[id(region)] = np.full((num_slots, page_bytes), SENTINEL_BYTE, np.uint8)
            self._regions[id(region)] = region
        return region

    def device_pages(self, region: FakeDeviceRegion) -> np.ndarray:
        """The driver's access to a region's memory (the fake engine only)."""
        with self._lock:
            memory = self._memory.get(id(region))
        if memory is None or region.closed:
            raise Unavailable(f"{region!r} is closed")
        return memory

    def release(self, region: FakeDeviceRegion) -> None:
        with self._lock:
            known = self._regions.pop(id(region), None) is not None
            self._memory.pop(id(region), None)
        if known:
            self._budget.release(region.size_bytes)

    def close(self) -> None:
        self._budget.close()
        with self._lock:
            regions = list(self._regions.values())
        for region in regions:
            region.close()
