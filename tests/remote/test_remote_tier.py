"""RemoteTier and RemoteWriter over the in-memory backend: what counts as a hit, what is deleted,
back-off when the store is down, the bounded write queue."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from memory_backend import MemoryBackend

from tierd.config import RemoteConfig
from tierd.keys import PageKey
from tierd.remote.page_value import HEADER_BYTES, page_id
from tierd.remote.tier import RemoteTier
from tierd.remote.writer import RemoteWriter

FP = os.urandom(16)
PAGE_BYTES = 4096


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def keys(n: int, salt: int = 0) -> list[PageKey]:
    return [bytes([salt, i % 256, i // 256]) + bytes(13) for i in range(n)]


def pages(n: int) -> list[bytes]:
    return [os.urandom(PAGE_BYTES) for _ in range(n)]


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tier(backend: MemoryBackend, clock: Clock) -> RemoteTier:
    return RemoteTier(RemoteConfig(batch_pages=4, retry_after_s=5.0), backend, clock)


def store(tier: RemoteTier, ks: list[PageKey], ps: list[bytes]) -> None:
    assert tier.store(FP, ks, [memoryview(p) for p in ps]) == len(ks)


def test_fetch_returns_the_cached_prefix_bit_exact_across_batches(tier: RemoteTier,
                                                                  backend: MemoryBackend) -> None:
    ks, ps = keys(10), pages(10)
    store(tier, ks[:7], ps[:7])
    got = tier.fetch(FP, ks, PAGE_BYTES)
    assert [bytes(g) for g in got] == ps[:7]
    assert backend.calls["get_into"] == 2  # batch_pages=4: 4 found, then 3 of 4: the prefix ended
    assert tier.cached_prefix(FP, ks) == 7
    stats = tier.stats()
    assert (stats.hits, stats.misses, stats.bytes_read) == (14, 2, 7 * PAGE_BYTES)


def test_another_namespace_gets_nothing(tier: RemoteTier) -> None:
    ks, ps = keys(3), pages(3)
    store(tier, ks, ps)
    assert tier.fetch(os.urandom(16), ks, PAGE_BYTES) == []
    assert tier.cached_prefix(os.urandom(16), ks) == 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "head_only", "body_only", "foreign",
                                    "bad_header"])
def test_a_damaged_value_is_a_counted_miss_and_is_deleted(tier: RemoteTier, backend: MemoryBackend,
                                                          damage: str) -> None:
    ks, ps = keys(3), pages(3)
    store(tier, ks, ps)
    pid = page_id(FP, ks[1])
    if damage == "flip":
        body = bytearray(backend.payloads[pid])
        body[1234] ^= 0x10
        backend.payloads[pid] = bytes(body)
    elif damage == "truncate":
        backend.payloads[pid] = backend.payloads[pid][:-1]
    elif damage == "head_only":
        del backend.payloads[pid]
    elif damage == "body_only":
        del backend.headers[pid]
    elif damage == "foreign":  # another page's value under this page's name
        backend.headers[pid] = backend.headers[page_id(FP, ks[2])]
        backend.payloads[pid] = backend.payloads[page_id(FP, ks[2])]
    else:
        backend.headers[pid] = bytes(HEADER_BYTES)
    got = tier.fetch(FP, ks, PAGE_BYTES)
    assert [bytes(g) for g in got] == ps[:1]
    assert tier.stats().checksum_failures == 1
    assert pid not in backend.headers and pid not in backend.payloads
    assert page_id(FP, ks[2]) in backend.headers  # only the bad value goes


def test_a_down_store_costs_one_call_then_backs_off(tier: RemoteTier, backend: MemoryBackend,
                                                    clock: Clock) -> None:
    ks, ps = keys(4), pages(4)
    store(tier, ks, ps)
    backend.down = True
    assert tier.fetch(FP, ks, PAGE_BYTES) == []
    assert tier.cached_prefix(FP, ks) == 0
    assert tier.store(FP, ks, [memoryview(p) for p in ps]) == 0
    assert backend.calls["get_into"] == 1 and backend.calls["exists"] == 0  # backing off
    stats = tier.stats()
    assert stats.errors == 1 and not stats.available
    backend.down = False
    clock.now_s += 5.0
    assert tier.available
    assert [bytes(g) for g in tier.fetch(FP, ks, PAGE_BYTES)] == ps


def test_batches_respect_the_byte_bound(backend: MemoryBackend, clock: Clock) -> None:
    tier = RemoteTier(RemoteConfig(batch_pages=16, batch_bytes=2 * PAGE_BYTES), backend, clock)
    ks, ps = keys(5), pages(5)
    store(tier, ks, ps)
    assert len(tier.fetch(FP, ks, PAGE_BYTES)) == 5
    assert backend.calls["get_into"] == 3


class DictSource:
    """A PageSource over a dict: ``(ns_id, key) -> bytes``."""

    def __init__(self) -> None:
        self.pages: dict[tuple[int, PageKey], bytes] = {}
        self.reads = 0

    def describe(self, ns_id: int) -> tuple[bytes, int] | None:
        return (FP, PAGE_BYTES) if ns_id == 1 else None

    def read_page(self, ns_id: int, key: PageKey, out: memoryview) -> bool:
        self.reads += 1
        page = self.pages.get((ns_id, key))
        if page is None:
            return False
        out[:] = page
        return True


@pytest.fixture
def source() -> DictSource:
    return DictSource()


def writer_for(tier: RemoteTier, source: DictSource, **changes: object) -> Iterator[RemoteWriter]:
    writer = RemoteWriter(tier, source, RemoteConfig(**changes))  # type: ignore[arg-type]
    writer.start()
    try:
        yield writer
    finally:
        writer.close()


def test_the_writer_writes_what_the_store_lacks_and_skips_the_rest(
        tier: RemoteTier, source: DictSource, backend: MemoryBackend) -> None:
    ks, ps = keys(6), pages(6)
    for key, page in zip(ks[:5], ps[:5]):
        source.pages[(1, key)] = page
    store(tier, ks[:2], ps[:2])  # already there: not read, not written again
    for writer in writer_for(tier, source, writer_threads=2, batch_pages=3):
        writer.offer(1, ks)       # ks[5] is not in the local store: skipped
        writer.offer(7, ks)       # an unknown namespace: skipped
        assert writer.wait_idle(30.0)
    assert source.reads == 4
    assert [bytes(g) for g in tier.fetch(FP, ks, PAGE_BYTES)] == ps[:5]
    assert tier.stats().pages_written == 2 + 3


def test_a_full_queue_drops_and_counts(tier: RemoteTier, source: DictSource) -> None:
    writer = RemoteWriter(tier, source, RemoteConfig(queue_pages=3))  # not started: nothing drains
    writer.offer(1, keys(5))
    writer.offer(1, keys(2))  # queued already: neither queued again nor dropped
    assert (writer.queue_depth, writer.dropped) == (3, 2)
    writer.close()
    assert writer.dropped == 5 and writer.queue_depth == 0


def test_a_delete_after_a_put_of_the_same_page_wins(tier: RemoteTier, source: DictSource) -> None:
    ks, ps = keys(4), pages(4)
    for key, page in zip(ks, ps):
        source.pages[(1, key)] = page
    for writer in writer_for(tier, source, writer_threads=3, batch_pages=2):
        for _ in range(5):
            writer.offer(1, ks)
            writer.offer_delete(1, ks[2:])
        assert writer.wait_idle(30.0)
    assert tier.cached_prefix(FP, ks) == 2


def test_a_miss_is_remembered_for_miss_cache_s_unless_this_node_writes_the_page(
        backend: MemoryBackend, clock: Clock) -> None:
    tier = RemoteTier(RemoteConfig(miss_cache_s=1.0, miss_cache_pages=2), backend, clock)
    ks, ps = keys(3), pages(3)
    assert tier.cached_prefix(FP, ks) == 0 and tier.fetch(FP, ks, PAGE_BYTES) == []
    assert backend.calls["exists"] == 1 and backend.calls["get_into"] == 0  # the fetch: no trip
    other = RemoteTier(RemoteConfig(), backend, clock)  # another node writes the page
    assert other.store(FP, ks[:1], [memoryview(ps[0])]) == 1
    assert tier.fetch(FP, ks, PAGE_BYTES) == []          # still remembered as missing ...
    clock.now_s += 1.0
    assert [bytes(g) for g in tier.fetch(FP, ks, PAGE_BYTES)] == ps[:1]  # ... until it expires
    tier.store(FP, ks[1:2], [memoryview(ps[1])])          # this node's own write forgets the miss
    assert [bytes(g) for g in tier.fetch(FP, ks, PAGE_BYTES)] == ps[:2]
    for salt in range(1, 4):                              # bounded: the oldest misses go first
        assert tier.cached_prefix(FP, keys(1, salt)) == 0
    calls = backend.calls["exists"]
    assert tier.cached_prefix(FP, keys(1, 1)) == 0 and backend.calls["exists"] == calls + 1
    assert tier.cached_prefix(FP, keys(1, 3)) == 0 and backend.calls["exists"] == calls + 1


class FlakyBackend(MemoryBackend):
    """Down for its first ``failures_left`` calls, then up."""

    def __init__(self, failures_left: int) -> None:
        super().__init__()
        self.failures_left = failures_left

    def _enter(self, call: str) -> None:
        self.down = self.failures_left > 0
        self.failures_left -= 1
        super()._enter(call)


@pytest.mark.parametrize(("failures", "written"), [(1, 3), (2, 0)])
def test_a_batch_the_store_was_down_for_is_tried_once_more(source: DictSource, failures: int,
                                                           written: int) -> None:
    backend = FlakyBackend(failures)
    tier = RemoteTier(RemoteConfig(retry_after_s=0.01), backend)
    ks, ps = keys(3), pages(3)
    for key, page in zip(ks, ps):
        source.pages[(1, key)] = page
    for writer in writer_for(tier, source, writer_threads=1, retry_after_s=0.01):
        writer.offer(1, ks)
        assert writer.wait_idle(30.0)
        assert writer.dropped == 3 - written
    assert len(backend.headers) == written
