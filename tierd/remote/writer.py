"""The remote writer: a bounded queue of pages to write to (or delete from) the remote tier.

Callers ``offer`` pages and never wait. A page already queued is not queued twice: the latest
offer of it (put or delete) is what happens. A full queue drops the page (counted in
``dropped``; the remote tier is a cache, the local disk stays the durability tier).
``writer_threads`` threads drain it in batches; each page goes to the thread its key hashes to,
so a delete and a later put of one page keep their order. A batch the store could not be reached
for goes back to its queue and is tried once more after ``retry_after_s``. A batch first asks which pages the
remote store lacks, then reads only those from the local store (``PageSource``: the page may
have moved tier or gone meanwhile) and writes them.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tierd.config import RemoteConfig
from tierd.keys import PageKey
from tierd.remote.tier import RemoteTier

log = logging.getLogger(__name__)


class PageSource(Protocol):
    """Where the writer reads the pages it writes (the local page store)."""

    def describe(self, ns_id: int) -> tuple[bytes, int] | None:
        """``(fingerprint, page_bytes)`` of a namespace, ``None`` when it is unknown."""

    def read_page(self, ns_id: int, key: PageKey, out: memoryview) -> bool:
        """Copy the page into ``out`` from wherever it is; False when it is not cached."""


class OpKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"


PageRef = tuple[int, PageKey]  # (ns_id, key)


@dataclass(frozen=True)
class _Batch:
    kind: OpKind
    ns_id: int
    keys: list[PageKey]
    retried: frozenset[PageKey]  # taken before, put back once when the store was unreachable


class RemoteWriter:
    """Owns the queue, its lock and the writer threads. ``start``/``close`` are idempotent."""

    def __init__(self, tier: RemoteTier, source: PageSource, config: RemoteConfig) -> None:
        self._tier = tier
        self._source = source
        self._config = config
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._shards: list[deque[PageRef]] = [deque() for _ in range(config.writer_threads)]
        self._queued: dict[PageRef, OpKind] = {}
        self._retries: set[PageRef] = set()  # queued pages put back once (a subset of _queued)
        self._busy = 0
        self._dropped = 0
        self._closing = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        with self._lock:
            if self._threads or self._closing:
                return
            self._threads = [threading.Thread(target=self._run, args=(shard,), daemon=True,
                                              name=f"tierd-remote-writer-{i}")
                             for i, shard in enumerate(self._shards)]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Stop taking pages, finish the batches being written, drop what is still queued."""
        with self._lock:
            self._closing = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()
        with self._lock:
            self._dropped += len(self._queued)
            self._queued.clear()
            self._retries.clear()
            for shard in self._shards:
                shard.clear()

    # -- callers ----------------------------------------------------------------------------------
    def offer(self, ns_id: int, keys: Sequence[PageKey]) -> None:
        """Queue pages to be written (those already queued are skipped). Never waits."""
        self._offer(OpKind.PUT, ns_id, keys)

    def offer_delete(self, ns_id: int, keys: Sequence[PageKey]) -> None:
        """Queue pages to be deleted from the remote store. Never waits."""
        self._offer(OpKind.DELETE, ns_id, keys)

    def _offer(self, kind: OpKind, ns_id: int, keys: Sequence[PageKey]) -> None:
        with self._lock:
            if self._closing:
                return
            for key in keys:
                ref = (ns_id, key)
                if ref in self._queued:
                    self._queued[ref] = kind
                    self._retries.discard(ref)  # a new offer: a fresh attempt
                    continue
                if len(self._queued) >= self._config.queue_pages:
                    self._dropped += 1
                    continue
                self._queued[ref] = kind
                self._shards[key[0] % len(self._shards)].append(ref)
            self._changed.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is queued or being written (within ``timeout_s``)."""
        deadline_s = time.monotonic() + timeout_s
        with self._lock:
            while self._queued or self._busy:
                remaining_s = deadline_s - time.monotonic()
                if remaining_s <= 0:
                    return False
                self._changed.wait(remaining_s)
            return True

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return len(self._queued)

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._dropped

    # -- writer threads ---------------------------------------------------------------------------
    def _run(self, shard: deque[PageRef]) -> None:
        while True:
            batch = self._take(shard)
            if batch is None:
                return
            unwritten: list[PageKey] = []
            try:
                unwritten = self._write(batch)
            except Exception:  # thread boundary: the batch is lost, the writer goes on
                log.exception("remote writer failed on a batch of %d page(s)", len(batch.keys))
            finally:
                with self._lock:
                    self._busy -= 1
                    if unwritten:
                        self._requeue_locked(shard, batch, unwritten)
                    self._changed.notify_all()
            if unwritten:  # the store is unreachable: wait before trying again
                with self._lock:
                    self._changed.wait_for(lambda: self._closing, self._config.retry_after_s)

    def _requeue_locked(self, shard: deque[PageRef], batch: _Batch, keys: list[PageKey]) -> None:
        """Put pages the store could not be reached for at the tail of ``shard``, once: a page
        that fails again is dropped (counted), and one offered again meanwhile keeps that offer."""
        for key in keys:
            ref = (batch.ns_id, key)
            if ref in self._queued:
                continue
            if key in batch.retried:
                self._dropped += 1
                continue
            self._queued[ref] = batch.kind
            self._retries.add(ref)
            shard.append(ref)

    def _take(self, shard: deque[PageRef]) -> _Batch | None:
        """The next run of pages of one kind and namespace (at most ``batch_pages``); None: closing."""
        with self._lock:
            while not shard and not self._closing:
                self._changed.wait()
            if self._closing:
                return None
            ns_id, key = shard.popleft()
            kind = self._queued.pop((ns_id, key))
            keys = [key]
            while (shard and len(keys) < self._config.batch_pages and shard[0][0] == ns_id
                   and self._queued[shard[0]] is kind):
                keys.append(shard[0][1])
                del self._queued[shard.popleft()]
            retried = frozenset(key for key in keys if (ns_id, key) in self._retries)
            self._retries.difference_update((ns_id, key) for key in retried)
            self._busy += 1
            return _Batch(kind, ns_id, keys, retried)

    def _write(self, batch: _Batch) -> list[PageKey]:
        """Write (or delete) a batch; the pages left undone because the store was unreachable."""
        kind, ns_id, keys = batch.kind, batch.ns_id, batch.keys
        described = self._source.describe(ns_id)
        if described is None:
            return []
        fingerprint, page_bytes = described
        if kind is OpKind.DELETE:
            return [] if self._tier.delete(fingerprint, keys) else keys
        per_call = max(1, self._config.batch_bytes // page_bytes)
        for start in range(0, len(keys), per_call):
            if not self._put(ns_id, fingerprint, page_bytes, keys[start:start + per_call]):
                return keys[start:]
        return []

    def _put(self, ns_id: int, fingerprint: bytes, page_bytes: int, keys: list[PageKey]) -> bool:
        """Write the pages the store lacks; False when it could not be reached (none written).
        Pages on a node that failed alone are misses for readers, not retried."""
        missing = self._tier.missing(fingerprint, keys)
        if missing is None:
            return False
        if not missing:
            return True
        outs = {key: bytearray(page_bytes) for key in missing}
        found = [key for key in missing if self._source.read_page(ns_id, key, memoryview(outs[key]))]
        if found and not self._tier.store(fingerprint, found, [memoryview(outs[key]) for key in found]):
            return self._tier.available
        return True
