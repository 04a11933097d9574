"""A file system that fills up on demand, for disk-full tests: a small tmpfs, and a filler file
that takes every free byte until it is removed.

Mounting needs root (CAP_SYS_ADMIN); elsewhere the tests that use it skip, saying why. CI runs
as root. ``fill`` bounds its work by the file system's size, never by time.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

FILLER_NAME = "filler"
FILL_CHUNK_BYTES = 1 << 20
# tmpfs hands out whole pages: the last writes go a page at a time, so nothing is left.
FS_BLOCK_BYTES = 4096


class FillableFs:
    """The file system mounted at ``root``; ``fill`` leaves no free byte, ``drain`` frees them."""

    def __init__(self, root: Path, size_bytes: int) -> None:
        self.root = root
        self.size_bytes = size_bytes
        self.filler = root / FILLER_NAME

    def free_bytes(self) -> int:
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def fill(self) -> None:
        """Write zeros into the filler until the file system refuses more (ENOSPC)."""
        with open(self.filler, "ab", buffering=0) as out:
            for chunk_bytes in (FILL_CHUNK_BYTES, FS_BLOCK_BYTES):
                chunk = bytes(chunk_bytes)
                for _ in range(self.size_bytes // chunk_bytes + 1):
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        assert self.free_bytes() < FS_BLOCK_BYTES, f"{self.root} still has {self.free_bytes()} B free"

    def leave_free(self, num_bytes: int) -> None:
        """After ``fill``: give ``num_bytes`` back (room for small commits, not for pages)."""
        size = self.filler.stat().st_size
        os.truncate(self.filler, max(0, size - num_bytes))

    def drain(self) -> None:
        """Remove the filler: the space is back."""
        self.filler.unlink(missing_ok=True)


@contextmanager
def small_tmpfs(mount_point: Path, size_bytes: int) -> Iterator[FillableFs]:
    """A tmpfs of ``size_bytes`` at ``mount_point`` (created), unmounted on exit."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is made by mounting a small tmpfs, which needs root (CI runs "
                    "as root); run as root to include this test")
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs",
                              str(mount_point)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {mount_point} to make a full disk (in a container "
                    f"without CAP_SYS_ADMIN?): {mounted.stderr.strip()}")
    try:
        yield FillableFs(mount_point, size_bytes)
    finally:
        # Lazy: a daemon that is still being reaped must not leave the mount behind.
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)
