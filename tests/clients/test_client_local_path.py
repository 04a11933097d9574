"""The local data path: reads without an RPC never return a page other than the one committed
under the key, while another process evicts, deletes, rewrites and restarts the daemon; local
puts are bit-exact and cost one Commit per call."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from local_reader import SPEC, page_words, reader_keys
from server_harness import ServerThread, make_server, serving_settings

from tierd.config import DiskConfig, MemoryTierConfig
from tierd.tier import Tier
from tierd_client import ClientOptions, InvalidArgumentError, TierClient
from tierd_client.local_path import TOUCH_BATCH_KEYS

NUM_KEYS = 3  # few keys: the reader is often copying the very key being changed
# A churn rewrites one key this many times in a row: each rewrite frees the key's slot and the
# daemon's next put reuses that very slot (freed slots are reused last-in first-out), so a
# reader copying the key meanwhile sees its slot change under it.
CHURN_REWRITES = 16
FLOOD_INDEX = 0xFFFF
READER = Path(__file__).with_name("local_reader.py")
REPO = Path(__file__).resolve().parents[2]
# The namespace gets half of each: 16 hbm and 32 dram slots, fewer than the keys plus the flood,
# so pages are evicted (and their slots reused) all the time.
TIERS = {"hbm": MemoryTierConfig(32 * SPEC.page_bytes), "dram": MemoryTierConfig(64 * SPEC.page_bytes),
         "disk": DiskConfig(1 << 30)}
# Message and call limits that take whole 1 MiB pages.
LIMITS = {"chunk_bytes": 4 << 20, "max_message_bytes": 16 << 20, "max_put_bytes": 64 << 20,
          "max_get_bytes": 64 << 20}


def start_server(tmp: Path, **tiers: object) -> ServerThread:
    return make_server(tmp, serving_settings(**LIMITS), **{**TIERS, **tiers})

ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, NUM_KEYS - 1)),
    st.tuples(st.just("rewrite"), st.integers(0, NUM_KEYS - 1)),   # delete, then a new version
    st.tuples(st.just("delete"), st.integers(0, NUM_KEYS - 1)),
    st.tuples(st.just("flood"), st.integers(4, 40)),               # other pages: evictions
    st.tuples(st.just("churn"), st.integers(0, NUM_KEYS - 1)),
    st.tuples(st.just("restart"), st.just(0)),
), min_size=4, max_size=24)


class Writer:
    """The other process's changes (this test process), over the byte path; what was committed."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.server: ServerThread = start_server(tmp)
        self.versions = [0] * NUM_KEYS
        self.committed: set[tuple[int, int]] = set()
        self.flooded = 0
        self._connect()

    def _connect(self) -> None:
        self.client = TierClient(self.server.address, ClientOptions(local_data_path=False))
        self.ns = self.client.register(SPEC)
        self.keys = reader_keys(self.ns, NUM_KEYS)

    def put(self, index: int) -> None:
        page = page_words(index, self.versions[index], self.ns.page_bytes)
        self.client.put(self.ns, [self.keys[index]], [page])
        self.committed.add((index, self.versions[index]))

    def delete(self, index: int) -> None:
        self.client.delete(self.ns, [self.keys[index]])
        self.versions[index] += 1

    def flood(self, count: int) -> None:
        tokens = list(range(10**6 + self.flooded * SPEC.page_tokens,
                            10**6 + (self.flooded + count) * SPEC.page_tokens))
        self.flooded += count
        keys = self.ns.keys(tokens)
        # Pages of no key the reader asks for: one read where a key's page should be is "foreign".
        self.client.put(self.ns, keys, [page_words(FLOOD_INDEX, self.flooded, self.ns.page_bytes)] * len(keys))

    def restart(self) -> None:
        self.client.close()
        self.server.stop()
        self.server = start_server(self.tmp)
        self._connect()

    def run(self, op: str, arg: int) -> None:
        if op == "put":
            self.put(arg)
        elif op == "rewrite":
            self.delete(arg)
            self.put(arg)
        elif op == "delete":
            self.delete(arg)
        elif op == "flood":
            self.flood(arg)
        elif op == "churn":
            for _ in range(CHURN_REWRITES):
                self.delete(arg)
                self.put(arg)
        else:
            self.restart()

    def close(self) -> None:
        self.client.close()
        self.server.stop()


