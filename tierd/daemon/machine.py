"""Facts about this machine that start-up checks compare the config with.

``MachineFacts.probe()`` reads them once; tests build ``MachineFacts`` by hand. The GPU probe asks
the CUDA *driver* (``libcuda``, through ctypes) for device count and total memory: it creates no
context, costs no GPU memory, and needs neither torch nor CuPy. Free memory needs a context: only
for the one device the daemon will use, ``cuda_free_bytes`` retains that device's primary context
for the query and releases it (never touching another GPU).
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tierd.tiers.host_memory import mem_available_bytes

log = logging.getLogger(__name__)

_CUDA_SUCCESS = 0


def unknown_free_bytes(device_index: int) -> int | None:
    """The answer without a GPU to ask: unknown."""
    return None


@dataclass(frozen=True)
class MachineFacts:
    """What start-up checks need. ``None`` means "unknown" (the check is skipped), except
    ``memlock_limit_bytes`` where ``None`` means unlimited."""

    mem_available_bytes: int | None
    memlock_limit_bytes: int | None
    cuda_total_bytes: tuple[int, ...]  # one entry per visible CUDA device
    # Free bytes of one device, asked only for the device the daemon uses (it makes a context).
    cuda_free_bytes: Callable[[int], int | None] = unknown_free_bytes

    @classmethod
    def probe(cls) -> MachineFacts:
        return cls(mem_available_bytes=mem_available_bytes(),
                   memlock_limit_bytes=memlock_limit_bytes(), cuda_total_bytes=cuda_devices(),
                   cuda_free_bytes=cuda_device_free_bytes)


def existing_path(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (where free space is measured)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def used_bytes_under(path: Path) -> int:
    """Bytes allocated to regular files under ``path`` (sparse files count what they occupy)."""
    total = 0
    if not path.is_dir():
        return 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


def memlock_limit_bytes() -> int | None:
    """The soft ``RLIMIT_MEMLOCK`` in bytes; ``None`` when unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft


def cuda_devices() -> tuple[int, ...]:
    """Total memory in bytes of each CUDA device visible to this process; ``()`` without a driver."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return ()
    if cuda.cuInit(0) != _CUDA_SUCCESS:
        log.info("the CUDA driver is installed but cuInit failed: no usable GPU")
        return ()
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != _CUDA_SUCCESS:
        return ()
    totals: list[int] = []
    for ordinal in range(count.value):
        device = ctypes.c_int(0)
        total = ctypes.c_size_t(0)
        if (cuda.cuDeviceGet(ctypes.byref(device), ordinal) != _CUDA_SUCCESS
                or cuda.cuDeviceTotalMem_v2(ctypes.byref(total), device) != _CUDA_SUCCESS):
            return tuple(totals)
        totals.append(total.value)
    return tuple(totals)


def cuda_device_free_bytes(device_index: int) -> int | None:
    """Free memory in bytes of visible CUDA device ``device_index``; ``None`` when it cannot be read.

    ``cuMemGetInfo`` answers for the current context, so this retains the device's primary context
    (the one CuPy uses later: no second context), pushes it, asks, pops it and releases it.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    device = ctypes.c_int(0)
    if (cuda.cuInit(0) != _CUDA_SUCCESS
            or cuda.cuDeviceGet(ctypes.byref(device), ctypes.c_int(device_index)) != _CUDA_SUCCESS):
        return None
    release = getattr(cuda, "cuDevicePrimaryCtxRelease_v2", None) or cuda.cuDevicePrimaryCtxRelease
    context = ctypes.c_void_p(None)
    if cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device) != _CUDA_SUCCESS:
        log.info("cannot make a context on cuda:%d to read its free memory", device_index)
        return None
    try:
        if cuda.cuCtxPushCurrent_v2(context) != _CUDA_SUCCESS:
            return None
        try:
            free = ctypes.c_size_t(0)
            total = ctypes.c_size_t(0)
            status = cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total))
        finally:
            popped = ctypes.c_void_p(None)
            cuda.cuCtxPopCurrent_v2(ctypes.byref(popped))
        return free.value if status == _CUDA_SUCCESS else None
    finally:
        release(device)
