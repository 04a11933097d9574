"""The Redis Cluster backend against real redis-server clusters: pages round-trip bit-exact over
every master, torn and truncated values are reported as such, a killed, hung
or absent cluster costs misses within the deadline (never a hang) and the same
backend works again once it is back, a reshard under load loses nothing, a writer killed mid
stream leaves no header with a wrong payload, passwords work, and so does TLS with a client
certificate (a missing certificate or a plain client fails within the deadline).

Work is bounded by counts; times are asserted only as "not a hang" (deadline plus generous
slack). Non-destructive tests share one cluster; tests that kill, hang or reshard get their own.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis_cluster import RedisClusterFixture, free_ports

from tierd.config import RemoteConfig
from tierd.errors import ConfigError
from tierd.remote.base import Fetched, RemoteUnavailable
from tierd.remote.redis_cluster import (
    TAIL_BYTES,
    RedisClusterBackend,
    body_key,
    head_key,
    open_redis_cluster,
)

TIMEOUT_S = 1.0
SLACK_S = 5.0            # a call must end within its deadline plus this (a hang is the failure)
RECOVERY_ATTEMPTS = 150  # calls (with a pause each) a recovering cluster gets to answer again
RECOVERY_PAUSE_S = 0.1
REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def page_id(n: int, salt: bytes = b"") -> bytes:
    return hashlib.blake2b(salt + n.to_bytes(8, "little"), digest_size=32).digest()


def payload_of(pid: bytes, size: int) -> bytes:
    return hashlib.shake_256(pid).digest(size)


def header_of(pid: bytes) -> bytes:
    return b"hdr:" + pid


def deadline(seconds: float = TIMEOUT_S) -> float:
    return time.monotonic() + seconds


@contextmanager
def backend_of(nodes: Sequence[str], password: str | None = None,
               **settings: Any) -> Iterator[RedisClusterBackend]:
    """A backend of ``nodes``; ``settings`` are further RemoteConfig fields (TLS)."""
    config = RemoteConfig(nodes=tuple(nodes), timeout_s=TIMEOUT_S, connect_timeout_s=0.5, **settings)
    backend = RedisClusterBackend(config, password)
    try:
        yield backend
    finally:
        backend.close()


def put_pages(backend: RedisClusterBackend, pids: Sequence[bytes], size: int, batch: int = 16) -> None:
    for start in range(0, len(pids), batch):
        chunk = pids[start:start + batch]
        done = backend.put(chunk, [header_of(p) for p in chunk],
                           [memoryview(payload_of(p, size)) for p in chunk], deadline(10.0))
        assert all(done), done


def read_pages(backend: RedisClusterBackend, pids: Sequence[bytes], size: int,
               timeout_s: float = 10.0) -> tuple[list[Fetched | None], list[bytearray]]:
    bufs = [bytearray(size) for _ in pids]
    found = backend.get_into(pids, [memoryview(b) for b in bufs], deadline(timeout_s))
    return found, bufs


def assert_exact(backend: RedisClusterBackend, pids: Sequence[bytes], size: int, batch: int = 16) -> None:
    for start in range(0, len(pids), batch):
        chunk = pids[start:start + batch]
        found, bufs = read_pages(backend, chunk, size)
        for pid, got, buf in zip(chunk, found, bufs):
            assert got == Fetched(header_of(pid), size), (pid.hex(), got)
            assert buf == payload_of(pid, size), f"payload of {pid.hex()} differs"


def masters_of(cluster: RedisClusterFixture, pids: Sequence[bytes]) -> list[int]:
    from redis.crc import key_slot

    owners = cluster.owners()
    return [owners[key_slot(head_key(p))] for p in pids]


def timed(call: Callable[[], T]) -> tuple[T | BaseException, float]:
    start = time.monotonic()
    try:
        result: T | BaseException = call()
    except RemoteUnavailable as e:
        result = e
    return result, time.monotonic() - start


def recovered(call: Callable[[], object]) -> bool:
    """Whether ``call`` succeeds within RECOVERY_ATTEMPTS tries (a cluster settling after a fault,
    a master's back-off running out)."""
    for _ in range(RECOVERY_ATTEMPTS):
        try:
            call()
            return True
        except (RemoteUnavailable, AssertionError):
            time.sleep(RECOVERY_PAUSE_S)
    return False


@pytest.fixture
def backend(clean_redis_cluster: RedisClusterFixture) -> Iterator[RedisClusterBackend]:
    with backend_of(clean_redis_cluster.nodes) as b:
        yield b


# -- data path ---------------------------------------------------------------------------------

def assert_round_trips_every_size(backend: RedisClusterBackend, cluster: RedisClusterFixture,
                                  salt: bytes, num_large: int) -> dict[int, list[bytes]]:
    """Pages of every size class (large ones on every master, tiny, exactly the tail, one past it)
    round-trip bit-exact and exist; unknown ones do not. Returns the pages by size."""
    groups = {512 << 10: [page_id(n, salt + b"a") for n in range(num_large)],
              2 << 20: [page_id(n, salt + b"b") for n in range(3)],
              10: [page_id(n, salt + b"c") for n in range(3)],
              TAIL_BYTES: [page_id(0, salt + b"d")], TAIL_BYTES + 1: [page_id(0, salt + b"e")]}
    assert set(masters_of(cluster, groups[512 << 10])) == {0, 1, 2}
    for size, pids in groups.items():
        put_pages(backend, pids, size)
    for size, pids in groups.items():
        assert_exact(backend, pids, size)
    every = [p for pids in groups.values() for p in pids]
    unknown = [page_id(n, salt + b"unknown") for n in range(3)]
    assert backend.exists(every + unknown, deadline()) == [True] * len(every) + [False] * 3
    return groups


def test_pages_round_trip_bit_exact_over_every_master(
        backend: RedisClusterBackend, clean_redis_cluster: RedisClusterFixture) -> None:
    groups = assert_round_trips_every_size(backend, clean_redis_cluster, b"", 64)
    unknown = [page_id(n, b"unknown") for n in range(3)]
    found, bufs = read_pages(backend, unknown, 100)
    assert found == [None] * 3 and bufs == [bytearray(100)] * 3

    doomed = groups[512 << 10][:8]
    backend.delete(doomed + unknown, deadline())
    raw = clean_redis_cluster.client()
    assert sum(raw.exists(head_key(p)) + raw.exists(body_key(p)) for p in doomed) == 0
    assert read_pages(backend, doomed, 512 << 10)[0] == [None] * 8
    assert_exact(backend, groups[512 << 10][8:], 512 << 10)


def test_stored_layout_is_body_then_head_with_header_length_and_tail(
        backend: RedisClusterBackend, clean_redis_cluster: RedisClusterFixture) -> None:
    pid, size = page_id(1, b"layout"), 2 << 20
    put_pages(backend, [pid], size)
    raw = clean_redis_cluster.client()
    data, header = payload_of(pid, size), header_of(pid)
    assert head_key(pid) == b"td1:{" + pid.hex().encode() + b"}:h"
    assert raw.get(body_key(pid)) == data[:-TAIL_BYTES]
    assert raw.get(head_key(pid)) == len(header).to_bytes(2, "little") + header + data[-TAIL_BYTES:]
    assert raw.keyslot(head_key(pid)) == raw.keyslot(body_key(pid))


def test_torn_half_evicted_and_truncated_values_are_reported_as_such(
        backend: RedisClusterBackend, clean_redis_cluster: RedisClusterFixture) -> None:
    size = 512 << 10
    no_head, no_body, short, long_, garbled, intact = pids = [page_id(n, b"torn") for n in range(6)]
    put_pages(backend, pids, size)
    raw = clean_redis_cluster.client()
    raw.delete(head_key(no_head))
    raw.delete(body_key(no_body))
    raw.set(body_key(short), payload_of(short, size)[:1000])
    raw.set(body_key(long_), payload_of(long_, size)[:-TAIL_BYTES] + b"x")
    raw.set(head_key(garbled), b"\xff")

    found, bufs = read_pages(backend, pids, size)
    assert found[0] == Fetched(b"", size - TAIL_BYTES)    # head gone: header b""
    assert found[1] == Fetched(header_of(no_body), -1)    # body gone: -1
    assert found[2] == Fetched(header_of(short), 1000 + TAIL_BYTES)
    assert found[3] == Fetched(header_of(long_), size + 1)
    assert found[4] is not None and found[4].header == b""
    assert found[5] == Fetched(header_of(intact), size)
    # The views of the first five are undefined (a body may have been received into them): only
    # the reported sizes tell, and they never claim a complete payload.
    assert bufs[5] == payload_of(intact, size)
    assert backend.exists(pids, deadline()) == [False, True, True, True, True, True]

    # A view smaller than the stored payload: the stored size reported, nothing past the view written.
    found, bufs = read_pages(backend, [intact], size - 1)
    assert found == [Fetched(header_of(intact), size)] and len(bufs[0]) == size - 1


def test_empty_batches_and_a_passed_deadline(backend: RedisClusterBackend) -> None:
    assert backend.exists([], deadline()) == []
    assert backend.get_into([], [], deadline()) == []
    assert backend.put([], [], [], deadline()) == []
    backend.delete([], deadline())
    with pytest.raises(RemoteUnavailable, match="deadline"):
        backend.exists([page_id(0)], time.monotonic() - 1)


def test_concurrent_readers_and_writers_share_one_backend(backend: RedisClusterBackend) -> None:
    size, rounds, errors = 64 << 10, 12, []

    def worker(w: int) -> None:
        try:
            for r in range(rounds):
                pids = [page_id(n, b"w%d-%d" % (w, r)) for n in range(6)]
                put_pages(backend, pids, size)
                assert_exact(backend, pids, size)
                assert all(backend.exists(pids, deadline(10.0)))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_closed_backend_raises_and_close_is_idempotent(clean_redis_cluster: RedisClusterFixture) -> None:
    with backend_of(clean_redis_cluster.nodes) as b:
        put_pages(b, [page_id(0, b"closed")], 100)
        b.close()
        b.close()
        with pytest.raises(RemoteUnavailable, match="closed"):
            b.exists([page_id(0, b"closed")], deadline())


# -- faults ------------------------------------------------------------------------------------

def spread_pages(cluster: RedisClusterFixture, salt: bytes, per_master: int) -> list[list[bytes]]:
    """Page ids, ``per_master`` on each master, by master index."""
    from redis.crc import key_slot

    owners = cluster.owners()
    by_master: list[list[bytes]] = [[] for _ in range(cluster.masters)]
    n = 0
    while min(map(len, by_master)) < per_master:
        pid = page_id(n, salt)
        owner = owners[key_slot(head_key(pid))]
        if len(by_master[owner]) < per_master:
            by_master[owner].append(pid)
        n += 1
    return by_master


def assert_only_its_pages_miss(b: RedisClusterBackend, by_master: list[list[bytes]], down: int,
                               size: int) -> None:
    """Every call over all masters answers within the deadline: the pages of master ``down`` are
    misses (not stored, not found), every other page is served bit-exact."""
    every = [p for pids in by_master for p in pids]
    on_down = set(by_master[down])
    started = time.monotonic()
    found, bufs = read_pages(b, every, size, TIMEOUT_S)
    assert time.monotonic() - started < TIMEOUT_S + SLACK_S
    for pid, got, buf in zip(every, found, bufs):
        if pid in on_down:
            assert got is None
        else:
            assert got == Fetched(header_of(pid), size) and buf == payload_of(pid, size)
    assert b.exists(every, deadline()) == [pid not in on_down for pid in every]
    stored = b.put(every, [header_of(p) for p in every], [memoryview(payload_of(p, size)) for p in every],
                   deadline())
    assert stored == [pid not in on_down for pid in every]
    b.delete([], deadline())
    # A call that needs only the failed master fails as a whole, naming it, within the deadline.
    result, elapsed = timed(lambda: b.exists(by_master[down], deadline()))
    assert isinstance(result, RemoteUnavailable), result
    assert elapsed < TIMEOUT_S + SLACK_S


def test_a_killed_master_costs_only_its_pages_and_the_backend_recovers_after_restart(
        private_redis_cluster: RedisClusterFixture) -> None:
    cluster, size = private_redis_cluster, 256 << 10
    by_master = spread_pages(cluster, b"kill", 4)
    every = [p for pids in by_master for p in pids]
    with backend_of(cluster.nodes) as b:
        put_pages(b, every, size)
        cluster.kill(1, signal.SIGKILL)
        assert_only_its_pages_miss(b, by_master, 1, size)
        assert b.failures >= 1

        cluster.restart(1)
        assert recovered(lambda: b.exists(by_master[1], deadline()))
        assert read_pages(b, by_master[1], size)[0] == [None] * 4   # no persistence: gone
        put_pages(b, by_master[1], size)
        assert_exact(b, every, size)


def test_a_hung_master_costs_its_pages_one_deadline_then_none_and_the_backend_recovers(
        private_redis_cluster: RedisClusterFixture) -> None:
    cluster, size = private_redis_cluster, 256 << 10
    by_master = spread_pages(cluster, b"hang", 4)
    every = [p for pids in by_master for p in pids]
    with backend_of(cluster.nodes) as b:
        put_pages(b, every, size)
        cluster.kill(2, signal.SIGSTOP)
        try:
            # Several calls in a row: threads waiting on the hung master must not pile up into a hang.
            for _ in range(3):
                assert_only_its_pages_miss(b, by_master, 2, size)
        finally:
            cluster.kill(2, signal.SIGCONT)
        assert recovered(lambda: assert_exact(b, every, size))
        put_pages(b, by_master[2], size)
        assert_exact(b, every, size)


def test_cluster_down_at_construction_raises_within_the_deadline() -> None:
    pytest.importorskip("redis", reason="the Redis Cluster backend needs redis-py")
    refused = [f"127.0.0.1:{port}" for port in free_ports(3)]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)   # never accepted, never answered: a hung seed
    hung = [f"127.0.0.1:{listener.getsockname()[1]}"]
    try:
        for nodes in (refused, hung):
            with backend_of(nodes) as b:
                result, elapsed = timed(lambda b=b: b.exists([page_id(0)], deadline()))
                assert isinstance(result, RemoteUnavailable), result
                assert nodes[0] in str(result)
                assert elapsed < TIMEOUT_S + SLACK_S
    finally:
        listener.close()


