"""Start-up checks that host memory and ``/dev/shm`` can hold what the config asks for.

A shared-memory arena lives in tmpfs: its bytes count against both the machine's available
memory and the size of the ``/dev/shm`` mount, and a mapping that outgrows either one ends in
SIGBUS or the OOM killer rather than a clean error. So the daemon refuses such a config up front.
"""

from __future__ import annotations

import os
from pathlib import Path

from tierd.handles import SHM_DIR

from tierd.errors import ConfigError, InvalidArgument
from tierd.units import format_size

MEMINFO_PATH = Path("/proc/meminfo")
_KIB = 1024


def available_host_memory_bytes(meminfo_path: Path = MEMINFO_PATH) -> int:
    """Bytes the kernel estimates can be allocated without swapping (``MemAvailable``).

    Falls back to free physical pages (``sysconf``) where ``/proc/meminfo`` has no such line.
    """
    try:
        text = Path(meminfo_path).read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            fields = line.split()
            # The value is in kB (KiB in fact), the unit the kernel has always printed here.
            return int(fields[1]) * _KIB
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def shm_free_bytes(shm_dir: Path = SHM_DIR) -> int:
    """Bytes an unprivileged process can still allocate in the tmpfs mounted at ``shm_dir``."""
    stats = os.statvfs(shm_dir)
    return stats.f_bavail * stats.f_frsize


def check_host_memory(requested_bytes: int, what: str, *, meminfo_path: Path = MEMINFO_PATH,
                      shm_dir: Path = SHM_DIR) -> None:
    """Raise ``ConfigError`` if ``requested_bytes`` of shared memory cannot be had.

    ``what`` names the request in the message (e.g. ``"dram tier (capacity_bytes)"``). Both
    limits are checked: ``MemAvailable`` and the free space of ``shm_dir``.
    """
    if isinstance(requested_bytes, bool) or not isinstance(requested_bytes, int) or requested_bytes < 0:
        raise InvalidArgument(f"requested_bytes must be a non-negative integer, got {requested_bytes!r}")
    limits = (
        (available_host_memory_bytes(meminfo_path), f"available host memory (MemAvailable in "
                                                    f"{meminfo_path})",
         "lower it or free memory"),
        (shm_free_bytes(shm_dir), f"free space in {shm_dir}",
         f"lower it or enlarge the tmpfs (mount -o remount,size=... {shm_dir})"),
    )
    for available, source, remedy in limits:
        if requested_bytes > available:
            short = requested_bytes - available
            raise ConfigError(f"{what} asks for {format_size(requested_bytes)} ({requested_bytes} "
                              f"bytes) but {source} is only {format_size(available)} ({available} "
                              f"bytes): short by {format_size(short)} ({short} bytes); {remedy}")
