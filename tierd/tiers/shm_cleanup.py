"""Removes ``/dev/shm`` segments left behind by a tierd before regions became memfds.

Those versions named regions ``/dev/shm/{prefix}-{pid}-...``; one whose pid no longer runs (a
kill -9, then an upgrade) would hold its memory until reboot, so the store unlinks it at start-up.
Today's regions are unnamed and leave nothing behind.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale_segments(prefix: str, shm_dir: Path = SHM_DIR) -> int:
    """Unlink ``{prefix}-{pid}-*`` segments of processes that are gone; returns how many."""
    removed = 0
    if not shm_dir.is_dir():
        return 0
    for path in shm_dir.glob(f"{prefix}-*"):
        pid_text = path.name[len(prefix) + 1:].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            continue
        except OSError:
            log.exception("cannot remove stale shared-memory segment %s", path)
    if removed:
        log.info("removed %d shared-memory segment(s) left by dead tierd processes", removed)
    return removed
