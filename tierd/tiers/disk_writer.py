"""The disk tier's single LMDB writer: a bounded FIFO of write ops and the thread that commits it.

Every write to the environment (pages, deletes, namespace records) runs on this one thread: a
write transaction belongs to the OS thread that began it, and LMDB admits one writer at a time.
The thread takes a *group* of ops, applies them in one transaction, commits (fsync'd when the
environment syncs) and only then calls each op's ``on_done``, in submission order.

A page of a namespace with a cold format is quantized here, on this thread (``PageEncoder``): the
event loop and the submitter never spend the time, and the checksum covers the stored bytes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import lmdb
import numpy as np

from tierd.config import DiskConfig
from tierd.errors import Unavailable
from tierd.tiers.cold_pages import ColdForms
from tierd.tiers.disk_ops import (
    Barrier,
    DeletePages,
    DropIfUnchanged,
    OnDone,
    PageEncoder,
    PutMeta,
    PutPage,
    WriteOp,
    op_cost,
    pages_in,
)
from tierd.tiers.disk_parents import ParentRecords
from tierd.tiers.page_format import HEADER_BYTES
from tierd.tiers.write_failures import WriteFailureLog, describe

log = logging.getLogger(__name__)

# The ops live in ``disk_ops``; importers of this module use them by these names too.
__all__ = ["Barrier", "DeletePages", "DiskWriter", "DropIfUnchanged", "OnDone", "OpQueue",
           "PageEncoder", "PutMeta", "PutPage", "WriteOp", "WriterStats"]

# LMDB reuses pages freed by transaction N only from transaction N + 2 on, and an aborted
# transaction does not advance the id: after deletes, a full map stays full until something
# commits. Rewriting this small meta record is that "something".
TICK_META_KEY = b"writer/tick"
# Errors a commit meets when the disk cannot take it (a full file system, EIO, a read-only
# remount): reported in one line per interval, never as a traceback per commit.
DISK_ERRORS: tuple[type[BaseException], ...] = (lmdb.Error, OSError)
# After a commit the disk refused, the writer waits before the next one: this long at first,
# doubling up to the max while commits keep failing, so eviction and flush retrying their writes
# do not hit a full disk thousands of times a second. Reset once pages commit again.
RETRY_BACKOFF_MIN_S = 0.01
RETRY_BACKOFF_MAX_S = 1.0


@dataclass(frozen=True)
class WriterStats:
    """Counters of one writer, published after every group (stored_* include headers).

    ``failed_pages``: page writes that reached the writer and were not stored (an I/O error such
    as a full file system, or LMDB's map full); ``failed_commits``: transactions that failed;
    ``write_error``: why the latest one failed, while they fail ("" once pages commit again).
    ``quantized_pages``: stored pages in a cold format; ``quantized_bytes_saved``: the bytes they
    take less than exact pages would (payloads)."""

    stored_pages: int = 0
    stored_bytes: int = 0
    bytes_written: int = 0
    map_full_events: int = 0
    commits: int = 0
    failed_pages: int = 0
    failed_commits: int = 0
    write_error: str = ""
    quantized_pages: int = 0
    quantized_bytes_saved: int = 0


@dataclass
class _Delta:
    """What one transaction changes; applied to the counters only if it commits."""

    pages: int = 0
    stored_bytes: int = 0
    written_bytes: int = 0
    written_pages: int = 0
    quantized_pages: int = 0
    quantized_bytes_saved: int = 0


class OpQueue:
    """FIFO of ops; ``put`` of a page blocks while ``max_queued_pages`` pages wait."""

    def __init__(self, max_queued_pages: int, closed_message: str) -> None:
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._ops: deque[WriteOp] = deque()
        self._queued_pages = 0
        self._max_queued_pages = max_queued_pages
        self._closed = False
        self._closed_message = closed_message

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)

    def put(self, op: WriteOp, block: bool) -> None:
        """Append ``op``; ``Unavailable`` once closed (also to a put blocked by backpressure)."""
        with self._lock:
            if block and isinstance(op, PutPage):
                while not self._closed and self._queued_pages >= self._max_queued_pages:
                    self._not_full.wait()
            if self._closed:
                raise Unavailable(self._closed_message)
            self._ops.append(op)
            if isinstance(op, PutPage):
                self._queued_pages += 1
            self._not_empty.notify()

    def put_many(self, ops: list[PutPage]) -> int:
        """Append page ops as one run, so the writer can commit them as one group; blocks while
        the queue is full, taking as many as fit each time. Returns how many were queued: fewer
        than ``len(ops)`` only when the queue closed meanwhile (the rest never will be)."""
        start = 0
        with self._lock:
            while start < len(ops):
                while not self._closed and self._queued_pages >= self._max_queued_pages:
                    self._not_full.wait()
                if self._closed:
                    return start
                room = self._max_queued_pages - self._queued_pages
                run = ops[start:start + room]
                self._ops.extend(run)
                self._queued_pages += len(run)
                start += len(run)
                self._not_empty.notify()
        return start

    def pause(self, timeout_s: float) -> None:
        """Wait ``timeout_s``, or less if the queue closes meanwhile."""
        with self._lock:
            self._not_empty.wait_for(lambda: self._closed, timeout_s)

    def close(self) -> None:
        """Refuse new ops; ops already queued are still handed out by ``take_group``."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def take_group(self, max_pages: int, max_bytes: int, linger_s: float) -> list[WriteOp] | None:
        """The next group of ops, waiting for the first; ``None`` when closed and drained.

        After the first op it waits at most ``linger_s`` for more, unless a caller is blocked on
        the group (a barrier or a namespace record) or the queue is closing.
        """
        with self._lock:
            while not self._ops and not self._closed:
                self._not_empty.wait()
            if not self._ops:
                return None
            deadline = time.monotonic() + linger_s
            group: list[WriteOp] = []
            pages = num_bytes = 0
            urgent = False
            while True:
                while self._ops:
                    op_pages, op_bytes = op_cost(self._ops[0])
                    if group and (pages + op_pages > max_pages or num_bytes + op_bytes > max_bytes):
                        return self._handed_out(group)
                    op = self._ops.popleft()
                    group.append(op)
                    pages, num_bytes = pages + op_pages, num_bytes + op_bytes
                    urgent = urgent or isinstance(op, (Barrier, PutMeta))
                remaining_s = deadline - time.monotonic()
                if urgent or self._closed or remaining_s <= 0:
                    return self._handed_out(group)
                self._not_empty.wait(remaining_s)

    def _handed_out(self, group: list[WriteOp]) -> list[WriteOp]:
        self._queued_pages -= sum(1 for op in group if isinstance(op, PutPage))
        self._not_full.notify_all()
        return group


class DiskWriter:
    """Owns the writer thread. The caller keeps ``env`` open until ``close`` has returned."""

    def __init__(self, env: lmdb.Environment, pages_db: lmdb._Database, meta_db: lmdb._Database,
                 disk: DiskConfig, initial: WriterStats, on_map_full: Callable[[], None],
                 closed_message: str, forms: ColdForms | None = None,
                 parents: ParentRecords | None = None) -> None:
        self._env = env
        self._parents = parents  # None: an environment without the ``parents`` database
        self._forms = forms or ColdForms()  # which namespaces' stored pages are quantized
        self._pages_db = pages_db
        self._meta_db = meta_db
        self._disk = disk
        self._on_map_full = on_map_full
        self._queue = OpQueue(disk.writer_queue_pages, closed_message)
        self._counts = initial  # written by the writer thread only; read by anyone (atomic swap)
        self._env_path = Path(env.path())
        self._failures = WriteFailureLog(self._env_path)
        self._backoff_s = 0.0       # the wait after the next commit the disk refuses
        self._refused_by_disk = False  # the group being committed met a disk error
        self._tick_count = 0
        self._scratch = bytearray()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def stats(self) -> WriterStats:
        return self._counts

    @property
    def queue_depth(self) -> int:
        """Ops queued and not yet taken by the writer."""
        return len(self._queue)

    def on_writer_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def start(self) -> None:
        """Start the thread; idempotent."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tierd-disk-writer",
                                                daemon=True)
                self._thread.start()

    def submit(self, op: WriteOp, block: bool = True) -> None:
        """Queue ``op``; ``block`` applies backpressure to pages. ``Unavailable`` once closed."""
        self._queue.put(op, block=block and not self.on_writer_thread())

    def submit_pages(self, ops: list[PutPage]) -> int:
        """Queue page ops as one run (see ``OpQueue.put_many``); returns how many were queued."""
        if self.on_writer_thread():  # never wait on the queue only this thread drains
            for queued, op in enumerate(ops):
                if not self.try_submit(op):
                    return queued
            return len(ops)
        return self._queue.put_many(ops)

    def try_submit(self, op: WriteOp) -> bool:
        """Queue ``op`` without blocking; ``False`` if the writer is closed."""
        try:
            self._queue.put(op, block=False)
        except Unavailable:
            return False
        return True

    def close(self) -> None:
        """Commit everything queued, then stop the thread; idempotent. Not from an ``on_done``."""
        self._queue.close()
        with self._start_lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # ---- writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        disk = self._disk
        while True:
            group = self._queue.take_group(disk.writer_batch_pages, disk.writer_batch_bytes,
                                           disk.writer_linger_s)
            if group is None:
                self._failures.close()
                return
            self._refused_by_disk = False
            try:
                results = self._commit_group(group)
            except Exception as exc:  # not an I/O error: a bug, reported with its traceback
                self._failed(f"{type(exc).__name__}: {exc}", pages_in(group), bug=exc)
                results = [False] * len(group)
            self._notify(group, results)
            if self._refused_by_disk:
                self._back_off()

    def _back_off(self) -> None:
        """The disk refused a commit: wait before the next (not when closing: drain at once)."""
        self._backoff_s = min(max(2 * self._backoff_s, RETRY_BACKOFF_MIN_S), RETRY_BACKOFF_MAX_S)
        self._queue.pause(self._backoff_s)

    def _commit_group(self, group: list[WriteOp]) -> list[bool]:
        try:
            delta = self._commit(group)
        except lmdb.MapFullError:
            self._counts = replace(self._counts, map_full_events=self._counts.map_full_events + 1)
            log.warning("disk writer: the LMDB map (%d bytes) is full; storing the %d ops of this "
                        "group one by one, the ones that do not fit are reported as not stored",
                        self._env.info()["map_size"], len(group))
            try:
                self._on_map_full()
            except Exception:
                log.exception("disk writer: the on_map_full hook raised")
            return self._one_by_one(group)
        except lmdb.TxnFullError:
            log.warning("disk writer: a group of %d ops dirtied more pages than one LMDB "
                        "transaction holds; storing them one by one (lower "
                        "disk.writer_batch_bytes)", len(group))
            return self._one_by_one(group)
        except DISK_ERRORS as exc:
            return self._disk_failed(group, exc)
        self._count(delta)
        return [True] * len(group)

    def _disk_failed(self, group: list[WriteOp], exc: BaseException) -> list[bool]:
        """The disk refused the group's commit: its pages are not stored; its other ops (deletes
        free space, namespace records are waited on) get one transaction of their own."""
        needed_bytes = sum(op_cost(op)[1] for op in group)
        self._refused_by_disk = True
        self._failed(describe(exc, self._env_path, needed_bytes), pages_in(group))
        others: list[WriteOp] = [op for op in group if not isinstance(op, PutPage)]
        if not others or len(others) == len(group):
            return [False] * len(group)
        try:
            self._count(self._commit(others))
        except DISK_ERRORS as again:
            self._failed(describe(again, self._env_path, 0), 0)
            return [False] * len(group)
        return [not isinstance(op, PutPage) for op in group]

    def _failed(self, error: str, pages: int, bug: BaseException | None = None) -> None:
        """Count a failed commit of ``pages`` page writes and log it (rate-limited)."""
        self._failures.failed(error, pages, bug)
        c = self._counts
        self._counts = replace(c, failed_pages=c.failed_pages + pages,
                               failed_commits=c.failed_commits + 1, write_error=error)

    def _one_by_one(self, group: list[WriteOp]) -> list[bool]:
        """Store every op of ``group`` that still fits, one transaction each."""
        results: list[bool] = []
        ticked = False
        for op in group:
            failure = self._commit_alone(op)
            if failure is not None and not ticked:
                ticked = True
                if self._tick():
                    failure = self._commit_alone(op)
            if failure is not None:
                self._failed(failure[0], pages_in([op]), bug=failure[1])
            results.append(failure is None)
        return results

    def _commit_alone(self, op: WriteOp) -> tuple[str, BaseException | None] | None:
        """Commit ``op`` in a transaction of its own; ``None``, or why not (and the exception
        when it is a bug rather than the disk)."""
        if isinstance(op, Barrier):
            return None
        try:
            delta = self._commit([op])
        except lmdb.MapFullError:
            return f"the LMDB map ({self._env.info()['map_size']} bytes) is full", None
        except lmdb.TxnFullError:
            return "one op dirtied more pages than an LMDB transaction holds", None
        except DISK_ERRORS as exc:
            self._refused_by_disk = True
            return describe(exc, self._env_path, op_cost(op)[1]), None
        except Exception as exc:  # not an I/O error: a bug, reported with its traceback
            return f"{type(op).__name__}: {type(exc).__name__}: {exc}", exc
        self._count(delta)
        return None

    def _tick(self) -> bool:
        """Commit a tiny transaction so pages freed by the last commits become reusable."""
        self._tick_count += 1
        tick = PutMeta(TICK_META_KEY, self._tick_count.to_bytes(8, "little"), None)
        try:
            self._count(self._commit([tick]))
        except lmdb.Error:
            return False
        return True

    def _commit(self, ops: list[WriteOp]) -> _Delta:
        delta = _Delta()
        txn = self._env.begin(write=True, buffers=True)
        try:
            for op in ops:
                self._apply(txn, op, delta)
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        return delta

    def _apply(self, txn: lmdb.Transaction, op: WriteOp, delta: _Delta) -> None:
        if isinstance(op, PutPage):
            value = self._encode(op)
            old = txn.get(op.dkey, db=self._pages_db)
            old_bytes = 0 if old is None else len(old)  # before put: the view dies with the page
            if old is not None:
                self._uncount_quantized(op.dkey, old_bytes, delta)
            txn.put(op.dkey, value, db=self._pages_db)
            if self._parents is not None:
                self._parents.write(txn, op.dkey, op.parent)
            if op.encoder is not None:
                self._count_quantized(op.dkey, len(value), delta, 1)
            delta.pages += old is None
            delta.stored_bytes += len(value) - old_bytes
            delta.written_bytes += len(value)
            delta.written_pages += 1
        elif isinstance(op, DeletePages):
            for dkey in op.dkeys:
                self._delete(txn, dkey, delta)
        elif isinstance(op, DropIfUnchanged):
            current = txn.get(op.dkey, db=self._pages_db)
            if (current is not None and len(current) == op.seen_bytes
                    and bytes(current[:len(op.seen_header)]) == op.seen_header):
                self._delete(txn, op.dkey, delta)
        elif isinstance(op, PutMeta):
            txn.put(op.key, op.value, db=self._meta_db)

    def _delete(self, txn: lmdb.Transaction, dkey: bytes, delta: _Delta) -> None:
        old = txn.get(dkey, db=self._pages_db)
        if old is not None:
            delta.pages -= 1
            delta.stored_bytes -= len(old)
            self._uncount_quantized(dkey, len(old), delta)
            txn.delete(dkey, db=self._pages_db)
            if self._parents is not None:
                self._parents.delete(txn, dkey)

    def _count_quantized(self, dkey: bytes, value_bytes: int, delta: _Delta, sign: int) -> None:
        """Add (``sign`` 1) or take away (-1) one quantized value of ``value_bytes`` (header
        included) under ``dkey``; nothing for a namespace stored exactly."""
        form = self._forms.of_disk_key(dkey)
        if form is not None:
            delta.quantized_pages += sign
            delta.quantized_bytes_saved += sign * form.saved_bytes(value_bytes - HEADER_BYTES)

    def _uncount_quantized(self, dkey: bytes, value_bytes: int, delta: _Delta) -> None:
        # Every stored page of a quantized namespace is quantized (written by an encoder).
        self._count_quantized(dkey, value_bytes, delta, -1)

    def _encode(self, op: PutPage) -> memoryview:
        """Header + payload in the writer's scratch buffer (LMDB copies it at ``put``); a page
        with an encoder is quantized into it, then sealed."""
        value_bytes = HEADER_BYTES + op.stored_payload_bytes
        if len(self._scratch) < value_bytes:
            self._scratch = bytearray(value_bytes)
        value = memoryview(self._scratch)[:value_bytes]
        if op.encoder is not None:
            op.encoder.encode(op.payload, value[HEADER_BYTES:])
            value[:HEADER_BYTES] = op.encoder.seal(value[HEADER_BYTES:])
            return value
        value[:HEADER_BYTES] = op.header
        # numpy's copy releases the GIL: submitters hash the next pages meanwhile.
        np.copyto(np.frombuffer(value, np.uint8, offset=HEADER_BYTES),
                  np.frombuffer(op.payload, np.uint8))
        return value

    def _count(self, delta: _Delta) -> None:
        c = self._counts
        self._failures.committed(delta.written_pages)
        if not self._failures.error:
            self._backoff_s = 0.0
        self._counts = replace(c, stored_pages=c.stored_pages + delta.pages,
                               stored_bytes=c.stored_bytes + delta.stored_bytes,
                               bytes_written=c.bytes_written + delta.written_bytes,
                               commits=c.commits + 1, write_error=self._failures.error,
                               quantized_pages=c.quantized_pages + delta.quantized_pages,
                               quantized_bytes_saved=(c.quantized_bytes_saved
                                                      + delta.quantized_bytes_saved))

    def _notify(self, group: list[WriteOp], results: list[bool]) -> None:
        for op, stored in zip(group, results):
            if op.on_done is None:
                continue
            try:
                op.on_done(stored)
            except Exception:
                log.exception("disk writer: an on_done callback raised; the writer goes on")

