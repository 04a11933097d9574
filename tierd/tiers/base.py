"""Interfaces of the memory tiers' media.

An **arena** is one tier's byte budget (``capacity_bytes``) from which per-namespace **regions**
are carved. A region is one shm segment or device allocation of ``num_slots * page_bytes`` bytes;
slot ``i`` is bytes ``[i * page_bytes, (i + 1) * page_bytes)``. Regions hold bytes; they neither
decide what goes where (the manager does) nor copy (the transfer engine does).
"""

from __future__ import annotations

import enum
from typing import Protocol

from tierd.handles import RegionHandle
from tierd.page_index import PageIndexWriter
from tierd.tier import Tier


class Medium(enum.Enum):
    """Where bytes live, which decides who can copy them (the engine's handler per pair)."""

    HOST = "host"      # host memory: ``HostRegion.slot_view`` is a writable memoryview of a slot
    DEVICE = "device"  # device memory (CUDA, or the fake device): only its transfer engine reaches it
    DISK = "disk"      # the LMDB environment of the disk tier


class Region(Protocol):
    """One namespace's pages in one tier."""

    @property
    def num_slots(self) -> int: ...

    @property
    def page_bytes(self) -> int: ...

    @property
    def size_bytes(self) -> int: ...

    @property
    def medium(self) -> Medium: ...

    def handle(self) -> RegionHandle | None:
        """What a local client needs to map the region; ``None`` when clients cannot map it."""

    @property
    def page_index(self) -> PageIndexWriter | None:
        """The writer of the region's shared page index (lease-free local reads), if it has one."""

    def close(self) -> None:
        """Unmap and free the memory; idempotent."""


class RegionGeometry:
    """What every region knows about itself: ``num_slots`` slots of ``page_bytes`` bytes."""

    def __init__(self, num_slots: int, page_bytes: int) -> None:
        self._num_slots = num_slots
        self._page_bytes = page_bytes

    @property
    def num_slots(self) -> int:
        return self._num_slots

    @property
    def page_bytes(self) -> int:
        return self._page_bytes

    @property
    def size_bytes(self) -> int:
        """``num_slots * page_bytes``."""
        return self._num_slots * self._page_bytes


class HostRegion(Region, Protocol):
    """A region in host memory: the transfer engine copies through slot views."""

    def slot_view(self, slot: int) -> memoryview:
        """Writable zero-copy view of ``slot`` (``page_bytes`` bytes)."""


class DeviceRegion(Region, Protocol):
    """A region in GPU memory: only the CUDA transfer engine reaches it, by device address."""

    @property
    def device_index(self) -> int: ...

    def device_ptr(self, slot: int) -> int:
        """Device address of ``slot``'s first byte (``InvalidArgument`` outside the region)."""


class Arena(Protocol):
    """One memory tier's budget, from which regions are carved."""

    @property
    def tier(self) -> Tier: ...

    @property
    def capacity_bytes(self) -> int: ...

    @property
    def assigned_bytes(self) -> int:
        """Bytes already given to regions."""

    def create_region(self, ns_id: int, num_slots: int, page_bytes: int) -> Region:
        """A new region of ``num_slots`` pages; ``ResourceExhausted`` if the budget cannot hold it."""

    def close(self) -> None:
        """Close every region; idempotent."""
