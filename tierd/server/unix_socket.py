"""Unix socket files: is a process answering on one, and removing one a dead daemon left.

Shared by the daemon's start-up checks and listeners and by the region socket.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

# Connecting to a possibly stale socket must not hang start-up.
PROBE_TIMEOUT_S = 1.0


def socket_is_live(path: Path) -> bool:
    """Whether something accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT_S)
        try:
            probe.connect(os.fspath(path))
        except OSError as exc:
            return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    return True


def remove_stale_socket(path: Path) -> None:
    """Unlink a socket file left behind by a daemon that died (the caller made sure no process
    answers on it); anything that is not a socket is left alone."""
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
