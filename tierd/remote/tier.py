"""The remote tier's decisions over a backend: what counts as a hit, what is deleted, when to back off.

A page enters the caller's buffer only after its header and checksum check (``page_value``);
a value that fails (torn, half-evicted, truncated, corrupt, foreign) is a miss, is counted in
``checksum_failures`` and is deleted. A backend failure (``RemoteUnavailable``) is a miss too:
the tier then answers misses without trying for ``retry_after_s``, so a down cluster costs
requests at most one ``timeout_s`` each, never a hang (any other exception a backend raises is
logged and handled the same way). Thread-safe; owns its counters' lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from tierd.config import RemoteConfig
from tierd.keys import PageKey
from tierd.remote.base import Fetched, RemoteBackend, RemoteUnavailable
from tierd.remote.miss_cache import MissCache
from tierd.remote.page_value import Verdict, build_header, page_id, verify
from tierd.values import TierStats

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RemoteStats:
    """The remote tier's counters since start (monotonic), pages and payload bytes."""

    backend: str
    available: bool        # False while backing off after a failure
    hits: int              # pages found (lookups) or read and verified (fetches)
    misses: int            # lookups and fetches that ended at a missing page
    bytes_read: int
    bytes_written: int
    pages_written: int
    errors: int            # backend calls, or parts of them (a node), that failed: down, slow, refused
    checksum_failures: int  # values that failed their check, deleted
    queue_depth: int = 0   # pages waiting for the writer (filled in by the writer's owner)
    dropped: int = 0       # pages the writer's queue had no room for

    def as_tier_stats(self) -> TierStats:
        """The tier's row of Stats: no capacity or residency (the cluster's business); bytes in
        are bytes written to it, bytes out bytes read from it."""
        return TierStats(0, 0, 0, self.hits, self.misses, 0, self.bytes_written, self.bytes_read,
                         self.queue_depth)


class _Counters:
    def __init__(self) -> None:
        self.hits = self.misses = self.bytes_read = self.bytes_written = 0
        self.pages_written = self.errors = self.checksum_failures = 0


