"""Removes shared-memory segments left behind by a store process that died (kill -9).

Segment names are ``{prefix}-{pid}-...`` (see ``shm_arena``); a segment whose pid no longer runs
is unlinked at start-up so a crash loop cannot fill ``/dev/shm``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tierd.handles import SHM_DIR

log = logging.getLogger(__name__)


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
