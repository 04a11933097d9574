"""How much room the tmpfs behind ``/dev/shm`` has left (named in the shm arena's errors).

The start-up checks of the daemon (``tierd.daemon.checks``) refuse a config whose shm tiers do
not fit; this is what a region that does not fit at creation says it found.
"""

from __future__ import annotations

import os
from pathlib import Path

from tierd.handles import SHM_DIR


def shm_free_bytes(shm_dir: Path = SHM_DIR) -> int:
    """Bytes an unprivileged process can still allocate in the tmpfs mounted at ``shm_dir``."""
    stats = os.statvfs(shm_dir)
    return stats.f_bavail * stats.f_frsize
