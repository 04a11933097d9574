"""Region handles: what a client is told so that it can map a namespace's region.

A shared value module: the daemon builds handles, the worker library (``tierd_client``) maps them;
nothing here imports the store.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from tierd.tier import Tier

# Where shm regions live; a handle of kind SHM names a file directly in this folder.
SHM_DIR = Path("/dev/shm")


class HandleKind(enum.Enum):
    """How a client maps a region."""

    SHM = "shm"            # a file under /dev/shm: open + mmap ``name``
    CUDA_IPC = "cuda_ipc"  # a cudaIpcMemHandle (bytes), opened once per process


@dataclass(frozen=True)
class RegionHandle:
    """What a client needs to map a region: ``size_bytes`` at ``offset_bytes`` of ``name``.

    Slot ``i`` is bytes ``[i * page_bytes, (i + 1) * page_bytes)`` of the mapped range.
    """

    tier: Tier
    kind: HandleKind
    name: str
    offset_bytes: int
    size_bytes: int
    page_bytes: int
    num_slots: int
    device: str = "cpu"
    ipc_handle: bytes = b""
