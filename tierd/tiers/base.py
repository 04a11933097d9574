"""Interfaces of the memory tiers' media.

An **arena** is one tier's byte budget (``capacity_bytes``) from which per-namespace **regions**
are carved. A region is one shm segment or device allocation of ``num_slots * page_bytes`` bytes;
slot ``i`` is bytes ``[i * page_bytes, (i + 1) * page_bytes)``. Regions copy whole pages; which
slot holds which page is the index's business, not theirs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from tierd.tier import Tier


class HandleKind(enum.Enum):
    """How a client maps a region."""

    SHM = "shm"            # a file under /dev/shm: open + mmap ``name``
    CUDA_IPC = "cuda_ipc"  # a cudaIpcMemHandle (bytes), opened once per process


@dataclass(frozen=True)
class RegionHandle:
    """What a client needs to map a region: ``size_bytes`` at ``offset_bytes`` of ``name``."""

    tier: Tier
    kind: HandleKind
    name: str
    offset_bytes: int
    size_bytes: int
    page_bytes: int
    num_slots: int
    device: str = "cpu"
    ipc_handle: bytes = b""


class Region(Protocol):
    """One namespace's pages in one tier. Thread-safe for copies to distinct slots."""

    @property
    def num_slots(self) -> int: ...

    @property
    def page_bytes(self) -> int: ...

    @property
    def size_bytes(self) -> int: ...

    def handle(self) -> RegionHandle: ...

    def write_slot(self, slot: int, src: memoryview) -> None:
        """Copy one page (``page_bytes`` bytes) into ``slot``."""

    def read_slot(self, slot: int, dst: memoryview) -> None:
        """Copy one page out of ``slot`` into ``dst`` (``page_bytes`` bytes, writable)."""

    def slot_view(self, slot: int) -> memoryview:
        """Zero-copy view of ``slot`` (host-addressable regions only)."""

    def close(self) -> None:
        """Unmap and free the memory; idempotent."""


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
