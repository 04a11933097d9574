"""What the host has left: memory and file system space (named in errors and start-up checks).

Regions are unnamed shared memory (memfd): they take RAM (and swap) like any anonymous shared
mapping, with no tmpfs of their own to fill, so ``MemAvailable`` is the figure that matters.
"""

from __future__ import annotations

import os
from pathlib import Path

MEMINFO = Path("/proc/meminfo")
_MEMINFO_UNIT_BYTES = 1024  # /proc/meminfo counts kB


def mem_available_bytes(meminfo: Path = MEMINFO) -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes, or ``None`` where there is no such file."""
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == "MemAvailable":
            return int(rest.split()[0]) * _MEMINFO_UNIT_BYTES
    return None


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system holding ``path``; ``None``
    if it cannot be measured."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize
