"""The CUDA transfer engine: page copies on CUDA streams, one stream per lane.

Every pair with hbm (GPU memory) on one side goes through a ``CudaLane``: PROMOTE (dram -> hbm),
DEMOTE (hbm -> dram, hbm -> disk) and BYTES (callers' buffers) each own a non-blocking stream,
so promotions never queue behind demotions. A lane's dispatcher thread merges what is queued (up
to ``batch_pages`` copies), coalesces slots adjacent on both sides into one copy, issues the
batch with one ``copy_batch_async`` and records a blocking-sync event; its completion thread
waits on the events in order and settles the tickets. Nothing ever synchronizes the device or
polls. An hbm page headed for disk is copied into page-locked staging memory first and handed to
the disk writer from there once its event completed. Pages without a device side (dram <-> disk)
use the CPU engine's handlers.

Host endpoints are passed by address: page-locked dram copies at DMA speed; a pageable caller's
buffer is still correct (CUDA stages it: the call returns once the source was read, or, from the
device, once the copy is done), only slower.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from tierd.errors import Unavailable
from tierd.store.transfer.base import (
    Copy,
    DiskRef,
    DispatchEngine,
    Endpoint,
    Handler,
    Indexed,
    Lane,
    SlotRef,
    TransferError,
    TransferTicket,
    host_view,
)
from tierd.store.transfer.cpu import DiskWriteHandler, host_handlers
from tierd.store.transfer.staging import StagingPool
from tierd.tiers.base import DeviceRegion, Medium
from tierd.tiers.cuda_runtime import CopyRange, CudaRuntime
from tierd.tiers.disk import DiskTier

log = logging.getLogger(__name__)

_DEVICE_PAIRS = ((Medium.HOST, Medium.DEVICE), (Medium.DEVICE, Medium.HOST),
                 (Medium.DEVICE, Medium.DEVICE), (Medium.DEVICE, Medium.DISK))


@dataclass(frozen=True)
class CudaEngineSettings:
    """``batch_pages``: copies merged into one submission; ``staging_bytes``: page-locked bytes
    for hbm -> disk; ``register_chunk_bytes``: largest single cudaHostRegister; ``drain_timeout_s``:
    how long close waits for staged pages to reach the disk writer."""

    batch_pages: int
    staging_bytes: int
    register_chunk_bytes: int
    drain_timeout_s: float


@dataclass
class _Entry:
    """One copy of a ticket, resolved to addresses; ``staged`` holds an hbm page bound for disk."""

    index: int
    copy: Copy
    ticket: TransferTicket
    src: int = 0
    dst: int = 0
    size_bytes: int = 0
    staged: memoryview | None = None
    keep: list[object] = field(default_factory=list)  # host arrays whose addresses are in flight


@dataclass
class _Batch:
    event: int
    entries: list[_Entry]


class _StagedWrites(TransferTicket):
    """The disk writes of staged hbm pages: each settles its own ticket's copy once its staging
    range is free again (a ticket's other pages may be waiting for that range)."""

    def __init__(self, entries: list[_Entry], give_back: Callable[[_Entry], None]) -> None:
        super().__init__(len(entries))
        self._entries = entries
        self._give_back = give_back

    def settle(self, index: int, ok: bool) -> None:
        entry = self._entries[index]
        self._give_back(entry)
        entry.ticket.settle(entry.index, ok)
        super().settle(index, ok)


def _endpoint_bytes(endpoint: Endpoint) -> int:
    if isinstance(endpoint, SlotRef):
        return endpoint.region.page_bytes
    if isinstance(endpoint, memoryview):
        return endpoint.nbytes
    raise TransferError(f"{endpoint!r} has no size of its own")


class CudaLane:
    """One lane: a stream, a dispatcher thread and a completion thread (see the module doc)."""

    def __init__(self, runtime: CudaRuntime, lane: Lane, settings: CudaEngineSettings,
                 staging: StagingPool, disk_writes: DiskWriteHandler) -> None:
        self._runtime = runtime
        self._lane = lane
        self._settings = settings
        self._staging = staging
        self._disk_writes = disk_writes
        self._cond = threading.Condition()
        self._queue: collections.deque[_Entry] = collections.deque()
        self._inflight: collections.deque[_Batch] = collections.deque()
        self._closing = False
        self._dispatching = False
        runtime.bind_thread()
        self._stream = runtime.create_stream()
        self._threads = [
            threading.Thread(target=self._dispatch_loop, name=f"tierd-cuda-{lane.value}", daemon=True),
            threading.Thread(target=self._complete_loop, name=f"tierd-cuda-{lane.value}-done",
                             daemon=True)]
        for thread in self._threads:
            thread.start()

    def submit(self, copies: Indexed, ticket: TransferTicket) -> None:
        with self._cond:
            if self._closing:
                raise Unavailable(f"the CUDA {self._lane.value} lane is closed")
            self._queue.extend(_Entry(index, copy, ticket) for index, copy in copies)
            self._cond.notify_all()

    def _take(self) -> list[_Entry] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closing)
            if not self._queue:
                return None
            count = min(len(self._queue), self._settings.batch_pages)
            self._dispatching = True
            return [self._queue.popleft() for _ in range(count)]

    def _dispatch_loop(self) -> None:
        self._runtime.bind_thread()
        while (entries := self._take()) is not None:
            try:
                self._dispatch(entries)
            except Exception:  # a bug here must not strand tickets
                log.exception("CUDA %s lane: dispatch failed", self._lane.value)
                for entry in entries:
                    entry.ticket.settle(entry.index, False)
            finally:
                with self._cond:
                    self._dispatching = False
                    self._cond.notify_all()

    def _dispatch(self, entries: list[_Entry]) -> None:
        ready: list[_Entry] = []
        for entry in entries:
            try:
                if not self._resolve(entry, wait=False):
                    # Staging is full: what this batch holds of it must be queued before waiting.
                    self._submit(ready)
                    ready = []
                    self._resolve(entry, wait=True)
            except Exception:  # a closed region, a bad slot, sizes that differ: this page fails
                log.exception("CUDA %s lane: copy refused", self._lane.value)
                self._fail([entry])
                continue
            ready.append(entry)
        self._submit(ready)

    def _submit(self, ready: list[_Entry]) -> None:
        if not ready:
            return
        try:
            self._runtime.copy_batch_async(
                coalesce_ranges([CopyRange(e.dst, e.src, e.size_bytes) for e in ready]), self._stream)
            event = self._runtime.record_event(self._stream)
        except Exception:  # nothing of the batch is queued (the runtime's contract)
            log.exception("CUDA %s lane: %d copies could not be queued", self._lane.value, len(ready))
            self._fail(ready)
            return
        with self._cond:
            self._inflight.append(_Batch(event, ready))
            self._cond.notify_all()

    def _resolve(self, entry: _Entry, wait: bool) -> bool:
        """Fill in the entry's addresses; False (nothing changed) when staging has no room now."""
        copy = entry.copy
        size = _endpoint_bytes(copy.src)
        if isinstance(copy.dst, DiskRef):
            if self._staging.fits(size):
                staged = self._staging.take(size, wait)
                if staged is None:
                    return False
            else:  # larger than the whole pool: pageable memory (the copy then waits for itself)
                staged = memoryview(bytearray(size))
            entry.staged = staged
            dst_bytes = size
            entry.dst = self._host_address(entry, staged)
        else:
            dst_bytes = _endpoint_bytes(copy.dst)
            entry.dst = self._address(entry, copy.dst)
        if dst_bytes != size:
            raise TransferError(f"a {size}-byte page cannot land in {dst_bytes} bytes ({copy.dst!r})")
        entry.src = self._address(entry, copy.src)
        entry.size_bytes = size
        return True

    def _address(self, entry: _Entry, endpoint: Endpoint) -> int:
        if isinstance(endpoint, SlotRef) and endpoint.region.medium is Medium.DEVICE:
            return cast(DeviceRegion, endpoint.region).device_ptr(endpoint.slot)
        return self._host_address(entry, host_view(endpoint))

    @staticmethod
    def _host_address(entry: _Entry, view: memoryview) -> int:
        array = np.frombuffer(view, np.uint8)
        entry.keep.append(array)  # the memory must stay mapped until the copy settled
        return int(array.ctypes.data)

    def _complete_loop(self) -> None:
        self._runtime.bind_thread()
        while (batch := self._next_batch()) is not None:
            try:
                self._runtime.wait_event(batch.event)
                ok = True
            except Exception:  # the copies before the event failed: none of them counts
                log.exception("CUDA %s lane: a batch of %d copies failed", self._lane.value,
                              len(batch.entries))
                ok = False
            try:
                self._runtime.destroy_event(batch.event)
            except Exception:
                log.exception("CUDA %s lane: could not destroy an event", self._lane.value)
            self._finish(batch.entries, ok)
            with self._cond:
                self._inflight.popleft()
                self._cond.notify_all()

    def _next_batch(self) -> _Batch | None:
        with self._cond:
            self._cond.wait_for(lambda: self._inflight or (
                self._closing and not self._queue and not self._dispatching))
            return self._inflight[0] if self._inflight else None

    def _finish(self, entries: list[_Entry], ok: bool) -> None:
        if not ok:
            self._fail(entries)
            return
        staged: list[_Entry] = []
        for entry in entries:
            entry.keep.clear()
            if entry.staged is None:
                entry.ticket.settle(entry.index, True)
            else:
                staged.append(entry)
        if staged:  # one run: the pages share group commits; each frees its staging when written
            writes = [(k, Copy(cast(memoryview, e.staged), e.copy.dst)) for k, e in enumerate(staged)]
            self._disk_writes.run(self._lane, writes, _StagedWrites(staged, self._give_back))

    def _fail(self, entries: list[_Entry]) -> None:
        for entry in entries:
            entry.keep.clear()
            self._give_back(entry)
            entry.ticket.settle(entry.index, False)

    def _give_back(self, entry: _Entry) -> None:
        staged, entry.staged = entry.staged, None
        if staged is not None and not isinstance(staged.obj, bytearray):
            self._staging.give(staged)

    def close(self) -> None:
        """Finish what is queued and in flight, then stop the threads and the stream; idempotent."""
        with self._cond:
            if self._closing and not any(t.is_alive() for t in self._threads):
                return
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()
        try:
            self._runtime.destroy_stream(self._stream)
        except Exception:
            log.exception("CUDA %s lane: could not destroy its stream", self._lane.value)


