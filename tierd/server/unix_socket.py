"""Unix socket files: is a process answering on one, removing one a dead daemon left, binding
one, and naming the process at the other end of a connection.

Shared by the daemon's start-up checks and listeners and by the region and page sockets.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from pathlib import Path

from tierd.errors import ConfigError

# Connecting to a possibly stale socket must not hang start-up.
PROBE_TIMEOUT_S = 1.0
LISTEN_BACKLOG = 64
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


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


def listen_unix(path: Path, mode: int, setting: str) -> socket.socket:
    """A listening unix socket at ``path`` with ``mode``; a stale socket file is replaced.
    ``ConfigError`` naming ``setting`` (``server.region_socket``) when it cannot be."""
    _refuse_if_served(path, setting)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        os.chmod(path, mode)
        listener.listen(LISTEN_BACKLOG)
    except OSError as exc:
        listener.close()
        raise ConfigError(f"cannot listen on {path} ({setting}): {exc.strerror}; check that its "
                          f"directory exists and is writable") from None
    return listener


def _refuse_if_served(path: Path, setting: str) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"the socket path {path} exists and is not a socket: move it away or "
                          f"set {setting} elsewhere")
    if socket_is_live(path):
        raise ConfigError(f"another process serves the socket {path}: stop it or set {setting} "
                          f"elsewhere")
    remove_stale_socket(path)  # left by a daemon that died


def peer_name(conn: socket.socket) -> str:
    """``pid P (uid U, gid G)`` of the process at the other end, for logs."""
    try:
        pid, uid, gid = _PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except OSError:
        return "a peer"
    return f"pid {pid} (uid {uid}, gid {gid})"
