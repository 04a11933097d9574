"""Two real daemons (two nodes) sharing a Redis Cluster: a prefix computed on one is served on the
other, tierctl shows the remote tier, a dead master costs misses not hangs, and a daemon killed
with kill -9 in the middle of its puts never leaves a page that reads back wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
from e2e_daemon import REPO_ROOT, SPEC, TierdProcess
from redis_cluster import RedisClusterFixture

from tierd.errors import TierdError
from tierd_client import NamespaceHandle, TierClient

WAIT_S = 60.0
TIMEOUT_S = 0.5       # where a test makes the cluster fail: the deadline it asserts against
CALM_TIMEOUT_S = 5.0  # elsewhere: room for a loaded machine (a missed deadline is a lost write)
MAX_BATCHES = 400  # puts go on until the kill (or these are done; the writer still writes)
SLACK_S = 10.0  # a hang is the failure: a call must end within its deadline plus this


def remote_config(cluster: RedisClusterFixture, timeout_s: float = CALM_TIMEOUT_S) -> str:
    nodes = ", ".join(f'"{node}"' for node in cluster.nodes)
    return f"""
[remote]
nodes = [{nodes}]
timeout_s = {timeout_s}
retry_after_s = 0.2
connect_timeout_s = {min(timeout_s, 2.0)}
"""


def pages_for(keys: list[bytes], page_bytes: int) -> list[bytes]:
    """Deterministic page bytes derived from each key: whoever reads a key knows its page."""
    return [np.random.default_rng(int.from_bytes(key[:8], "little")).integers(
        0, 256, page_bytes, dtype=np.uint8).tobytes() for key in keys]


def keys_of(ns: NamespaceHandle, num_pages: int, seed: int) -> list[bytes]:
    tokens = np.random.default_rng(seed).integers(0, 32000, num_pages * SPEC.page_tokens).tolist()
    return ns.keys(tokens)


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT_S} s"
        time.sleep(0.05)


def tierctl_json(daemon: TierdProcess) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "tierd_client.tierctl", "--socket",
                           str(daemon.socket_path), "stats", "--json"], capture_output=True,
                          text=True, timeout=120, env=env, check=True)
    return dict(json.loads(done.stdout))


def test_a_prefix_computed_on_one_node_is_served_on_the_other(
        start_tierd: Callable[..., TierdProcess], clean_redis_cluster: RedisClusterFixture) -> None:
    extra = remote_config(clean_redis_cluster)
    a, b = start_tierd(extra_config=extra), start_tierd(extra_config=extra)
    with TierClient(a.socket_path) as on_a, TierClient(b.socket_path) as on_b:
        ns_a, ns_b = on_a.register(SPEC), on_b.register(SPEC)
        keys = keys_of(ns_a, 12, seed=1)
        pages = pages_for(keys, ns_a.page_bytes)
        on_a.put(ns_a, keys, pages)
        wait_until(lambda: on_b.lookup(ns_b, keys) == 12, "the pages reaching node b")
        assert {t.label for t in on_b.lookup_result(ns_b, keys).tiers} == {"remote"}
        assert on_b.get(ns_b, keys) == pages
        with on_b.acquire(ns_b, keys, timeout_s=10.0) as lease:
            assert lease.num_pages == 12
    stats = tierctl_json(b)
    remote = stats["tiers"]["remote"]  # type: ignore[index]
    assert remote["bytes_out"] == 12 * ns_b.page_bytes and remote["hits"] >= 12
    assert stats["remote"]["checksum_failures"] == 0  # type: ignore[index]
    assert tierctl_json(a)["remote"]["pages_written"] == 12  # type: ignore[index]


def test_a_dead_master_costs_misses_and_the_daemon_keeps_serving(
        start_tierd: Callable[..., TierdProcess], private_redis_cluster: RedisClusterFixture) -> None:
    b = start_tierd(extra_config=remote_config(private_redis_cluster, TIMEOUT_S))
    with TierClient(b.socket_path) as client:
        ns = client.register(SPEC)
        keys = keys_of(ns, 8, seed=2)
        pages = pages_for(keys, ns.page_bytes)
        private_redis_cluster.kill(0)
        private_redis_cluster.kill(1)
        for _ in range(3):
            started = time.monotonic()
            assert client.lookup(ns, keys) <= 8
            assert client.get(ns, keys) == pages[:len(client.get(ns, keys))]
            assert time.monotonic() - started < 2 * (TIMEOUT_S * 4 + SLACK_S)
        client.put(ns, keys, pages)
        assert client.get(ns, keys) == pages
        assert client.lookup(ns, keys) == 8


def test_kill_9_of_a_daemon_during_its_puts_leaves_no_page_that_reads_wrong(
        start_tierd: Callable[..., TierdProcess], clean_redis_cluster: RedisClusterFixture) -> None:
    extra = remote_config(clean_redis_cluster)
    a, b = start_tierd(extra_config=extra), start_tierd(extra_config=extra)
    attempted: list[list[bytes]] = []
    stored = threading.Event()
    with TierClient(a.socket_path) as on_a:
        ns_a = on_a.register(SPEC)

        def put_until_killed() -> None:
            for seed in range(MAX_BATCHES):
                keys = keys_of(ns_a, 8, seed=100 + seed)
                attempted.append(keys)
                try:
                    on_a.put(ns_a, keys, pages_for(keys, ns_a.page_bytes))
                except (TierdError, OSError):
                    return  # the daemon is gone
                if seed >= 10:
                    stored.set()

        putting = threading.Thread(target=put_until_killed)
        putting.start()
        assert stored.wait(WAIT_S), "the first puts did not complete"
        wait_until(lambda: tierctl_json(a)["remote"]["pages_written"] > 0,  # type: ignore[index]
                   "the remote writer writing")
        a.kill()
        putting.join()
    with TierClient(b.socket_path) as on_b:
        ns_b = on_b.register(SPEC)
        served = 0
        for keys in attempted:
            got = on_b.get(ns_b, keys)
            assert got == pages_for(keys, ns_b.page_bytes)[:len(got)], "a page read back wrong"
            served += len(got)
        assert served > 0  # the writer had written some before the kill
