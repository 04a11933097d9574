"""One tierd per data dir: an exclusive ``flock`` on ``data_dir/tierd.lock`` holding the owner's pid.

Two daemons on one data dir would hand out the same namespace ids to different specs. The lock
is taken by the disk tier's ``open`` (so an embedded ``PageStore`` is protected too) and released
by its ``close``. The kernel drops a ``flock`` when its holder dies, so a lock file left by a
kill -9 is no obstacle; the pid in it is only for the message.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from tierd.errors import ConfigError

LOCK_FILE_NAME = "tierd.lock"
LOCK_FILE_MODE = 0o660
# The pid is a decimal number; anything longer in the file is not ours to print.
MAX_PID_TEXT_BYTES = 32


def _holder_pid(fd: int) -> int | None:
    text = os.pread(fd, MAX_PID_TEXT_BYTES, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _in_use_message(data_dir: Path, pid: int | None) -> str:
    who = "another process" if pid is None else f"another tierd (pid {pid})"
    if pid == os.getpid():
        who = f"this process (pid {pid}) through another open store"
    return (f"data dir {data_dir} is in use by {who}: stop it first, or give this tierd "
            f"its own data dir (--data-dir / data_dir)")


def lock_holder(data_dir: Path) -> int | None:
    """The pid holding ``data_dir``'s lock, ``0`` if held by a process whose pid is unknown,
    ``None`` if nobody holds it (for a start-up check: takes nothing, creates nothing)."""
    try:
        fd = os.open(data_dir / LOCK_FILE_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return _holder_pid(fd) or 0
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def lock_problem(data_dir: Path) -> str | None:
    """A one-line refusal if another process holds ``data_dir``'s lock, else ``None``."""
    pid = lock_holder(data_dir)
    return None if pid is None else _in_use_message(data_dir, pid or None)


class DataDirLock:
    """The exclusive lock of one data dir; ``acquire`` creates the dir and the lock file."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self._data_dir / LOCK_FILE_NAME

    def acquire(self) -> None:
        """Take the lock and write this pid into it; ``ConfigError`` naming the holder if taken."""
        if self._fd is not None:
            return
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, LOCK_FILE_MODE)
        except OSError as exc:
            raise ConfigError(f"cannot create the lock file {self.path}: {exc.strerror or exc}; "
                              f"check that data_dir is writable by tierd") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _holder_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(_in_use_message(self._data_dir, pid)) from None
            raise ConfigError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent); the file stays, emptied, for the next owner."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock
