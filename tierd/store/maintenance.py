"""Background maintenance: ends expired leases and keeps every tier under its high watermark.

One thread, woken every ``maintenance_interval_s`` or at once by ``wake()`` (after puts and disk
progress). ``start``/``close`` are idempotent.
"""

from __future__ import annotations

import logging
import threading
import time

from tierd.store.eviction import Evictor
from tierd.store.manager import Manager

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, manager: Manager, evictor: Evictor, interval_s: float, round_timeout_s: float,
                 wake: threading.Event) -> None:
        """``wake``: set by others (disk progress) to start a round at once."""
        self._manager = manager
        self._evictor = evictor
        self._interval_s = interval_s
        self._round_timeout_s = round_timeout_s
        self._wake = wake
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
        self._evictor.enforce_watermarks(time.monotonic() + self._round_timeout_s)

    def expire_leases(self) -> int:
        expired = self._manager.expire_leases(time.monotonic())
        if expired:
            log.info("%d lease(s) expired and were released", expired)
        return expired

    def _run(self) -> None:
        interval_s = self._interval_s
        while not self._stop.is_set():
            self._wake.wait(interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception:  # thread boundary: keep maintaining, keep the traceback
                log.exception("maintenance round failed")