@pytest.fixture()
def writer(short_tmp: Path) -> Iterator[Writer]:
    w = Writer(short_tmp)
    yield w
    w.close()


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(program=ops, seed=st.integers(0, 1000))
def test_lease_free_reads_return_only_committed_pages(writer: Writer, program: list[tuple[str, int]],
                                                       seed: int) -> None:
    for index in range(NUM_KEYS):
        writer.put(index)
    reader = subprocess.Popen(
        [sys.executable, str(READER), writer.server.address.removeprefix("unix:"), str(seed),
         str(NUM_KEYS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert reader.stdout is not None and reader.stdin is not None
    try:
        assert reader.stdout.readline().strip() == "ready"

        def overlap() -> None:  # the reader does a round of reads after each change
            reader.stdin.write("changed\n")
            reader.stdin.flush()
            assert reader.stdout.readline().strip() == "ack"

        for op, arg in program:
            writer.run(op, arg)
            overlap()
        for index in range(NUM_KEYS):  # and a last round the reader sees settle
            writer.delete(index)
            writer.put(index)
        overlap()
        reader.stdin.close()
        result = json.loads(reader.stdout.readline())
    finally:
        if not reader.stdin.closed:
            reader.stdin.close()
        try:
            reader.wait(60)
        except subprocess.TimeoutExpired:
            reader.kill()
            reader.wait()
    assert result["torn"] == 0 and result["foreign"] == 0, result
    never_committed = {tuple(pair) for pair in result["seen"]} - writer.committed
    assert not never_committed, f"read pages that were never committed: {sorted(never_committed)}"
    assert result["local_reads"] > 0, {k: v for k, v in result.items() if k != "seen"}  # through the index


@pytest.mark.parametrize("tier", [Tier.HBM, Tier.DRAM])
def test_local_put_and_get_round_trip_without_byte_path(short_tmp: Path, tier: Tier) -> None:
    server = start_server(short_tmp)
    try:
        # Slots for every page of the test leased at once: no put below makes the daemon evict.
        with TierClient(server.address, ClientOptions(put_slots=16, page_socket=False)) as client:
            ns = client.register(SPEC)
            keys = reader_keys(ns, 12)
            pages = [page_words(i, 7, ns.page_bytes) for i in range(12)]
            result = client.put(ns, keys, pages, tier=tier)
            assert result.num_stored == 12
            out = np.zeros((12, ns.page_bytes), dtype=np.uint8)
            assert client.get_into(ns, keys, out) == 12
            assert all(bytes(out[i]) == pages[i].tobytes() for i in range(12))
            assert [bytes(p) for p in client.get(ns, keys[:3])] == [p.tobytes() for p in pages[:3]]
            stats = client.local_path_stats()
            assert stats.pages_put == 12 and stats.pages_read == 15
            # A partial tail: the resident prefix, then nothing past the first missing key.
            other = reader_keys(ns, 14)[12:]
            assert client.get_into(ns, [*keys[:2], other[0], keys[2]], out[:4]) == 2
            # A key cached in the tier keeps its page (skipped; one the daemon moved to another
            # tier meanwhile is stored again); the pooled slots serve this put.
            again = client.put(ns, [keys[0], other[0], other[1]], [pages[0]] * 3, tier=tier)
            assert again.num_stored + again.num_skipped == 3 and again.num_stored >= 2
            assert client.get(ns, [other[1]]) == [pages[0].tobytes()]
            with pytest.raises(InvalidArgumentError, match="out"):
                client.get_into(ns, keys[:2], bytearray(ns.page_bytes))  # room for one page only
    finally:
        server.stop()


def test_byte_path_option_and_leases_of_local_puts(short_tmp: Path) -> None:
    # A dram region of 256 slots: big enough that a put may lease 4 slots ahead (1/64 of it).
    server = start_server(short_tmp, dram=MemoryTierConfig(512 * SPEC.page_bytes))
    try:
        with TierClient(server.address, ClientOptions(local_data_path=False)) as remote, \
                TierClient(server.address, ClientOptions(put_slots=4, page_socket=False)) as local:
            ns = remote.register(SPEC)
            keys = reader_keys(ns, 6)
            remote.put(ns, keys[:3], [page_words(i, 1, ns.page_bytes) for i in range(3)])
            assert [bytes(p) for p in remote.get(ns, keys[:3])] == [
                page_words(i, 1, ns.page_bytes).tobytes() for i in range(3)]
            stats = remote.local_path_stats()
            assert (stats.pages_read, stats.pages_missed, stats.pages_put) == (0, 0, 0)  # nothing local
            assert (stats.page_socket_calls, stats.page_socket_fallbacks) == (2, 0)  # the page socket
            local.put(ns, keys[3:4], [page_words(3, 1, ns.page_bytes)])
            # The rest of the 4 slots stay leased for the next puts (one lease), ...
            assert local.stats().leases == 1
            local.put(ns, keys[4:6], [page_words(i, 1, ns.page_bytes) for i in (4, 5)])
            assert local.stats().leases == 1
            local.put(ns, reader_keys(ns, 7)[6:], [page_words(6, 1, ns.page_bytes)])
            assert local.stats().leases == 0  # ... and the commit of the last slot ended it
            assert local.local_path_stats().pages_put == 4
    finally:
        server.stop()


def test_local_reads_are_reported_to_the_daemon(short_tmp: Path) -> None:
    """The daemon sees no lease-free read, so the client reports them in batches: they count as
    hits in Stats (and keep the pages warm in the LRU order)."""
    server = start_server(short_tmp)
    try:
        with TierClient(server.address) as client:
            ns = client.register(SPEC)
            keys = reader_keys(ns, 2)
            client.put(ns, keys, [page_words(i, 0, ns.page_bytes) for i in range(2)], tier=Tier.DRAM)
            hits_before = client.stats().tiers[Tier.DRAM].hits
            out = bytearray(2 * ns.page_bytes)
            reads = TOUCH_BATCH_KEYS // 2 + 1  # two keys a call: one batch and a little more
            for _ in range(reads):
                assert client.get_into(ns, keys, out) == 2
            assert client.local_path_stats().pages_read == 2 * reads
            reported = client.stats().tiers[Tier.DRAM].hits - hits_before
            assert TOUCH_BATCH_KEYS <= reported < 2 * reads
    finally:
        server.stop()


def test_the_local_path_comes_back_after_a_daemon_restart(short_tmp: Path) -> None:
    """A worker keeps its NamespaceHandle across a daemon restart: the first read after it goes
    over RPCs (the old regions are gone) and registers again; later reads are local again."""
    server = start_server(short_tmp)
    try:
        with TierClient(server.address, ClientOptions(put_slots=1, page_socket=False)) as client:
            ns = client.register(SPEC)
            keys = reader_keys(ns, 2)
            client.put(ns, keys, [page_words(i, 3, ns.page_bytes) for i in range(2)])
            out = bytearray(2 * ns.page_bytes)
            assert client.get_into(ns, keys, out) == 2
            server.stop()
            server = start_server(short_tmp)  # the pages come back from disk
            before = client.local_path_stats()
            assert client.get_into(ns, keys, out) == 2  # over GetPages; registers again
            assert bytes(out) == b"".join(page_words(i, 3, ns.page_bytes).tobytes() for i in range(2))
            after_first = client.local_path_stats()
            assert after_first.pages_read == before.pages_read
            with client.acquire(ns, keys, target_tier=Tier.DRAM):  # back up from disk to dram
                pass
            client.get_into(ns, keys, out)  # in the new daemon's dram: local again
            assert client.local_path_stats().pages_read == after_first.pages_read + 2
            assert bytes(out) == b"".join(page_words(i, 3, ns.page_bytes).tobytes() for i in range(2))
    finally:
        server.stop()


REWRITES = 6000


@pytest.mark.slow
def test_lease_free_reads_under_rewrites_inside_the_daemon(short_tmp: Path) -> None:
    """The daemon itself rewrites the reader's keys back to back (no RPC between a delete and the
    put that reuses the freed slot), so the reader is often mid-copy when its slot changes: every
    page it accepts must still be one committed under its key, whole."""
    server = start_server(short_tmp)
    reader = None
    try:
        with TierClient(server.address, ClientOptions(local_data_path=False)) as setup:
            ns = setup.register(SPEC)
        keys = reader_keys(ns, NUM_KEYS)
        committed: set[tuple[int, int]] = set()
        store = server.store
        for index, key in enumerate(keys):
            store.put(ns.ns_id, [key], [page_words(index, 0, ns.page_bytes)], Tier.DRAM)
            committed.add((index, 0))
        reader = subprocess.Popen(
            [sys.executable, str(READER), server.address.removeprefix("unix:"), "7", str(NUM_KEYS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert reader.stdout is not None and reader.stdin is not None
        assert reader.stdout.readline().strip() == "ready"
        for step in range(1, REWRITES + 1):
            index = step % NUM_KEYS
            store.delete(ns.ns_id, [keys[index]])
            store.put(ns.ns_id, [keys[index]], [page_words(index, step, ns.page_bytes)], Tier.DRAM)
            committed.add((index, step))
        reader.stdin.close()
        result = json.loads(reader.stdout.readline())
    finally:
        if reader is not None:
            if reader.stdin is not None and not reader.stdin.closed:
                reader.stdin.close()
            reader.wait(60)
        server.stop()
    assert result["torn"] == 0 and result["foreign"] == 0, result
    assert {tuple(pair) for pair in result["seen"]} <= committed
    assert result["local_reads"] > 0