def test_backend_made_while_the_cluster_is_down_works_once_it_is_back(
        private_redis_cluster: RedisClusterFixture) -> None:
    cluster, pids = private_redis_cluster, [page_id(n, b"down") for n in range(12)]
    for i in range(cluster.masters):
        cluster.kill(i, signal.SIGKILL)
    with backend_of(cluster.nodes) as b:
        for _ in range(2):
            result, elapsed = timed(lambda: b.exists(pids, deadline()))
            assert isinstance(result, RemoteUnavailable), result
            assert elapsed < TIMEOUT_S + SLACK_S
        for i in range(cluster.masters):
            cluster.restart(i, wait=i == cluster.masters - 1)
        assert recovered(lambda: put_pages(b, pids, 4096))
        assert_exact(b, pids, 4096)


def test_reshard_under_load_loses_nothing(private_redis_cluster: RedisClusterFixture) -> None:
    from redis.crc import key_slot

    cluster, size, moving_slots = private_redis_cluster, 64 << 10, 600
    owners = cluster.owners()
    moving = [s for s in range(16384) if owners[s] == 0][:moving_slots]   # redis-cli moves the lowest
    # Two thirds of the pages in the slots that move, the rest elsewhere, interleaved.
    moving_set, inside, outside, n = set(moving), [], [], 0
    while len(inside) < 160 or len(outside) < 80:
        pid = page_id(n, b"reshard")
        (inside if key_slot(head_key(pid)) in moving_set else outside).append(pid)
        n += 1
    pids = [p for pair in zip(inside[:160:2], inside[1:160:2], outside[:80]) for p in pair]
    with backend_of(cluster.nodes) as b:
        put_pages(b, pids[:80], size)
        errors: list[BaseException] = []

        def reshard() -> None:
            try:
                cluster.reshard(moving_slots, 0, 1)
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        mover = threading.Thread(target=reshard)
        mover.start()
        written, rounds = 80, 0
        while (mover.is_alive() or written < len(pids)) and rounds < 1000:
            if written < len(pids):
                put_pages(b, pids[written:written + 8], size)
                written += 8
            assert_exact(b, pids[:written], size)
            rounds += 1
        mover.join()
        assert not errors, errors
        assert_exact(b, pids, size)
    after = cluster.owners()
    assert all(after[s] == 1 for s in moving), "the reshard did not move the slots"
    moved = [p for p in pids if key_slot(head_key(p)) in moving_set]
    with cluster.node_client(1) as r:
        assert all(r.exists(head_key(p), body_key(p)) == 2 for p in moved)


CHILD = """
import hashlib, sys, time
from tierd.config import RemoteConfig
from tierd.remote.redis_cluster import RedisClusterBackend

nodes, salt, pages, size, batch = sys.argv[1].split(","), sys.argv[2].encode(), *map(int, sys.argv[3:6])
backend = RedisClusterBackend(RemoteConfig(nodes=tuple(nodes)), None)
for start in range(0, pages, batch):
    pids = [hashlib.blake2b(salt + n.to_bytes(8, "little"), digest_size=32).digest()
            for n in range(start, start + batch)]
    done = backend.put(pids, [b"hdr:" + p for p in pids],
                       [memoryview(hashlib.shake_256(p).digest(size)) for p in pids], time.monotonic() + 30)
    print(start + batch if all(done) else -1, flush=True)
"""


def test_writer_killed_mid_stream_leaves_no_header_with_a_wrong_payload(
        clean_redis_cluster: RedisClusterFixture) -> None:
    size, batch, pages = 1 << 20, 3, 90
    rng = random.Random(7)
    with backend_of(clean_redis_cluster.nodes) as b:
        for round_ in range(3):
            salt = b"kill9-%d" % round_
            acked_batches = rng.randrange(2, 12)
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, ",".join(clean_redis_cluster.nodes), salt.decode(),
                 str(pages), str(size), str(batch)],
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE)
            assert child.stdout is not None
            acked = 0
            for _ in range(acked_batches):
                line = child.stdout.readline()
                assert line.strip() not in (b"", b"-1"), f"writer failed: {line!r}"
                acked = int(line)
            time.sleep(rng.uniform(0, 0.02))   # land the kill somewhere inside a later batch
            child.kill()
            child.wait()
            child.stdout.close()

            pids = [page_id(n, salt) for n in range(pages)]
            complete = 0
            for start in range(0, pages, 10):
                chunk = pids[start:start + 10]
                found, bufs = read_pages(b, chunk, size)
                for k, (pid, got, buf) in enumerate(zip(chunk, found, bufs)):
                    if start + k < acked:
                        assert got == Fetched(header_of(pid), size), "an acknowledged page is missing"
                    if got is None or got.header == b"":
                        continue   # never written, or a payload without its header (torn)
                    assert got == Fetched(header_of(pid), size), (start + k, got)
                    assert buf == payload_of(pid, size), f"page {start + k}: header with a wrong payload"
                    complete += 1
            assert complete >= acked


# -- authentication ----------------------------------------------------------------------------

PASSWORD = "s3cret-Pa55"


@pytest.mark.parametrize("private_redis_cluster", [{"password": PASSWORD}], indirect=True)
def test_password_file_opens_a_protected_cluster_and_wrong_passwords_say_so(
        private_redis_cluster: RedisClusterFixture, tmp_path: Path) -> None:
    nodes = tuple(private_redis_cluster.nodes)
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(PASSWORD + "\n")
    bad.write_text("not-it\n")
    pids = [page_id(n, b"auth") for n in range(6)]

    b = open_redis_cluster(RemoteConfig(nodes=nodes, password_file=good, timeout_s=TIMEOUT_S))
    try:
        put_pages(b, pids, 1000)
        assert_exact(b, pids, 1000)
    finally:
        b.close()

    for password_file in (bad, None):
        b = open_redis_cluster(RemoteConfig(nodes=nodes, password_file=password_file, timeout_s=TIMEOUT_S))
        try:
            result, elapsed = timed(lambda b=b: b.exists(pids, deadline()))
            assert isinstance(result, RemoteUnavailable), result
            assert "authentication failed" in str(result) and "remote.password_file" in str(result)
            assert elapsed < TIMEOUT_S + SLACK_S
        finally:
            b.close()


