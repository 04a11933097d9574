"""The LMDB ``disk`` tier: durability, group commit, backpressure, map-full and corruption."""

from __future__ import annotations

import math
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierd.config import DiskConfig, MemoryTierConfig, StoreConfig
from tierd.errors import FailedPrecondition, InvalidArgument, Unavailable
from tierd.spec import Namespace, PageSpec
from tierd.tiers import disk as disk_module
from tierd.tiers.disk import DiskEntry, DiskTier, ReadStatus, map_size_bytes
from tierd.tiers.page_format import HEADER_BYTES, disk_key

PAGE_BYTES = 512 << 10
WAIT_S = 10.0


def make_config(data_dir: Path, **disk: object) -> StoreConfig:
    disk_fields: dict[str, object] = {"capacity_bytes": 16 << 20, "map_min_extra_bytes": 1 << 20,
                                      "fsync": False}
    disk_fields.update(disk)
    return StoreConfig(data_dir=data_dir, hbm=MemoryTierConfig(capacity_bytes=1 << 20),
                       dram=MemoryTierConfig(capacity_bytes=1 << 20),
                       disk=DiskConfig(**disk_fields))  # type: ignore[arg-type]


SPEC = PageSpec(model="m@1", dtype="float16", num_layers=2, num_kv_heads=2, head_dim=8,
                page_tokens=4)
NS_IDS = (1, 2)  # namespaces the tests write to; their records give the checksums' fingerprints


def namespace(ns_id: int) -> Namespace:
    return Namespace(ns_id=ns_id, tenant=f"t{ns_id}", spec=SPEC, fingerprint=ns_id.to_bytes(16, "big"))


def open_tier(config: StoreConfig, tier: DiskTier | None = None) -> DiskTier:
    """``tier`` (else a new one) opened, with records for the namespaces in ``NS_IDS``."""
    t = DiskTier(config) if tier is None else tier
    t.open()
    for ns_id in NS_IDS:
        t.save_namespace(namespace(ns_id))
    return t


def key_of(i: int) -> bytes:
    return i.to_bytes(16, "big")


def random_page(seed: int, page_bytes: int = PAGE_BYTES) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, page_bytes, dtype=np.uint8).tobytes()


class Results:
    """Collects ``on_done`` calls as ``(tag, stored)`` in the order they happen."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []
        self._lock = threading.Lock()

    def callback(self, tag: int) -> Callable[[bool], None]:
        def on_done(stored: bool) -> None:
            with self._lock:
                self.calls.append((tag, stored))
        return on_done


class WriterBlocker:
    """An ``on_done`` that holds the writer thread until released (to queue work behind it)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, stored: bool) -> None:
        self.entered.set()
        self.release.wait(WAIT_S)


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[DiskTier]:
    t = open_tier(make_config(tmp_path))
    yield t
    t.close()


def write_pages(t: DiskTier, pages: dict[tuple[int, int], bytes]) -> Results:
    """Submit every page (keyed by (ns_id, i), seq = i) and wait for the writer."""
    results = Results()
    for tag, ((ns_id, i), payload) in enumerate(pages.items()):
        t.submit_write(ns_id, key_of(i), memoryview(payload), i, results.callback(tag))
    assert t.barrier(WAIT_S)
    return results


def read_page(t: DiskTier, ns_id: int, i: int, page_bytes: int = PAGE_BYTES
              ) -> tuple[ReadStatus, bytes]:
    dst = bytearray(page_bytes)
    status = t.read_into(ns_id, key_of(i), memoryview(dst))
    return status, bytes(dst)


def test_round_trip_is_bit_exact_and_namespaces_do_not_mix(tier: DiskTier) -> None:
    pages = {(ns_id, i): random_page(ns_id * 100 + i) for ns_id in (1, 2) for i in range(4)}
    results = write_pages(tier, pages)
    assert [stored for _, stored in results.calls] == [True] * len(pages)
    for (ns_id, i), payload in pages.items():
        assert read_page(tier, ns_id, i) == (ReadStatus.OK, payload)
    assert read_page(tier, 3, 0)[0] is ReadStatus.MISSING
    assert read_page(tier, 1, 99)[0] is ReadStatus.MISSING


