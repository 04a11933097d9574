"""End to end against a real ``tierd`` process: the worker's calls, restarts, crashes, tierctl, and
bad requests. Each test starts its own daemon (tests/e2e/conftest.py) and always ends it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace

import grpc
import numpy as np
import pytest
from e2e_daemon import REPO_ROOT, SPEC, TierdProcess

from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc
from tierd_client import (
    ClientOptions,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NamespaceHandle,
    NotFoundError,
    ResourceExhaustedError,
    Tier,
    TierClient,
)

pytestmark = pytest.mark.slow

WAIT_S = 15.0


def make_pages(num_pages: int, seed: int) -> np.ndarray:
    """``[num_pages, page_bytes]`` uint8, random: a mixed-up page cannot pass for another."""
    return np.random.default_rng(seed).integers(0, 256, (num_pages, SPEC.page_bytes), dtype=np.uint8)


def token_ids(num_pages: int, seed: int) -> list[int]:
    return [seed * 100_000 + i for i in range(num_pages * SPEC.page_tokens)]


def put_zero_copy(client: TierClient, ns: NamespaceHandle, keys: list[bytes], pages: np.ndarray) -> None:
    """Fill leased hbm slots through the mapped arena, then commit them to ``keys``."""
    arena = client.arena(ns, Tier.HBM)
    with client.allocate(ns, len(keys)) as lease:
        arena.bytes()[list(lease.slots)] = pages
        assert lease.commit(keys).num_committed == len(keys)


def assert_pages(client: TierClient, ns: NamespaceHandle, keys: list[bytes], pages: np.ndarray) -> None:
    got = client.get(ns, keys)
    assert len(got) == len(keys)
    assert all(g == p.tobytes() for g, p in zip(got, pages)), "a page came back different"


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT_S} s"
        time.sleep(0.05)


def tierctl(daemon: TierdProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "tierd_client.tierctl", "--socket",
                           str(daemon.socket_path), *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_both_paths_round_trip_bit_exact(tierd: TierdProcess) -> None:
    byte_pages, copy_pages = make_pages(6, seed=1), make_pages(4, seed=2)
    with TierClient(tierd.socket_path) as client:
        ns = client.register(SPEC)
        assert client.register(SPEC).ns_id == ns.ns_id  # idempotent
        keys = ns.keys(token_ids(10, seed=1) + [1, 2, 3])  # a partial tail gets no key
        assert len(keys) == 10
        assert client.lookup(ns, keys) == 0
        assert client.put(ns, keys[:6], byte_pages).num_stored == 6
        put_zero_copy(client, ns, keys[6:], copy_pages)
        assert client.lookup(ns, keys) == 10
        tiers = client.lookup_result(ns, keys).tiers
        assert set(tiers[:6]) == {Tier.DRAM} and set(tiers[6:]) == {Tier.HBM}
        everything = np.concatenate([byte_pages, copy_pages])
        assert_pages(client, ns, keys, everything)          # zero-copy pages via the byte path
        with client.acquire(ns, keys, timeout_s=10.0) as lease:  # byte-path pages via the arena
            assert lease.num_pages == 10 and lease.keys == tuple(keys)
            arena = client.arena(ns, Tier.HBM).bytes()
            assert all(arena[slot].tobytes() == page.tobytes()
                       for slot, page in zip(lease.slots, everything))
        # The longest present prefix only: a missing page in the middle ends it.
        gap = keys[:3] + ns.keys(token_ids(1, seed=9)) + keys[3:]
        assert client.lookup(ns, gap) == 3 and len(client.get(ns, gap)) == 3


def test_sigterm_then_restart_keeps_the_pages(tierd: TierdProcess) -> None:
    byte_pages, copy_pages = make_pages(5, seed=3), make_pages(3, seed=4)
    with TierClient(tierd.socket_path) as client:
        ns = client.register(SPEC)
        keys = ns.keys(token_ids(8, seed=3))
        client.put(ns, keys[:5], byte_pages)
        put_zero_copy(client, ns, keys[5:], copy_pages)
        old_session = client.session_id
        assert tierd.terminate() == 0, tierd.log_tail()
        assert not tierd.socket_path.exists()
        tierd.start()
        # The same client carries on: it reconnects, and its next lease opens a new session.
        assert client.lookup_result(ns, keys).tiers == (Tier.DISK,) * 8
        assert_pages(client, ns, keys, np.concatenate([byte_pages, copy_pages]))
        again = client.register(SPEC)
        assert again.ns_id == ns.ns_id and again.fingerprint == ns.fingerprint
        with pytest.raises(NotFoundError, match="register the namespace again"):
            client.arena(ns, Tier.HBM)  # the old daemon's region is gone
        more = make_pages(2, seed=10)
        more_keys = again.keys(token_ids(2, seed=10))
        put_zero_copy(client, again, more_keys, more)
        assert client.session_id not in ("", old_session)
        assert_pages(client, again, more_keys, more)


def test_the_byte_path_uses_the_page_socket_across_a_restart(tierd: TierdProcess) -> None:
    pages = make_pages(3, seed=21)
    page_socket = tierd.socket_path.with_name(f"{tierd.socket_path.stem}-pages.sock")
    with TierClient(tierd.socket_path, ClientOptions(local_data_path=False)) as client:
        ns = client.register(SPEC)
        assert ns.page_socket is not None and ns.page_socket.path == str(page_socket.absolute())
        keys = ns.keys(token_ids(3, seed=21))
        client.put(ns, keys, pages)
        assert_pages(client, ns, keys, pages)
        assert client.local_path_stats().page_socket_calls == 2
        assert tierd.terminate() == 0, tierd.log_tail()
        assert not page_socket.exists()
        tierd.start()
        # The old handle names the dead daemon's run: its calls go over gRPC, and still find the pages.
        assert_pages(client, ns, keys, pages)
        stats = client.local_path_stats()
        assert stats.page_socket_calls == 2 and stats.page_socket_fallbacks >= 1
        assert_pages(client, client.register(SPEC), keys, pages)  # the new run's page socket
        assert client.local_path_stats().page_socket_calls == 3


def test_kill_9_in_write_through_keeps_durable_pages(start_tierd: Callable[..., TierdProcess]) -> None:
    daemon = start_tierd(write_policy="write_through", fsync=True)
    pages = make_pages(12, seed=5)
    with TierClient(daemon.socket_path) as client:
        ns = client.register(SPEC)
        keys = ns.keys(token_ids(12, seed=5))
        result = client.put(ns, keys, pages, wait_durable=True, durable_timeout_s=30.0)
        assert result.num_stored == 12 and result.durable
        # The zero-copy path too: pages written into leased hbm slots, committed, waited on.
        filled, fill_keys = make_pages(3, seed=15), ns.keys(token_ids(3, seed=15))
        with client.allocate(ns, 3) as lease:
            client.arena(ns, Tier.HBM).bytes()[list(lease.slots)] = filled
            committed = lease.commit(fill_keys, wait_durable=True, durable_timeout_s=30.0)
        assert committed.num_committed == 3 and committed.durable and committed.durable_ticket
    daemon.kill()
    daemon.start()
    with TierClient(daemon.socket_path) as client:
        ns = client.register(SPEC)
        assert client.lookup(ns, keys) == 12
        assert_pages(client, ns, keys, pages)
        assert_pages(client, ns, fill_keys, filled)
        assert client.stats().checksum_failures == 0


def test_tierctl_reports_the_daemons_counts(tierd: TierdProcess) -> None:
    pages = make_pages(4, seed=6)
    page_bytes = SPEC.page_bytes
    with TierClient(tierd.socket_path) as client:
        ns = client.register(SPEC)
        keys = ns.keys(token_ids(5, seed=6))
        client.put(ns, keys[:4], pages)
        assert client.lookup(ns, keys) == 4                 # 4 dram hits, then 1 miss
        with client.acquire(ns, keys[:2], target_tier=Tier.DRAM) as lease:
            assert lease.num_pages == 2
            held = tierctl(tierd, "stats", "--json")
        after = tierctl(tierd, "stats", "--json")
    assert held.returncode == 0, held.stderr
    data = json.loads(held.stdout)
    assert set(data["tiers"]) == {"hbm", "dram", "disk"}
    fields = {"capacity_bytes", "used_bytes", "pages", "hits", "misses", "evictions", "bytes_in",
              "bytes_out"}
    assert all(fields <= set(tier) for tier in data["tiers"].values())
    dram = data["tiers"]["dram"]
    assert dram["capacity_bytes"] == 4 << 20 and data["tiers"]["hbm"]["capacity_bytes"] == 2 << 20
    assert (dram["pages"], dram["used_bytes"], dram["bytes_in"]) == (4, 4 * page_bytes, 4 * page_bytes)
    assert dram["hits"] == 4 + 2 and dram["misses"] == 1
    assert data["tiers"]["disk"]["pages"] == 0 and data["tiers"]["hbm"]["pages"] == 0
    assert (data["namespaces"], data["leases"], data["checksum_failures"]) == (1, 1, 0)
    assert data["uptime_s"] > 0
    assert json.loads(after.stdout)["leases"] == 0
    table = tierctl(tierd, "stats")
    assert table.returncode == 0 and [line.split()[0] for line in table.stdout.splitlines()[1:4]] \
        == ["hbm", "dram", "disk"]
    flushed = tierctl(tierd, "flush")
    assert flushed.returncode == 0 and "flushed 4 dirty pages" in flushed.stdout
    assert json.loads(tierctl(tierd, "stats", "--json").stdout)["tiers"]["disk"]["pages"] == 4
    assert tierctl(tierd, "health").returncode == 0
    tierd.stop()
    down = tierctl(tierd, "health")
    assert down.returncode != 0 and "cannot reach tierd" in down.stderr


WORKER = """
import sys, time
from tierd_client import TierClient, PageSpec, Tier
spec = PageSpec(**{spec!r})
client = TierClient(sys.argv[1])
ns = client.register(spec)
keys = ns.keys(range({num_keys} * spec.page_tokens))
read = client.acquire(ns, keys, target_tier=Tier.DRAM, ttl_s=600)
fill = client.allocate(ns, ns.region(Tier.HBM).num_slots, ttl_s=600)
print(read.num_pages, fill.num_pages, flush=True)
time.sleep(600)
"""


def test_a_dead_workers_leases_are_freed(tierd: TierdProcess) -> None:
    spec_fields = {f: getattr(SPEC, f) for f in ("model", "dtype", "num_layers", "num_kv_heads",
                                                 "head_dim", "page_tokens")}
    # put_slots=1: the put leases no slot ahead, so the only leases counted are the worker's.
    with TierClient(tierd.socket_path, ClientOptions(put_slots=1, page_socket=False)) as client:
        ns = client.register(SPEC)
        keys = ns.keys(range(3 * SPEC.page_tokens))
        client.put(ns, keys, make_pages(3, seed=7))
        num_slots = ns.region(Tier.HBM).num_slots
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER.format(spec=spec_fields, num_keys=3), str(tierd.socket_path)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        try:
            line = worker.stdout.readline()  # type: ignore[union-attr]
            assert line.split() == ["3", str(num_slots)], f"worker said {line!r}"
            assert client.stats().leases == 2
            with pytest.raises(ResourceExhaustedError):  # every hbm slot is the worker's
                client.allocate(ns, 1)
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=WAIT_S)
        finally:
            worker.kill()
            worker.wait()
        wait_until(lambda: client.stats().leases == 0, "freeing the dead worker's leases")
        with client.allocate(ns, num_slots) as lease:
            assert lease.num_pages == num_slots


# A refusal quotes a client's value cut short: its details stay this small whatever was sent.
MAX_DETAILS_CHARS = 600


def _raw_code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()  # type: ignore[attr-defined]


class Cached:
    """100 pages put before the bad requests, and the stats right after: what must not change."""

    def __init__(self, client: TierClient) -> None:
        self.ns = client.register(SPEC)
        self.keys = self.ns.keys(token_ids(100, seed=8))
        self.pages = make_pages(100, seed=8)
        client.put(self.ns, self.keys, self.pages)
        self.stats = client.stats().to_json_dict()

    def assert_unchanged(self, tierd: TierdProcess, client: TierClient) -> None:
        assert tierd.proc is not None and tierd.proc.poll() is None, tierd.log_tail()
        assert client.health()
        assert_pages(client, self.ns, self.keys, self.pages)
        now = client.stats().to_json_dict()
        assert now["namespaces"] == self.stats["namespaces"] and now["leases"] == 0
        assert now["tiers"]["dram"]["pages"] == self.stats["tiers"]["dram"]["pages"]


def test_malformed_requests_are_invalid_and_change_nothing(tierd: TierdProcess) -> None:
    with TierClient(tierd.socket_path) as client, \
            grpc.insecure_channel(f"unix:{tierd.socket_path}") as channel:
        stub = pb_grpc.TierdStub(channel)
        cached = Cached(client)
        ns_id = cached.ns.ns_id
        fresh = cached.ns.keys(token_ids(2, seed=99))

        def put_raw(header: bool, page_bytes: int) -> object:
            msgs = [pb.PutPagesRequest(keys=fresh, data=bytes(page_bytes * 2))]
            if header:
                msgs[0].header.CopyFrom(pb.PutPagesHeader(ns_id=ns_id))
            return stub.PutPages(iter(msgs), timeout=WAIT_S)

        spec_fields = {f: getattr(SPEC, f) for f in ("model", "num_layers", "num_kv_heads",
                                                     "head_dim", "page_tokens")}
        bad_dtype = pb.PageSpec(dtype="float13", **spec_fields)
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        cases = {
            "unknown dtype": lambda: stub.Register(pb.RegisterRequest(spec=bad_dtype)),
            "no spec": lambda: stub.Register(pb.RegisterRequest()),
            "15-byte key": lambda: stub.Lookup(pb.LookupRequest(ns_id=ns_id, keys=[b"k" * 15])),
            "page of the wrong size": lambda: put_raw(True, SPEC.page_bytes - 1),
            "put without header": lambda: put_raw(False, SPEC.page_bytes),
            "allocate 0 pages": lambda: stub.Allocate(pb.AllocateRequest(ns_id=ns_id)),
            "commit keys without slots": lambda: stub.Commit(pb.CommitRequest(lease_id=1, keys=fresh)),
        }
        for name, call in cases.items():
            assert _raw_code(call) == invalid, name
        spec = pb.PageSpec(dtype=SPEC.dtype, **spec_fields)
        register_cases = {
            "4 MiB model name with control characters": pb.RegisterRequest(spec=pb.PageSpec(
                dtype=SPEC.dtype, **{**spec_fields, "model": "\x00\x1b[2J" + "m" * (4 << 20)})),
            "5000 layers": pb.RegisterRequest(spec=pb.PageSpec(
                dtype=SPEC.dtype, **{**spec_fields, "num_layers": 5000})),
            "1 MiB tenant name": pb.RegisterRequest(spec=spec, tenant="t" * (1 << 20)),
            "tenant with a control character": pb.RegisterRequest(spec=spec, tenant="a\x1bb"),
        }
        for name, request in register_cases.items():
            with pytest.raises(grpc.RpcError) as info:
                stub.Register(request, timeout=WAIT_S)
            assert info.value.code() == invalid, name
            assert len(info.value.details()) < MAX_DETAILS_CHARS, name  # never echoed whole
        assert client.lookup(cached.ns, fresh) == 0  # the rejected puts stored nothing
        cached.assert_unchanged(tierd, client)
    tierd.stop()
    tierd.start()  # restarted from its data dir: no refused Register was persisted
    with TierClient(tierd.socket_path) as client:
        assert client.stats().namespaces == cached.stats["namespaces"]


def test_refused_requests_carry_their_status_and_change_nothing(tierd: TierdProcess) -> None:
    with TierClient(tierd.socket_path) as client, \
            grpc.insecure_channel(f"unix:{tierd.socket_path}") as channel:
        stub = pb_grpc.TierdStub(channel)
        cached = Cached(client)
        ns, keys = cached.ns, cached.keys
        unknown_ns = replace(ns, ns_id=ns.ns_id + 1000)
        with pytest.raises(NotFoundError):
            client.lookup(unknown_ns, keys)
        with pytest.raises(NotFoundError):
            client.get(unknown_ns, keys)
        assert _raw_code(lambda: stub.Release(pb.ReleaseRequest(lease_id=12345), timeout=WAIT_S)) \
            == grpc.StatusCode.NOT_FOUND
        with pytest.raises(InvalidArgumentError, match="target_tier"):
            client.acquire(ns, keys, target_tier=Tier.DISK)
        # 100 pages cannot move from dram to hbm in no time at all.
        with pytest.raises(DeadlineExceededError):
            client.acquire(ns, keys, target_tier=Tier.HBM, timeout_s=0.0)
        with client.acquire(ns, keys[:2], target_tier=Tier.DRAM) as read:
            with pytest.raises(FailedPreconditionError, match="read lease"):
                read.commit(keys[:2])
            with TierClient(tierd.socket_path) as other:
                other.allocate(other.register(SPEC), 1)  # opens the other client's session
                as_other = (("tierd-session", other.session_id),)
                assert _raw_code(lambda: stub.Release(pb.ReleaseRequest(lease_id=read.lease_id),
                                                      metadata=as_other, timeout=WAIT_S)) \
                    == grpc.StatusCode.PERMISSION_DENIED
        # The promotion the timed-out acquire started ends first: its slots are in flight until then.
        client.acquire(ns, keys, target_tier=Tier.HBM, timeout_s=WAIT_S).release()
        with client.allocate(ns, ns.region(Tier.HBM).num_slots), pytest.raises(ResourceExhaustedError):
            client.allocate(ns, 1)
        cached.assert_unchanged(tierd, client)


def test_prometheus_endpoint_serves_the_daemons_counts(start_tierd: Callable[..., TierdProcess]) -> None:
    with socket.socket() as probe:  # a free port for the endpoint
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = start_tierd(metrics=f"127.0.0.1:{port}")
    with TierClient(daemon.socket_path) as client:
        ns = client.register(SPEC)
        client.put(ns, ns.keys(token_ids(3, seed=21)), make_pages(3, seed=21))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT_S) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    assert 'tierd_tier_pages{tier="dram"} 3' in text.splitlines()
    assert "tierd_namespaces 1" in text.splitlines()
    assert 'device="cpu"' in text
