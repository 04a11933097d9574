"""Two page stores (two nodes) sharing a real Redis Cluster as their remote tier: pages cross
nodes bit-exact, tenants and specs stay apart, damaged values are counted misses and removed,
a dead master costs misses within the deadline, a reshard loses nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from redis_cluster import RedisClusterFixture
from store_helpers import SPEC, make_keys, make_pages, small_config

from tierd.config import MemoryTierConfig, RemoteConfig, StoreConfig
from tierd.keys import PageKey
from tierd.remote.page_value import page_id
from tierd.remote.redis_cluster import ACL_RULES
from tierd.spec import Namespace
from tierd.store import PageStore
from tierd.tier import Tier

WAIT_S = 60.0
TIMEOUT_S = 0.5          # where a test makes the cluster fail: the deadline it asserts against
CALM_TIMEOUT_S = 5.0     # elsewhere: room for a loaded machine (a missed deadline is a lost write)
# A hang is the failure: a call must end within its deadline plus scheduling slack.
SLACK_S = 10.0


def node_config(tmp_path: Path, name: str, cluster: RedisClusterFixture,
                remote: RemoteConfig | None = None, **changes: object) -> StoreConfig:
    remote = remote or RemoteConfig(nodes=tuple(cluster.nodes), timeout_s=CALM_TIMEOUT_S,
                                    retry_after_s=0.2, connect_timeout_s=2.0)
    # Up to three namespaces per node: 8 hbm and 64 dram slots each.
    return small_config(tmp_path / name, shm_prefix=f"tdrc{name}", remote=remote,
                        hbm=MemoryTierConfig(24 * SPEC.page_bytes, region_share=0.34),
                        dram=MemoryTierConfig(192 * SPEC.page_bytes, region_share=0.34),
                        **changes)


def stores(tmp_path: Path, cluster: RedisClusterFixture,
           remote: RemoteConfig | None = None) -> tuple[PageStore, PageStore]:
    return (PageStore(node_config(tmp_path, "a", cluster, remote)),
            PageStore(node_config(tmp_path, "b", cluster, remote)))


@pytest.fixture
def nodes(tmp_path: Path, clean_redis_cluster: RedisClusterFixture) -> Iterator[tuple[PageStore, PageStore]]:
    a, b = stores(tmp_path, clean_redis_cluster)
    with a, b:
        yield a, b


def name(ns: Namespace, key: PageKey, part: str) -> str:
    return f"td1:{{{page_id(ns.fingerprint, key).hex()}}}:{part}"


def publish(store: PageStore, ns: Namespace, keys: list[PageKey], pages: list[bytes]) -> None:
    store.put(ns.ns_id, keys, pages)
    assert store.wait_remote_writes(WAIT_S)


def test_pages_committed_on_one_node_are_acquired_on_the_other_bit_exact(
        nodes: tuple[PageStore, PageStore]) -> None:
    a, b = nodes
    ns_a, ns_b = a.register(SPEC), b.register(SPEC)
    keys, pages = make_keys(ns_a, 40), make_pages(ns_a, 40)
    lease = a.allocate(ns_a.ns_id, 8)
    a.write_slots(lease.lease_id, list(lease.slots), pages[:8])
    a.commit(lease.lease_id, keys[:8], list(lease.slots), release=True)
    publish(a, ns_a, keys[8:], pages[8:])
    assert b.lookup(ns_b.ns_id, keys).tiers == (Tier.REMOTE,) * 40
    lease = b.acquire(ns_b.ns_id, keys[:8], Tier.HBM)  # the region's 8 hbm slots
    assert b.read_slots(lease.lease_id) == pages[:8]
    b.release(lease.lease_id)
    assert b.get(ns_b.ns_id, keys) == pages
    stats = b.stats()
    assert stats.remote is not None and stats.remote.checksum_failures == 0
    assert stats.tiers[Tier.REMOTE].bytes_out == 40 * ns_b.page_bytes


def test_other_tenants_and_specs_get_no_hits(nodes: tuple[PageStore, PageStore]) -> None:
    a, b = nodes
    ns_a = a.register(SPEC)
    keys, pages = make_keys(ns_a, 4), make_pages(ns_a, 4)
    publish(a, ns_a, keys, pages)
    for ns in (b.register(SPEC, tenant="beta"), b.register(replace(SPEC, model="tiny@r2"))):
        assert b.lookup(ns.ns_id, keys).num_hits == 0
        assert b.get(ns.ns_id, keys) == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "head_only", "body_only", "foreign"])
def test_a_damaged_value_is_a_counted_miss_and_is_removed(
        nodes: tuple[PageStore, PageStore], clean_redis_cluster: RedisClusterFixture, damage: str) -> None:
    a, b = nodes
    ns_a, ns_b = a.register(SPEC), b.register(SPEC)
    keys, pages = make_keys(ns_a, 3), make_pages(ns_a, 3)
    publish(a, ns_a, keys, pages)
    raw = clean_redis_cluster.client()
    body, head = name(ns_a, keys[1], "b"), name(ns_a, keys[1], "h")
    if damage == "flip":
        value = bytearray(raw.get(body))
        value[100] ^= 0x01
        raw.set(body, bytes(value))
    elif damage == "truncate":
        raw.set(body, raw.get(body)[:-1])
    elif damage == "head_only":
        raw.delete(body)
    elif damage == "body_only":
        raw.delete(head)
    else:  # the value of a page of another namespace, planted under this page's name
        other = a.register(replace(SPEC, model="tiny@other"))
        publish(a, other, keys[1:2], pages[1:2])
        raw.set(body, raw.get(name(other, keys[1], "b")))
        raw.set(head, raw.get(name(other, keys[1], "h")))
    assert b.get(ns_b.ns_id, keys) == pages[:1]
    stats = b.stats().remote
    assert stats is not None and stats.checksum_failures == 1
    assert raw.exists(body) == 0 and raw.exists(head) == 0
    assert b.lookup(ns_b.ns_id, keys).num_hits == 1


def test_a_killed_master_costs_misses_within_the_deadline(
        tmp_path: Path, private_redis_cluster: RedisClusterFixture) -> None:
    a, b = stores(tmp_path, private_redis_cluster, RemoteConfig(
        nodes=tuple(private_redis_cluster.nodes), timeout_s=TIMEOUT_S, retry_after_s=0.2,
        connect_timeout_s=0.5))
    with a, b:
        ns_a, ns_b = a.register(SPEC), b.register(SPEC)
        keys, pages = make_keys(ns_a, 30), make_pages(ns_a, 30)
        publish(a, ns_a, keys, pages)
        private_redis_cluster.kill(0)
        for _ in range(3):
            started = time.monotonic()
            lease = b.acquire(ns_b.ns_id, keys, Tier.DRAM)
            assert time.monotonic() - started < TIMEOUT_S * 4 + SLACK_S
            got = b.read_slots(lease.lease_id)
            b.release(lease.lease_id)
            assert got == pages[:len(got)]  # whatever it found is right
            started = time.monotonic()
            b.lookup(ns_b.ns_id, keys)
            assert time.monotonic() - started < TIMEOUT_S * 4 + SLACK_S
        b.put(ns_b.ns_id, keys[:2], pages[:2])  # the node keeps serving its own pages
        assert b.get(ns_b.ns_id, keys[:2]) == pages[:2]
        assert b.stats().remote is not None


def test_a_reshard_during_the_run_loses_nothing(tmp_path: Path,
                                                private_redis_cluster: RedisClusterFixture) -> None:
    a, b = stores(tmp_path, private_redis_cluster)
    with a, b:
        ns_a, ns_b = a.register(SPEC), b.register(SPEC)
        keys, pages = make_keys(ns_a, 120), make_pages(ns_a, 120)
        moving = threading.Thread(target=private_redis_cluster.reshard, args=(2000, 0, 1))
        moving.start()
        for start in range(0, 120, 10):
            publish(a, ns_a, keys[start:start + 10], pages[start:start + 10])
        moving.join()
        assert a.stats().remote.pages_written == 120  # type: ignore[union-attr]
        assert b.get(ns_b.ns_id, keys) == pages


def test_an_acl_user_with_only_the_documented_rules_works(
        tmp_path: Path, private_redis_cluster: RedisClusterFixture) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("s3cret\n")
    for i in range(private_redis_cluster.masters):
        private_redis_cluster.node_client(i).execute_command(
            "ACL", "SETUSER", "tierd", "on", ">s3cret", "resetkeys", "-@all", *ACL_RULES.split())
    remote = RemoteConfig(nodes=tuple(private_redis_cluster.nodes), username="tierd",
                          password_file=password_file, timeout_s=CALM_TIMEOUT_S)
    with PageStore(node_config(tmp_path, "a", private_redis_cluster, remote=remote)) as a, \
            PageStore(node_config(tmp_path, "b", private_redis_cluster, remote=remote)) as b:
        ns_a, ns_b = a.register(SPEC), b.register(SPEC)
        keys, pages = make_keys(ns_a, 6), make_pages(ns_a, 6)
        publish(a, ns_a, keys, pages)
        assert b.get(ns_b.ns_id, keys) == pages
        assert b.stats().remote.errors == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("private_redis_cluster",
                         [{"extra_args": ("--appendonly", "yes", "--appendfsync", "always")}],
                         indirect=True)
def test_a_master_killed_during_puts_never_leaves_a_page_that_reads_wrong(
        tmp_path: Path, private_redis_cluster: RedisClusterFixture) -> None:
    """kill -9 of a master (its data on an append-only file) while node A's writer writes, then
    the master back with what its file kept: node B reads only exact pages (or misses)."""
    a, b = stores(tmp_path, private_redis_cluster)
    with a, b:
        ns_a, ns_b = a.register(SPEC), b.register(SPEC)
        keys, pages = make_keys(ns_a, 160), make_pages(ns_a, 160)
        publish(a, ns_a, keys[:20], pages[:20])
        for start in range(20, 160, 20):  # queued, not waited for: the kill lands mid-stream
            a.put(ns_a.ns_id, keys[start:start + 20], pages[start:start + 20])
        private_redis_cluster.kill(0)
        assert a.wait_remote_writes(WAIT_S)
        private_redis_cluster.restart(0)
        served = 0
        for start in range(0, 160, 8):
            got = b.get(ns_b.ns_id, keys[start:start + 8])
            assert got == pages[start:start + len(got)], "a page read back wrong"
            served += len(got)
        assert served > 0
        stats = b.stats().remote
        assert stats is not None  # torn values (if the kill cut one) were counted and removed