def test_on_done_fires_in_order_after_the_page_is_committed(tier: DiskTier) -> None:
    seen: list[tuple[int, bool, bool]] = []
    for i in range(20):
        def on_done(stored: bool, i: int = i) -> None:
            seen.append((i, stored, tier.contains(1, key_of(i))))  # on the writer thread
        tier.submit_write(1, key_of(i), memoryview(random_page(i, 4096)), i, on_done)
    assert tier.barrier(WAIT_S)
    assert seen == [(i, True, True) for i in range(20)]


@pytest.mark.parametrize("limit", ["pages", "bytes"])
def test_group_commit_takes_many_pages_per_transaction(tmp_path: Path, limit: str) -> None:
    per_group = 5
    page_bytes = 4096
    disk = ({"writer_batch_pages": per_group} if limit == "pages"
            else {"writer_batch_bytes": per_group * (page_bytes + HEADER_BYTES)})
    t = open_tier(make_config(tmp_path, **disk))
    commits_before = t.stats().commits  # the format and namespace records
    blocker = WriterBlocker()
    t.submit_write(1, key_of(0), memoryview(random_page(0, page_bytes)), 0, blocker)
    assert blocker.entered.wait(WAIT_S)
    num_queued = 23
    results = Results()
    for i in range(1, num_queued + 1):
        t.submit_write(1, key_of(i), memoryview(random_page(i, page_bytes)), i,
                       results.callback(i))
    barrier_done = threading.Event()
    threading.Thread(target=lambda: t.barrier(WAIT_S) and barrier_done.set()).start()
    blocker.release.set()
    assert barrier_done.wait(WAIT_S)
    assert results.calls == [(i, True) for i in range(1, num_queued + 1)]
    # The blocked page's commit, then full groups of the queued pages (the barrier rides along).
    assert t.stats().commits - commits_before == 1 + math.ceil(num_queued / per_group)
    t.close()


def test_submit_blocks_while_the_queue_is_full(tmp_path: Path) -> None:
    t = open_tier(make_config(tmp_path, writer_queue_pages=3))
    blocker = WriterBlocker()
    t.submit_write(1, key_of(0), memoryview(b"a" * 64), 0, blocker)
    assert blocker.entered.wait(WAIT_S)
    for i in range(1, 4):
        t.submit_write(1, key_of(i), memoryview(b"b" * 64), i, lambda stored: None)
    submitted = threading.Event()

    def submit_one_more() -> None:
        t.submit_write(1, key_of(4), memoryview(b"c" * 64), 4, lambda stored: None)
        submitted.set()

    threading.Thread(target=submit_one_more).start()
    assert not submitted.wait(0.3)
    assert t.stats().queue_depth == 3
    blocker.release.set()
    assert submitted.wait(WAIT_S)
    assert t.barrier(WAIT_S)
    assert all(t.contains(1, key_of(i)) for i in range(5))
    t.close()


def test_barrier_times_out_while_the_writer_is_busy(tier: DiskTier) -> None:
    blocker = WriterBlocker()
    tier.submit_write(1, key_of(0), memoryview(b"a" * 64), 0, blocker)
    tier.submit_write(1, key_of(1), memoryview(b"b" * 64), 1, lambda stored: None)
    assert not tier.barrier(0.05)
    blocker.release.set()
    assert tier.barrier(WAIT_S)
    assert tier.contains(1, key_of(1))


def test_delete_contains_and_stats(tier: DiskTier) -> None:
    pages = {(1, i): random_page(i) for i in range(3)}
    write_pages(tier, pages)
    write_pages(tier, {(1, 0): random_page(7)})  # overwrite: same page count, more bytes written
    stats = tier.stats()
    assert (stats.stored_pages, stats.stored_bytes) == (3, 3 * (HEADER_BYTES + PAGE_BYTES))
    assert stats.bytes_written == 4 * (HEADER_BYTES + PAGE_BYTES)
    deleted = Results()
    tier.delete(1, [key_of(0), key_of(2), key_of(42)], deleted.callback(0))
    assert tier.barrier(WAIT_S)
    assert deleted.calls == [(0, True)]
    assert [tier.contains(1, key_of(i)) for i in range(3)] == [False, True, False]
    assert read_page(tier, 1, 0)[0] is ReadStatus.MISSING
    assert read_page(tier, 1, 1) == (ReadStatus.OK, pages[(1, 1)])
    stats = tier.stats()
    assert (stats.stored_pages, stats.stored_bytes) == (1, HEADER_BYTES + PAGE_BYTES)
    assert stats.bytes_read == PAGE_BYTES
    assert stats.queue_depth == 0 and stats.checksum_failures == 0
    assert stats.map_size_bytes == map_size_bytes(tier._config.disk)