def test_unreadable_password_file_is_a_config_error(tmp_path: Path) -> None:
    for path in (tmp_path / "missing", tmp_path):
        with pytest.raises(ConfigError, match="remote.password_file"):
            open_redis_cluster(RemoteConfig(nodes=("127.0.0.1:1",), password_file=path))


# -- TLS ---------------------------------------------------------------------------------------

TLS = [{"tls": True}]


def tls_settings(cluster: RedisClusterFixture, client_certificate: bool = True) -> dict[str, Any]:
    """RemoteConfig's TLS fields for ``cluster``'s throwaway CA (and client certificate)."""
    settings: dict[str, Any] = {"tls": True, "tls_ca_file": cluster.ca_file}
    if client_certificate:
        settings.update(tls_cert_file=cluster.client_cert_file, tls_key_file=cluster.client_key_file)
    return settings


@pytest.mark.parametrize("private_redis_cluster", TLS, indirect=True)
def test_tls_with_a_client_certificate_round_trips_pages_through_faults_and_a_reshard(
        private_redis_cluster: RedisClusterFixture) -> None:
    from redis.crc import key_slot

    cluster = private_redis_cluster
    RemoteConfig(nodes=tuple(cluster.nodes), **tls_settings(cluster)).validate(0)
    with backend_of(cluster.nodes, **tls_settings(cluster)) as b:
        groups = assert_round_trips_every_size(b, cluster, b"tls-", 24)
        b.delete(groups[10], deadline())
        raw = cluster.client()   # the fixture's own TLS client sees what the backend stored
        assert raw.get(body_key(groups[2 << 20][0])) == payload_of(groups[2 << 20][0], 2 << 20)[:-TAIL_BYTES]
        assert sum(raw.exists(head_key(p)) for p in groups[10]) == 0
        raw.close()

        # A hung master (reads time out on an SSL socket) and a killed one cost only their pages.
        cluster.flushall()
        size = 64 << 10
        by_master = spread_pages(cluster, b"tls-faults", 3)
        faulted = [p for pids in by_master for p in pids]
        put_pages(b, faulted, size)
        cluster.kill(2, signal.SIGSTOP)
        try:
            assert_only_its_pages_miss(b, by_master, 2, size)
        finally:
            cluster.kill(2, signal.SIGCONT)
        assert recovered(lambda: assert_exact(b, faulted, size))
        cluster.kill(1, signal.SIGKILL)
        assert_only_its_pages_miss(b, by_master, 1, size)
        cluster.restart(1)
        assert recovered(lambda: b.exists(by_master[1], deadline()))   # reconnected over TLS
        put_pages(b, by_master[1], size)
        assert_exact(b, faulted, size)

        # A reshard (MIGRATE between the nodes over TLS): the backend follows MOVED.
        owners = cluster.owners()
        moving = set([s for s in range(16384) if owners[s] == 0][:200])   # redis-cli moves the lowest
        movers, n = [], 0
        while len(movers) < 8:
            pid = page_id(n, b"tls-reshard")
            if key_slot(head_key(pid)) in moving:
                movers.append(pid)
            n += 1
        put_pages(b, movers, size)
        cluster.reshard(len(moving), 0, 1)
        assert_exact(b, movers + faulted, size)
    after = cluster.owners()
    assert all(after[s] == 1 for s in moving), "the reshard did not move the slots"
    with cluster.node_client(1) as r:
        assert all(r.exists(head_key(p), body_key(p)) == 2 for p in movers)


@pytest.mark.parametrize("private_redis_cluster", TLS, indirect=True)
def test_tls_without_a_client_certificate_or_without_tls_fails_within_the_deadline(
        private_redis_cluster: RedisClusterFixture) -> None:
    cluster, pids = private_redis_cluster, [page_id(n, b"tls-refused") for n in range(6)]
    cases = {"no client certificate": tls_settings(cluster, client_certificate=False),
             "plain": {}}
    for case, settings in cases.items():
        with backend_of(cluster.nodes, **settings) as b:
            for call in (lambda b=b: b.exists(pids, deadline()),   # twice: a retry fails the same
                         lambda b=b: b.put(pids, [b"h"] * 6, [memoryview(b"x" * 100)] * 6, deadline())):
                result, elapsed = timed(call)
                assert isinstance(result, RemoteUnavailable), (case, result)
                assert elapsed < TIMEOUT_S + SLACK_S, (case, elapsed)
                assert cluster.nodes[0] in str(result), (case, result)
                if case == "no client certificate":
                    assert "TLS failed" in str(result) and "remote.tls_cert_file" in str(result), result
    # Nothing was stored by the refused clients.
    raw = cluster.client()
    assert sum(raw.exists(head_key(p)) for p in pids) == 0
    raw.close()
