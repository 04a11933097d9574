"""The CPU engine: memcpy between host buffers, LMDB reads and writes for the disk.

Copies run on the submitting thread (a batch of disk reads is shared out over the reader pool:
the checksum holds the GIL, the copy does not, so readers overlap); disk writes are queued to the
disk tier's writer thread and settle when their group commits. The handlers here serve the fake
device engine too, for every pair that does not involve the device.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging

import numpy as np

from tierd.store.transfer.base import (
    DiskRef,
    DispatchEngine,
    Handler,
    Indexed,
    Lane,
    TransferError,
    TransferTicket,
    host_view,
)
from tierd.tiers.base import Medium
from tierd.tiers.disk import DiskTier, PageWrite, ReadStatus

log = logging.getLogger(__name__)


def copy_host(src: memoryview, dst: memoryview) -> None:
    """One page between host buffers (numpy releases the GIL for the copy)."""
    np.copyto(np.frombuffer(dst, np.uint8), np.frombuffer(src, np.uint8))


class HostCopyHandler:
    """host -> host: one memcpy per page."""

    def run(self, lane: Lane, copies: Indexed, ticket: TransferTicket) -> None:
        for index, copy in copies:
            try:
                copy_host(host_view(copy.src), host_view(copy.dst))
                ok = True
            except Exception:  # a closed region or a bug: this page did not arrive
                log.exception("host copy failed")
                ok = False
            ticket.settle(index, ok)

    def close(self) -> None:
        return None


class DiskReadHandler:
    """disk -> host: checksum-verified reads, several at once on the reader pool."""

    def __init__(self, disk: DiskTier, reader_threads: int) -> None:
        self._disk = disk
        self._num_readers = reader_threads
        self._pool = cf.ThreadPoolExecutor(reader_threads, thread_name_prefix="tierd-disk-reader")

    def _read(self, copies: Indexed) -> list[bool]:
        results = []
        for _, copy in copies:
            src = copy.src
            try:
                if not isinstance(src, DiskRef):
                    raise TransferError(f"a disk read needs a disk source, got {src!r}")
                ok = self._disk.read_into(src.ns_id, src.key, host_view(copy.dst)) is ReadStatus.OK
            except Exception:
                log.exception("a disk read failed")
                ok = False
            results.append(ok)
        return results

    def run(self, lane: Lane, copies: Indexed, ticket: TransferTicket) -> None:
        # One interleaved share per reader thread: a future per page costs more than it overlaps.
        num_shares = min(len(copies), self._num_readers)
        shares = [copies[k::num_shares] for k in range(num_shares)]
        results = self._pool.map(self._read, shares) if num_shares > 1 else map(self._read, shares)
        for share, share_ok in zip(shares, results):
            for (index, _), ok in zip(share, share_ok):
                ticket.settle(index, ok)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DiskWriteHandler:
    """host -> disk: pages queued to the writer as one run (they share group commits).

    The source bytes must stay unchanged until the page settles (the manager pins the slot).
    """

    def __init__(self, disk: DiskTier) -> None:
        self._disk = disk

    def run(self, lane: Lane, copies: Indexed, ticket: TransferTicket) -> None:
        writes: list[PageWrite] = []
        for index, copy in copies:
            dst = copy.dst
            if not isinstance(dst, DiskRef):
                raise TransferError(f"a disk write needs a disk destination, got {dst!r}")
            writes.append(PageWrite(dst.ns_id, dst.key, host_view(copy.src), dst.seq,
                                    functools.partial(ticket.settle, index), dst.parent))
        queued = 0
        try:
            queued = self._disk.submit_writes(writes)
        except Exception:  # the disk tier is closed: nothing was queued
            log.exception("the disk writer refused %d page(s)", len(writes))
        for index, _ in copies[queued:]:
            ticket.settle(index, False)

    def close(self) -> None:
        return None


def host_handlers(disk: DiskTier, reader_threads: int) -> dict[tuple[Medium, Medium], Handler]:
    """The handlers of every pair without a device: host <-> host, disk <-> host."""
    return {(Medium.HOST, Medium.HOST): HostCopyHandler(),
            (Medium.DISK, Medium.HOST): DiskReadHandler(disk, reader_threads),
            (Medium.HOST, Medium.DISK): DiskWriteHandler(disk)}


class CpuEngine(DispatchEngine):
    """Today's memcpy engine: the default, and the one a machine without a GPU uses."""

    def __init__(self, disk: DiskTier, reader_threads: int) -> None:
        super().__init__("cpu", host_handlers(disk, reader_threads))