def test_namespaces_and_pages_survive_reopen(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    namespaces = [namespace(n) for n in (2, 1, 300)]
    pages = {(ns.ns_id, i): random_page(ns.ns_id + i, 4096) for ns in namespaces for i in (5, 9)}
    t = open_tier(config)
    for ns in namespaces:
        t.save_namespace(ns)
    write_pages(t, pages)
    t.close()

    reopened = DiskTier(config)
    reopened.open()
    assert reopened.load_namespaces() == sorted(namespaces, key=lambda ns: ns.ns_id)
    entries = list(reopened.scan())
    assert sorted((e.ns_id, int.from_bytes(e.key, "big"), e.seq) for e in entries) == \
        sorted((ns_id, i, i) for ns_id, i in pages)
    assert {e.stored_bytes for e in entries} == {HEADER_BYTES + 4096}
    assert reopened.stats().stored_pages == len(pages)
    for (ns_id, i), payload in pages.items():
        assert read_page(reopened, ns_id, i, 4096) == (ReadStatus.OK, payload)
    reopened.close()


def test_scan_in_small_chunks_sees_every_entry_once(tier: DiskTier,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk_module, "SCAN_CHUNK_ENTRIES", 3)
    pages = {(ns_id, i): bytes([i]) * 32 for ns_id in (1, 2) for i in range(5)}
    write_pages(tier, pages)
    entries = list(tier.scan())
    assert [(e.ns_id, int.from_bytes(e.key, "big")) for e in entries] == sorted(pages)
    assert all(isinstance(e, DiskEntry) for e in entries)


def test_open_and_close_are_idempotent_and_closed_tier_refuses_work(tmp_path: Path) -> None:
    t = open_tier(make_config(tmp_path))
    t.open()
    write_pages(t, {(1, 0): b"p" * 128})
    t.close()
    t.close()
    with pytest.raises(Unavailable):
        t.submit_write(1, key_of(1), memoryview(b"q" * 128), 1, lambda stored: None)
    with pytest.raises(Unavailable):
        t.read_into(1, key_of(0), memoryview(bytearray(128)))
    with pytest.raises(Unavailable):
        t.delete(1, [key_of(0)])
    assert t.barrier(0.01)
    t.open()
    assert read_page(t, 1, 0, 128) == (ReadStatus.OK, b"p" * 128)
    t.close()


def test_close_commits_everything_queued(tmp_path: Path) -> None:
    config = make_config(tmp_path, fsync=True, writer_batch_pages=4)
    t = open_tier(config)
    results = Results()
    for i in range(12):
        t.submit_write(1, key_of(i), memoryview(bytes([i]) * 256), i, results.callback(i))
    t.close()
    assert results.calls == [(i, True) for i in range(12)]
    t.open()
    assert all(read_page(t, 1, i, 256) == (ReadStatus.OK, bytes([i]) * 256) for i in range(12))
    t.close()


def test_full_map_fails_only_what_does_not_fit(tmp_path: Path) -> None:
    config = make_config(tmp_path, capacity_bytes=2 << 20, map_headroom=0.0,
                         map_min_extra_bytes=0)
    t = DiskTier(config)
    map_full_calls: list[int] = []
    t.on_map_full = lambda: map_full_calls.append(1)
    open_tier(config, t)
    pages = {(1, i): random_page(i) for i in range(6)}
    results = write_pages(t, pages)
    stored = [tag for tag, ok in sorted(results.calls) if ok]
    assert 0 < len(stored) < len(pages)
    assert [ok for _, ok in sorted(results.calls)] == [i in stored for i in range(len(pages))]
    assert t.stats().map_full_events >= 1 and map_full_calls
    for i in range(len(pages)):
        status, data = read_page(t, 1, i)
        assert (status, data) == ((ReadStatus.OK, pages[(1, i)]) if i in stored
                                  else (ReadStatus.MISSING, bytes(PAGE_BYTES)))
    assert t.stats().stored_pages == len(stored)

    t.delete(1, [key_of(i) for i in stored])
    retry = write_pages(t, {(1, 10): pages[(1, 0)]})
    assert retry.calls == [(0, True)]
    assert read_page(t, 1, 10) == (ReadStatus.OK, pages[(1, 0)])
    t.close()


def flip_byte_in_data_file(env_dir: Path, needle: bytes, offset_from_needle: int) -> None:
    data_file = env_dir / "data.mdb"
    data = bytearray(data_file.read_bytes())
    position = data.find(needle)
    assert position >= 0 and data.find(needle, position + 1) < 0, "needle must occur once"
    data[position + offset_from_needle] ^= 0xFF
    data_file.write_bytes(data)


def exchange_values(env_dir: Path, a: bytes, b: bytes) -> None:
    """Swap the values under disk keys ``a`` and ``b`` (``b`` may be absent: ``a``'s value is
    then copied there), as a misdirected write would, through LMDB itself."""
    env = lmdb.open(str(env_dir), max_dbs=2)
    try:
        pages_db = env.open_db(b"pages")
        with env.begin(write=True, db=pages_db) as txn:
            value_a, value_b = txn.get(a), txn.get(b)
            txn.put(b, value_a)
            if value_b is not None:
                txn.put(a, value_b)
    finally:
        env.close()


@pytest.mark.parametrize("damage", ["flipped_byte", "exchanged_values", "namespace_id_reused"])
def test_damaged_value_is_reported_dropped_and_never_returned(tmp_path: Path, damage: str) -> None:
    config = make_config(tmp_path)
    pages = {(1, i): random_page(1000 + i) for i in range(3)}
    t = open_tier(config)
    write_pages(t, pages)
    t.close()
    if damage == "flipped_byte":
        flip_byte_in_data_file(t.path, pages[(1, 1)][4096:4160], 17)
        damaged = [(1, 1)]
    elif damage == "exchanged_values":
        exchange_values(t.path, disk_key(1, key_of(0)), disk_key(1, key_of(1)))
        damaged = [(1, 0), (1, 1)]
    else:
        damaged = list(pages)

    t = open_tier(config)
    if damage == "namespace_id_reused":  # as a second daemon on this data dir did: another spec
        t.save_namespace(Namespace(ns_id=1, tenant="other", spec=SPEC, fingerprint=b"\x99" * 16))
    for ns_id, i in damaged:
        dst = bytearray(PAGE_BYTES)
        assert t.read_into(ns_id, key_of(i), memoryview(dst)) is ReadStatus.CORRUPT
        assert dst == bytes(PAGE_BYTES)  # never the wrong bytes, not even in part
    assert t.stats().checksum_failures == len(damaged)
    assert t.barrier(WAIT_S)
    for ns_id, i in damaged:
        assert not t.contains(ns_id, key_of(i))
        assert read_page(t, ns_id, i)[0] is ReadStatus.MISSING
    assert t.stats().stored_pages == 3 - len(damaged)
    for (ns_id, i), payload in pages.items():
        if (ns_id, i) not in damaged:
            assert read_page(t, ns_id, i) == (ReadStatus.OK, payload)
    t.close()


def test_scan_drops_entries_with_a_bad_header(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    pages = {(1, i): random_page(2000 + i, 8192) for i in range(3)}
    t = open_tier(config)
    write_pages(t, pages)
    t.close()
    flip_byte_in_data_file(t.path, pages[(1, 0)][:64], -HEADER_BYTES)  # the magic

    t = open_tier(config)
    assert sorted(int.from_bytes(e.key, "big") for e in t.scan()) == [1, 2]
    assert t.stats().checksum_failures == 1
    assert t.barrier(WAIT_S)
    assert not t.contains(1, key_of(0))
    t.close()


def test_wrong_size_or_read_only_dst_raises(tier: DiskTier) -> None:
    write_pages(tier, {(1, 0): b"z" * 1000})
    with pytest.raises(InvalidArgument, match="1000 bytes"):
        tier.read_into(1, key_of(0), memoryview(bytearray(999)))
    with pytest.raises(InvalidArgument, match="writable"):
        tier.read_into(1, key_of(0), memoryview(bytes(1000)))
    assert read_page(tier, 1, 0, 1000) == (ReadStatus.OK, b"z" * 1000)


def test_bad_arguments_are_rejected_before_queueing(tier: DiskTier) -> None:
    commits_before = tier.stats().commits
    with pytest.raises(InvalidArgument, match="16 bytes"):
        tier.submit_write(1, b"short", memoryview(b"x"), 0, lambda stored: None)
    with pytest.raises(InvalidArgument, match="seq"):
        tier.submit_write(1, key_of(0), memoryview(b"x"), -1, lambda stored: None)
    with pytest.raises(InvalidArgument, match=r"keys\[1\]"):
        tier.delete(1, [key_of(0), b"short"])
    with pytest.raises(FailedPrecondition, match="no record"):
        tier.submit_write(3, key_of(0), memoryview(b"x"), 0, lambda stored: None)
    assert tier.stats().queue_depth == 0 and tier.stats().commits == commits_before


def test_a_raising_callback_does_not_stop_the_writer(tier: DiskTier) -> None:
    def explode(stored: bool) -> None:
        raise RuntimeError("callback bug")

    tier.submit_write(1, key_of(0), memoryview(b"a" * 64), 0, explode)
    results = write_pages(tier, {(1, 1): b"b" * 64})
    assert results.calls == [(0, True)]
    assert tier.contains(1, key_of(0))


ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(1, 2), st.integers(0, 5), st.binary(min_size=1,
                                                                              max_size=300)),
    st.tuples(st.just("delete"), st.integers(1, 2), st.lists(st.integers(0, 5), max_size=3)),
    st.tuples(st.just("reopen")),
), max_size=25)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops)
def test_tier_matches_a_dict_model(script: list[tuple[object, ...]]) -> None:
    """Any mix of writes, deletes and restarts reads back like a plain dict."""
    model: dict[tuple[int, int], bytes] = {}
    with tempfile.TemporaryDirectory() as data_dir:
        t = open_tier(make_config(Path(data_dir), writer_linger_s=0.0))
        for seq, op in enumerate(script):
            if op[0] == "put":
                _, ns_id, i, payload = op
                t.submit_write(ns_id, key_of(i), memoryview(payload), seq, lambda stored: None)
                model[(ns_id, i)] = payload
            elif op[0] == "delete":
                _, ns_id, indices = op
                t.delete(ns_id, [key_of(i) for i in indices])
                for i in indices:
                    model.pop((ns_id, i), None)
            else:
                t.close()
                t.open()
        assert t.barrier(WAIT_S)
        assert {(e.ns_id, int.from_bytes(e.key, "big")) for e in t.scan()} == set(model)
        for (ns_id, i), payload in model.items():
            assert read_page(t, ns_id, i, len(payload)) == (ReadStatus.OK, payload)
        stats = t.stats()
        assert stats.stored_pages == len(model)
        assert stats.stored_bytes == sum(HEADER_BYTES + len(p) for p in model.values())
        t.close()