def coalesce_ranges(ranges: Sequence[CopyRange]) -> list[CopyRange]:
    """``ranges`` in order, each run adjacent on both sides merged into one copy."""
    merged: list[CopyRange] = []
    for copy in ranges:
        if merged:
            last = merged[-1]
            if last.src + last.size_bytes == copy.src and last.dst + last.size_bytes == copy.dst:
                merged[-1] = CopyRange(last.dst, last.src, last.size_bytes + copy.size_bytes)
                continue
        merged.append(copy)
    return merged


class CudaHandler:
    """Every pair with the device on one side: each lane's copies go to that lane's stream."""

    def __init__(self, lanes: dict[Lane, CudaLane], on_close: Callable[[], None]) -> None:
        self._lanes = lanes
        self._on_close = on_close

    def run(self, lane: Lane, copies: Indexed, ticket: TransferTicket) -> None:
        self._lanes[lane].submit(copies, ticket)

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.close()
        self._on_close()


class CudaEngine(DispatchEngine):
    """The engine of ``device = "cuda:N"`` (see the module docstring). Owns its streams, events,
    threads and staging memory; the runtime is the caller's."""

    def __init__(self, runtime: CudaRuntime, disk: DiskTier, reader_threads: int,
                 settings: CudaEngineSettings) -> None:
        runtime.bind_thread()
        staging = StagingPool(runtime, settings.staging_bytes, settings.register_chunk_bytes)
        disk_writes = DiskWriteHandler(disk)
        lanes: dict[Lane, CudaLane] = {}
        try:
            for lane in Lane:
                lanes[lane] = CudaLane(runtime, lane, settings, staging, disk_writes)
        except BaseException:
            for made in lanes.values():
                made.close()
            staging.close(0.0)
            raise
        self._staging = staging
        device = CudaHandler(lanes, lambda: staging.close(settings.drain_timeout_s))
        # The device first: closing lands what is in flight while the host handlers still work.
        handlers: dict[tuple[Medium, Medium], Handler] = {pair: device for pair in _DEVICE_PAIRS}
        handlers.update(host_handlers(disk, reader_threads))
        super().__init__("cuda", handlers)

    @property
    def pinned_bytes(self) -> int:
        """Page-locked bytes of the engine's own staging memory."""
        return self._staging.pinned_bytes
