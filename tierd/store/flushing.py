"""Flush: write every page held in memory only to disk, and say what actually happened.

A flush queues a disk write for each memory page not on disk and waits for all of them. It ends
one of four ways, each its own answer: every page stored (the count written), a write failed
(``DiskWriteFailed`` with the disk's error and how many pages are in memory only; never a
timeout it did not wait for), writes still queued at the deadline (``DeadlineExceeded``), or
pages the disk budget refused (``ResourceExhausted``).
"""

from __future__ import annotations

from tierd.errors import DeadlineExceeded, DiskWriteFailed, ResourceExhausted
from tierd.store.durability import Durability
from tierd.store.manager import Manager
from tierd.store.runner import PlanRunner
from tierd.tiers.disk import DiskTier


def flush_to_disk(manager: Manager, runner: PlanRunner, disk: DiskTier,
                  timeout_s: float | None) -> int:
    """Write every memory page not on disk; how many writes this flush queued."""
    plans, ticket, dirty, refused = manager.plan_flush()
    runner.start_all(plans)
    written = sum(len(plan) for plan in plans)
    outcome = manager.durability.wait_outcome(ticket, timeout_s)
    if outcome is Durability.FAILED:
        # At the first failure: the writes still queued behind it wait out the writer's backoff,
        # and their pages are not on disk yet either, so they are counted as in memory only.
        raise _write_failed(manager, disk)
    if outcome is Durability.PENDING:
        raise DeadlineExceeded(f"flush: {dirty} page(s) were queued for disk and not all "
                               f"committed within {timeout_s} s (the disk is slow or its queue "
                               "long); flush again with a longer timeout")
    if refused:
        raise ResourceExhausted(f"flush wrote {written} page(s) but {refused} did not fit: "
                                "the disk budget is full of pages being written; raise the "
                                "disk capacity or flush again once writes complete")
    return written


def _write_failed(manager: Manager, disk: DiskTier) -> DiskWriteFailed:
    """The error of a flush whose pages the disk did not store, with the disk's own words."""
    error = disk.stats().write_error or "the writes failed (see the log)"
    left = manager.pages_not_on_disk()
    return DiskWriteFailed(f"flush: the disk did not store every page: {error}; {left} page(s) "
                           "are in memory only (still served, lost if tierd stops now): free "
                           f"space on the file system of {disk.path} or fix the disk, then "
                           "flush again (writes resume by themselves)")


def disk_failure_note(disk: DiskTier) -> str:
    """For a refusal that memory full of pages the disk cannot take explains: why, or ""."""
    error = disk.stats().write_error
    if not error:
        return ""
    return (f" (the disk is refusing writes, so pages in memory cannot move down to it: {error}; "
            f"free space on the file system of {disk.path})")

