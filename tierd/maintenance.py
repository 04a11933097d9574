"""Background maintenance: ends expired leases and keeps every tier under its high watermark.

One thread, woken every ``maintenance_interval_s`` or at once by ``wake()`` (after puts and disk
progress). ``start``/``close`` are idempotent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tierd.eviction import Evictor
from tierd.index.leases import LeaseRecord
from tierd.store_core import StoreCore

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, core: StoreCore, evictor: Evictor,
                 release_locked: Callable[[LeaseRecord], None]) -> None:
        self._core = core
        self._evictor = evictor
        self._release_locked = release_locked
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="tierd-maintenance", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def run_once(self) -> None:
        """One round: expire leases, then evict down to the watermarks."""
        self.expire_leases()
        self._evictor.enforce_watermarks(time.monotonic() + self._core.config.acquire_timeout_s)

    def expire_leases(self) -> int:
        core = self._core
        with core.lock:
            expired = core.leases.expired(time.monotonic())
            for lease_id in expired:
                self._release_locked(core.leases.pop(lease_id))
        if expired:
            log.info("%d lease(s) expired and were released", len(expired))
        return len(expired)

    def _run(self) -> None:
        interval_s = self._core.config.maintenance_interval_s
        while not self._stop.is_set():
            self._wake.wait(interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception:  # thread boundary: keep maintaining, keep the traceback
                log.exception("maintenance round failed")
