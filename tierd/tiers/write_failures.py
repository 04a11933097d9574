"""What the disk writer says when commits fail: the OS error in words, logged once per interval.

A full file system makes every group commit fail, as fast as the store submits them; one line
per failure (let alone a traceback) buries the cause. ``WriteFailureLog`` keeps the latest error
text for Stats, logs the first failure at once and then at most once per interval with a count of
the failures since, and says once when writes commit again. Used by the writer thread only.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

from tierd.tiers.host_memory import free_bytes
from tierd.units import format_size

log = logging.getLogger(__name__)

# A failing disk is reported at most this often (with a count of the failures in between).
WRITE_FAILURE_LOG_INTERVAL_S = 10.0
# LMDB writes B-tree and free-list pages besides the values: a file system with less free space
# than a group's bytes plus this much cannot have taken the group.
COMMIT_OVERHEAD_BYTES = 1 << 20
NO_SPACE_TEXT = os.strerror(errno.ENOSPC)


def describe(exc: BaseException, path: Path, needed_bytes: int) -> str:
    """The error of a failed commit in words an operator can act on.

    LMDB reports a write cut short by a full file system as EIO ("Input/output error"), so the
    free space is measured: too little for the group means the file system is full."""
    text = str(exc) or type(exc).__name__
    if NO_SPACE_TEXT in text:
        return text
    free = free_bytes(path)
    if free is not None and free < needed_bytes + COMMIT_OVERHEAD_BYTES:
        return (f"{text} ({NO_SPACE_TEXT}: the file system of {path} has {format_size(free)} "
                f"free, the commit needed about {format_size(needed_bytes)})")
    return text


class WriteFailureLog:
    """Rate-limited warnings of failed commits; ``error`` is the latest text while they fail.

    At most one failure warning and one "resumed" line per interval, even when commits that
    store nothing (deletes) go through between failing page writes on a nearly full disk."""

    def __init__(self, path: Path, interval_s: float = WRITE_FAILURE_LOG_INTERVAL_S) -> None:
        self._path = path
        self._interval_s = interval_s
        self._logged_at_s: float | None = None
        self._streak_logged = False  # the failures since the last good commit were reported
        self._commits_since_log = 0
        self._pages_since_log = 0
        self._failing_pages = 0  # page writes failed since the last commit that stored pages
        self.error = ""

    def failed(self, error: str, pages: int, bug: BaseException | None = None) -> None:
        """A commit failed for ``error``; ``pages`` page writes were not stored. ``bug``: an
        exception that is not an I/O error, logged with its traceback."""
        self.error = error
        self._commits_since_log += 1
        self._pages_since_log += pages
        self._failing_pages += pages
        now_s = time.monotonic()
        if self._logged_at_s is None or now_s - self._logged_at_s >= self._interval_s:
            self._warn(bug)
            self._logged_at_s = now_s

    def close(self) -> None:
        """The writer stops: report the failures no warning has counted yet."""
        if self._commits_since_log:
            self._warn(None)

    def _warn(self, bug: BaseException | None) -> None:
        log.warning("disk writer: %d commit(s) failed (%d page write(s) not stored) since the "
                    "last warning: %s; the pages stay in memory and are written again by eviction "
                    "or flush (fix the disk or free space under %s)", self._commits_since_log,
                    self._pages_since_log, self.error, self._path, exc_info=bug)
        self._streak_logged = True
        self._commits_since_log = self._pages_since_log = 0

    def committed(self, pages: int) -> None:
        """A commit storing ``pages`` page writes went through: once page writes (or, when none
        failed, any) commit again, say so once and clear ``error``."""
        if not self.error or (pages == 0 and self._failing_pages):
            return
        if self._streak_logged:
            log.warning("disk writer: commits go through again (%d page write(s) had failed "
                        "since the last one that did; the last error was: %s)",
                        self._failing_pages, self.error)
        self.error = ""
        self._streak_logged = False
        self._failing_pages = 0
