"""The strict fake device engine: the CUDA engine's contract, checked on a CPU.

Device memory (``tierd.tiers.fake_device``) has no host view. A batch touching the device fills
its destinations with sentinels when submitted and lands its bytes only when its ticket completes,
after a random delay drawn from the configured range, on a timeline thread; batches of one lane
complete in submission order, like a CUDA stream. Sources are read when the batch lands, so a
source freed or overwritten before completion shows up as wrong bytes. Code that reads hbm
through a host pointer raises; code that forgets to wait reads sentinels.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable

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
from tierd.store.transfer.cpu import DiskWriteHandler, copy_host, host_handlers
from tierd.tiers.base import Medium
from tierd.tiers.disk import DiskTier
from tierd.tiers.fake_device import SENTINEL_BYTE, FakeDeviceArena, FakeDeviceRegion

log = logging.getLogger(__name__)


class Timeline:
    """Runs actions at their due time on one thread; one lane's actions run in order.

    ``close`` runs what is still scheduled at once (in order), so no ticket is left hanging.
    """

    def __init__(self, min_delay_s: float, max_delay_s: float, seed: int) -> None:
        self._rng = random.Random(seed)
        self._min_delay_s = min_delay_s
        self._max_delay_s = max_delay_s
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._last_due_s: dict[Lane, float] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tierd-fake-device", daemon=True)
        self._thread.start()

    def schedule(self, lane: Lane, action: Callable[[], None]) -> None:
        with self._cond:
            if self._closed:
                raise Unavailable("the fake device engine is closed")
            delay_s = self._rng.uniform(self._min_delay_s, self._max_delay_s)
            due_s = max(time.monotonic() + delay_s, self._last_due_s.get(lane, 0.0))
            self._last_due_s[lane] = due_s
            heapq.heappush(self._heap, (due_s, next(self._order), action))
            self._cond.notify()

    def _next(self) -> Callable[[], None] | None:
        with self._cond:
            while True:
                now_s = time.monotonic()
                if self._heap and (self._closed or self._heap[0][0] <= now_s):
                    return heapq.heappop(self._heap)[2]
                if self._closed:
                    return None
                self._cond.wait(self._heap[0][0] - now_s if self._heap else None)

    def _run(self) -> None:
        while (action := self._next()) is not None:
            try:
                action()
            except Exception:  # thread boundary: the action settles its own tickets
                log.exception("a fake device action failed")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()


class DeviceHandler:
    """Every pair with the fake device on one side (device -> disk is staged through host memory)."""

    def __init__(self, arena: FakeDeviceArena, timeline: Timeline, disk_writes: DiskWriteHandler) -> None:
        self._arena = arena
        self._timeline = timeline
        self._disk_writes = disk_writes

    def run(self, lane: Lane, copies: Indexed, ticket: TransferTicket) -> None:
        accepted: Indexed = []
        for index, copy in copies:
            try:
                if not isinstance(copy.dst, DiskRef):
                    self._page(copy.dst).fill(SENTINEL_BYTE)
            except Exception:  # a bad slot or a closed region: this page cannot arrive
                log.exception("fake device copy refused")
                ticket.settle(index, False)
                continue
            accepted.append((index, copy))
        if accepted:
            self._timeline.schedule(lane, lambda: self._land(lane, accepted, ticket))

    def _page(self, endpoint: Endpoint) -> np.ndarray:
        """The bytes of a device slot or a host buffer, as a writable uint8 array."""
        if isinstance(endpoint, SlotRef) and isinstance(endpoint.region, FakeDeviceRegion):
            if not 0 <= endpoint.slot < endpoint.region.num_slots:
                raise TransferError(f"slot {endpoint.slot} is outside {endpoint.region!r}")
            page: np.ndarray = self._arena.device_pages(endpoint.region)[endpoint.slot]
            return page
        return np.frombuffer(host_view(endpoint), np.uint8)

    def _land(self, lane: Lane, copies: Indexed, ticket: TransferTicket) -> None:
        staged: Indexed = []
        for index, copy in copies:
            try:
                src = self._page(copy.src)
                if isinstance(copy.dst, DiskRef):
                    staged.append((index, Copy(src.copy().data, copy.dst)))
                    continue
                copy_host(src.data, self._page(copy.dst).data)
                ok = True
            except Exception:  # a closed region or a bug: this page did not arrive
                log.exception("fake device copy failed")
                ok = False
            ticket.settle(index, ok)
        if staged:
            self._disk_writes.run(lane, staged, ticket)

    def close(self) -> None:
        self._timeline.close()


class FakeDeviceEngine(DispatchEngine):
    """The CPU engine's host and disk handlers plus the fake device's (see the module docstring)."""

    def __init__(self, disk: DiskTier, reader_threads: int, arena: FakeDeviceArena,
                 min_delay_s: float, max_delay_s: float, seed: int) -> None:
        device = DeviceHandler(arena, Timeline(min_delay_s, max_delay_s, seed), DiskWriteHandler(disk))
        # The device first: closing lands what is in flight while the host handlers still work.
        handlers: dict[tuple[Medium, Medium], Handler] = {
            pair: device for pair in ((Medium.HOST, Medium.DEVICE), (Medium.DEVICE, Medium.HOST),
                                      (Medium.DEVICE, Medium.DEVICE), (Medium.DEVICE, Medium.DISK))}
        handlers.update(host_handlers(disk, reader_threads))
        super().__init__("fake", handlers)
