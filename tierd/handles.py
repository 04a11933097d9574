"""Region handles: what a client is told so that it can map a namespace's region.

A shared value module: the daemon builds handles, the worker library (``tierd_client``) maps them;
nothing here imports the store.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tierd.tier import Tier


class HandleKind(enum.Enum):
    """How a client maps a region."""

    # Unnamed host memory (memfd): the client presents ``grant`` on the daemon's region socket
    # (``socket_path``) and gets the region's file descriptor back (SCM_RIGHTS) to mmap.
    MEMFD = "memfd"
    CUDA_IPC = "cuda_ipc"  # a cudaIpcMemHandle (bytes), opened once per process


@dataclass(frozen=True)
class RegionHandle:
    """What a client needs to map a region: ``size_bytes`` at ``offset_bytes`` of it.

    Slot ``i`` is bytes ``[i * page_bytes, (i + 1) * page_bytes)`` of the mapped range. ``name``
    labels the region in messages; it opens nothing. ``grant`` is the secret that opens a memfd
    region: the daemon gives it only to callers of the namespace's tenant (never logged).
    """

    tier: Tier
    kind: HandleKind
    name: str
    offset_bytes: int
    size_bytes: int
    page_bytes: int
    num_slots: int
    device: str = "cpu"
    ipc_handle: bytes = field(default=b"", repr=False)
    grant: bytes = field(default=b"", repr=False)
    socket_path: str = ""
    # Bytes of the region's read-only page index (``tierd.page_index``), 0 without one.
    index_bytes: int = 0
    # The daemon run that made the handle (proto RegionHandle.epoch): a CUDA mapping is stale once
    # the session reports another.
    epoch: bytes = field(default=b"", repr=False)
