"""The disk tier's read side: counters bumped by reader threads, and the gate that keeps
``close`` from unmapping LMDB's map under a reader's zero-copy view."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from tierd.errors import Unavailable
from tierd.tiers.cold_pages import StoredForm


class ReadCounters:
    """Counters bumped by reader threads (the writer never takes this lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.checksum_failures = 0

    def add_read(self, num_bytes: int) -> None:
        with self._lock:
            self.bytes_read += num_bytes

    def add_failure(self, num_failures: int = 1) -> None:
        with self._lock:
            self.checksum_failures += num_failures


class ReaderGate:
    """Counts reads in flight so ``close`` never unmaps the map under a reader's zero-copy view."""

    def __init__(self, closed_message: str) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._open = True
        self._closed_message = closed_message

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            if not self._open:
                raise Unavailable(self._closed_message)
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    self._cond.notify_all()

    def close(self) -> None:
        """Refuse new reads and wait for the ones in flight."""
        with self._cond:
            self._open = False
            while self._active:
                self._cond.wait()


def copy_out(payload: memoryview, out: memoryview, form: StoredForm | None) -> None:
    """A verified stored payload into ``out``: copied (exact), or decoded from its cold form."""
    if form is not None:
        form.decode(payload, out)
        return
    # numpy's copy releases the GIL, so reads on other threads overlap it.
    np.copyto(np.frombuffer(out, np.uint8), np.frombuffer(payload, np.uint8))