class RemoteTier:
    """One backend, its counters and its back-off state."""

    def __init__(self, config: RemoteConfig, backend: RemoteBackend,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._backend = backend
        self._clock = clock
        self._lock = threading.Lock()
        self._counts = _Counters()
        self._down_until_s = 0.0
        self._misses = MissCache(config.miss_cache_s, config.miss_cache_pages, clock)

    # -- reads ------------------------------------------------------------------------------------
    def cached_prefix(self, fingerprint: bytes, keys: Sequence[PageKey]) -> int:
        """How many leading ``keys`` the remote store holds (0 while it is unavailable)."""
        found = 0
        for chunk in self._chunks(len(keys), 0):
            ids = [page_id(fingerprint, key) for key in keys[chunk]]
            if self._misses.missing(ids[0]):
                break
            present = self._exists(ids)
            if present is None:
                return found
            run = present.index(False) if False in present else len(present)
            found += run
            if run < len(present):
                self._misses.add(ids[run])
                break
        self._count(hits=found, misses=int(found < len(keys)))
        return found

    def fetch(self, fingerprint: bytes, keys: Sequence[PageKey], page_bytes: int) -> list[memoryview]:
        """The verified pages of the longest prefix of ``keys`` the remote store holds, in order."""
        pages: list[memoryview] = []
        for chunk in self._chunks(len(keys), page_bytes):
            got = self._fetch_chunk(fingerprint, keys[chunk], page_bytes)
            pages += got
            if len(got) < chunk.stop - chunk.start:
                break
        self._count(hits=len(pages), misses=int(len(pages) < len(keys)),
                    bytes_read=len(pages) * page_bytes)
        return pages

    def _fetch_chunk(self, fingerprint: bytes, keys: Sequence[PageKey],
                     page_bytes: int) -> list[memoryview]:
        ids = [page_id(fingerprint, key) for key in keys]
        if self._misses.missing(ids[0]):
            return []
        # Uninitialised: every byte is either written by the backend or the page is not returned.
        views = [np.empty(page_bytes, np.uint8).data for _ in keys]
        fetched = self._call(lambda: self._backend.get_into(ids, views, self._deadline_s()))
        if fetched is None:
            return []
        good, bad = self._judge(fingerprint, keys, views, fetched)
        if good < len(keys):
            self._misses.add(ids[good])
        if bad:
            self._count(checksum_failures=len(bad))
            self._call(lambda: self._backend.delete(bad, self._deadline_s()))
        return views[:good]

    def _judge(self, fingerprint: bytes, keys: Sequence[PageKey], views: Sequence[memoryview],
               fetched: Sequence[Fetched | None]) -> tuple[int, list[bytes]]:
        """``(length of the verified prefix, page ids of values that failed their check)``."""
        good = len(keys)
        bad: list[bytes] = []
        for i, (key, view, value) in enumerate(zip(keys, views, fetched)):
            if value is None:
                good = min(good, i)
                continue
            verdict = verify(value.header, fingerprint, key, view, value.payload_bytes)
            if verdict is not Verdict.OK:
                log.warning("remote page %s of namespace %s is %s: deleted, counted as a miss",
                            key.hex(), fingerprint.hex(), verdict.value)
                bad.append(page_id(fingerprint, key))
                good = min(good, i)
        return good, bad

    # -- writes -----------------------------------------------------------------------------------
    def missing(self, fingerprint: bytes, keys: Sequence[PageKey]) -> list[PageKey] | None:
        """The ``keys`` the remote store does not hold; ``None`` when it cannot tell now."""
        present = self._exists([page_id(fingerprint, key) for key in keys])
        if present is None:
            return None
        return [key for key, there in zip(keys, present) if not there]

    def store(self, fingerprint: bytes, keys: Sequence[PageKey], payloads: Sequence[memoryview]) -> int:
        """Write pages (one backend call: the caller batches); how many were stored."""
        ids = [page_id(fingerprint, key) for key in keys]
        headers = [build_header(fingerprint, key, payload) for key, payload in zip(keys, payloads)]
        stored = self._call(lambda: self._backend.put(ids, headers, payloads, self._deadline_s()))
        if stored is None:
            return 0
        self._misses.discard(pid for pid, ok in zip(ids, stored) if ok)
        written = [payload.nbytes for payload, ok in zip(payloads, stored) if ok]
        self._count(pages_written=len(written), bytes_written=sum(written))
        return len(written)

    def delete(self, fingerprint: bytes, keys: Sequence[PageKey]) -> bool:
        """Remove pages; False when the remote store could not be reached."""
        ids = [page_id(fingerprint, key) for key in keys]

        def delete() -> bool:
            self._backend.delete(ids, self._deadline_s())
            return True
        return self._call(delete) is True

    # -- state ------------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """False while backing off after a failure (calls answer misses without trying)."""
        with self._lock:
            return self._clock() >= self._down_until_s

    def stats(self) -> RemoteStats:
        with self._lock:
            c = self._counts
            return RemoteStats(self._backend.name, self._clock() >= self._down_until_s, c.hits,
                               c.misses, c.bytes_read, c.bytes_written, c.pages_written,
                               c.errors + self._backend.failures, c.checksum_failures)

    def close(self) -> None:
        self._backend.close()

    # -- helpers ----------------------------------------------------------------------------------
    def _exists(self, ids: list[bytes]) -> list[bool] | None:
        return self._call(lambda: self._backend.exists(ids, self._deadline_s()))

    def _deadline_s(self) -> float:
        return self._clock() + self._config.timeout_s

    def _chunks(self, num_keys: int, page_bytes: int) -> Iterator[slice]:
        per_call = self._config.batch_pages
        if page_bytes:
            per_call = max(1, min(per_call, self._config.batch_bytes // page_bytes))
        for start in range(0, num_keys, per_call):
            yield slice(start, min(num_keys, start + per_call))

    def _call(self, fn: Callable[[], T]) -> T | None:
        """``fn()``, or ``None`` when the backend is backing off or fails (then it backs off)."""
        if not self.available:
            return None
        try:
            return fn()
        except Exception as exc:  # the tier's boundary: a remote failure is a miss, never an error
            if not isinstance(exc, RemoteUnavailable):
                log.exception("remote tier (%s) call failed", self._backend.name)
            with self._lock:
                was_up = self._clock() >= self._down_until_s
                self._counts.errors += 1
                self._down_until_s = self._clock() + self._config.retry_after_s
            if was_up:
                log.warning("remote tier (%s) unavailable, answering misses for %.1f s: %s",
                            self._backend.name, self._config.retry_after_s, exc)
            return None

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self._counts, name, getattr(self._counts, name) + delta)
