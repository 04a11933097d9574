"""The remote writer: a bounded queue of pages to write to (or delete from) the remote tier.

Callers ``offer`` pages and never wait: a page already queued is not queued twice, and a full
queue drops the page (counted in ``dropped``; the remote tier is a cache, the local disk stays
the durability tier). ``writer_threads`` threads drain it in batches; each page goes to the
thread its key hashes to, so a delete and a later put of one page keep their order. A batch
first asks which pages the remote store lacks, then reads only those from the local store
(``PageSource``: the page may have moved tier or gone meanwhile) and writes them.
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


@dataclass(frozen=True)
class Op:
    kind: OpKind
    ns_id: int
    key: PageKey


class RemoteWriter:
    """Owns the queue, its lock and the writer threads. ``start``/``close`` are idempotent."""

    def __init__(self, tier: RemoteTier, source: PageSource, config: RemoteConfig) -> None:
        self._tier = tier
        self._source = source
        self._config = config
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._shards: list[deque[Op]] = [deque() for _ in range(config.writer_threads)]
        self._queued: set[Op] = set()
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
                op = Op(kind, ns_id, key)
                if op in self._queued:
                    continue
                if len(self._queued) >= self._config.queue_pages:
                    self._dropped += 1
                    continue
                self._queued.add(op)
                self._shards[key[0] % len(self._shards)].append(op)
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
    def _run(self, shard: deque[Op]) -> None:
        while True:
            batch = self._take(shard)
            if batch is None:
                return
            try:
                self._write(batch)
            except Exception:  # thread boundary: the batch is lost, the writer goes on
                log.exception("remote writer failed on a batch of %d page(s)", len(batch))
            finally:
                with self._lock:
                    self._busy -= 1
                    self._changed.notify_all()

    def _take(self, shard: deque[Op]) -> list[Op] | None:
        """The next run of ops of one kind and namespace (at most ``batch_pages``); None: closing."""
        with self._lock:
            while not shard and not self._closing:
                self._changed.wait()
            if self._closing:
                return None
            first = shard.popleft()
            batch = [first]
            while (shard and len(batch) < self._config.batch_pages
                   and shard[0].kind is first.kind and shard[0].ns_id == first.ns_id):
                batch.append(shard.popleft())
            self._queued.difference_update(batch)
            self._busy += 1
            return batch

    def _write(self, batch: list[Op]) -> None:
        described = self._source.describe(batch[0].ns_id)
        if described is None:
            return
        fingerprint, page_bytes = described
        keys = [op.key for op in batch]
        if batch[0].kind is OpKind.DELETE:
            self._tier.delete(fingerprint, keys)
            return
        per_call = max(1, self._config.batch_bytes // page_bytes)
        for start in range(0, len(keys), per_call):
            self._put(batch[0].ns_id, fingerprint, page_bytes, keys[start:start + per_call])

    def _put(self, ns_id: int, fingerprint: bytes, page_bytes: int, keys: list[PageKey]) -> None:
        missing = self._tier.missing(fingerprint, keys)
        if not missing:  # None (the store is unreachable: the pages are not written) or none
            return
        outs = {key: bytearray(page_bytes) for key in missing}
        found = [key for key in missing if self._source.read_page(ns_id, key, memoryview(outs[key]))]
        if found:
            self._tier.store(fingerprint, found, [memoryview(outs[key]) for key in found])