def test_submit_writes_queues_a_run_that_commits_as_one_group(tmp_path: Path) -> None:
    t = open_tier(make_config(tmp_path, writer_linger_s=0.0))
    try:
        pages = {i: random_page(i) for i in range(40)}
        results = Results()
        commits_before = t.stats().commits
        queued = t.submit_writes([disk_module.PageWrite(1, key_of(i), memoryview(p), i,
                                                        results.callback(i))
                                  for i, p in pages.items()])
        assert queued == 40 and t.barrier(WAIT_S)
        assert results.calls == [(i, True) for i in range(40)]
        # Even with no linger, a run queued at once is one transaction.
        assert t.stats().commits - commits_before == 1
        assert all(read_page(t, 1, i) == (ReadStatus.OK, p) for i, p in pages.items())
    finally:
        t.close()
    with pytest.raises(Unavailable):
        t.submit_writes([disk_module.PageWrite(1, key_of(0), memoryview(random_page(0)), 0,
                                               Results().callback(0))])


def test_put_many_reports_how_many_were_queued_when_the_queue_closes() -> None:
    from tierd.tiers.disk_writer import OpQueue, PutPage

    queue = OpQueue(max_queued_pages=2, closed_message="closed")
    ops = [PutPage(key_of(i) + b"\0" * 4, 1, memoryview(b"x"), i, None, b"") for i in range(5)]
    closer = threading.Timer(0.2, queue.close)
    closer.start()
    assert queue.put_many(ops) == 2   # two fit, then the queue closed while it waited
    closer.join()
