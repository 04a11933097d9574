"""The disk tier on a file system that fills up: failed commits are counted and reported in one
line per interval with the OS error, reads go on, and writes resume once space is back."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from disk_full import small_tmpfs
from test_disk_tier import (
    PAGE_BYTES,
    WAIT_S,
    Results,
    WriterBlocker,
    key_of,
    make_config,
    open_tier,
    random_page,
    read_page,
    write_pages,
)

from tierd.tiers.disk import ReadStatus
from tierd.tiers.write_failures import NO_SPACE_TEXT, WRITE_FAILURE_LOG_INTERVAL_S

FS_BYTES = 8 << 20
FAILING_WRITES = 6  # each waits out the writer's backoff (10 ms, doubling)
# Room for a delete's few B-tree pages, far from a page of PAGE_BYTES.
SMALL_COMMIT_BYTES = 64 << 10


def writer_warnings(caplog: pytest.LogCaptureFixture, fragment: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and fragment in r.getMessage()]


def test_a_full_file_system_fails_writes_in_one_line_per_interval_and_they_resume(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with small_tmpfs(tmp_path / "fs", FS_BYTES) as fs:
        tier = open_tier(make_config(fs.root / "data"))
        try:
            first = random_page(0)
            assert write_pages(tier, {(1, 0): first}).calls == [(0, True)]
            fs.fill()
            caplog.set_level(logging.WARNING)
            started_s = time.monotonic()
            # One commit each (a barrier after each page), so every one fails on its own.
            outcomes = [write_pages(tier, {(1, i): random_page(i)}).calls
                        for i in range(1, 1 + FAILING_WRITES)]
            elapsed_s = time.monotonic() - started_s
            assert outcomes == [[(0, False)]] * FAILING_WRITES

            stats = tier.stats()
            assert stats.write_failures == FAILING_WRITES and stats.stored_pages == 1
            assert NO_SPACE_TEXT in stats.write_error
            failures = writer_warnings(caplog, "commit(s) failed")
            assert 1 <= len(failures) <= 1 + elapsed_s / WRITE_FAILURE_LOG_INTERVAL_S
            assert all(NO_SPACE_TEXT in r.getMessage() and r.exc_info is None for r in failures)
            assert not [r for r in caplog.records if r.exc_info is not None]
            assert read_page(tier, 1, 0) == (ReadStatus.OK, first)  # stored pages still read

            fs.drain()
            again = random_page(1)
            assert write_pages(tier, {(1, 1): again}).calls == [(0, True)]
            assert tier.stats().write_error == "" and tier.stats().write_failures == FAILING_WRITES
            assert read_page(tier, 1, 1) == (ReadStatus.OK, again)
            assert len(writer_warnings(caplog, "commits go through again")) == 1
            assert read_page(tier, 1, 2) == (ReadStatus.MISSING, bytes(PAGE_BYTES))
        finally:
            tier.close()


def test_deletes_commit_while_page_writes_fail_for_space(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs", FS_BYTES) as fs:
        tier = open_tier(make_config(fs.root / "data"))
        try:
            kept = random_page(1)
            assert all(ok for _, ok in write_pages(tier, {(1, 0): random_page(0), (1, 1): kept}).calls)
            fs.fill()
            fs.leave_free(SMALL_COMMIT_BYTES)
            # A delete and a page write that cannot fit, queued behind a held writer so they
            # share one group commit: the page fails, the delete still commits.
            blocker = WriterBlocker()
            tier.delete(1, [key_of(9)], on_done=blocker)
            assert blocker.entered.wait(WAIT_S)
            deleted = Results()
            tier.delete(1, [key_of(0)], on_done=deleted.callback(0))
            written = Results()
            tier.submit_write(1, key_of(5), memoryview(random_page(5)), 5, written.callback(5))
            blocker.release.set()
            assert tier.barrier(WAIT_S)
            assert deleted.calls == [(0, True)] and written.calls == [(5, False)]
            assert read_page(tier, 1, 0)[0] is ReadStatus.MISSING
            assert read_page(tier, 1, 1) == (ReadStatus.OK, kept)
            assert NO_SPACE_TEXT in tier.stats().write_error
        finally:
            tier.close()
