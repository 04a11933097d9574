"""Two page stores (two nodes) sharing a remote tier (the in-memory backend): what one commits
the other acquires bit-exact, tenants and specs stay apart, a down store costs only misses."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from memory_backend import MemoryBackend
from store_helpers import SPEC, make_keys, make_pages, small_config

from tierd.config import MemoryTierConfig, RemoteConfig, RemoteWriteOn, StoreConfig
from tierd.errors import ConfigError
from tierd.store import PageStore
from tierd.tier import Tier

WAIT_S = 30.0


def node_config(tmp_path: Path, name: str, **changes: object) -> StoreConfig:
    return small_config(tmp_path / name, shm_prefix=f"td{name}", **changes)


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def nodes(tmp_path: Path, backend: MemoryBackend) -> Iterator[tuple[PageStore, PageStore]]:
    with PageStore(node_config(tmp_path, "a"), backend) as a, \
            PageStore(node_config(tmp_path, "b"), backend) as b:
        yield a, b


def test_pages_put_on_one_node_are_acquired_on_the_other_bit_exact(
        nodes: tuple[PageStore, PageStore], backend: MemoryBackend) -> None:
    a, b = nodes
    ns_a, ns_b = a.register(SPEC), b.register(SPEC)
    keys, pages = make_keys(ns_a, 6), make_pages(ns_a, 6)
    a.put(ns_a.ns_id, keys[:4], pages[:4])
    assert a.wait_remote_writes(WAIT_S)
    assert b.lookup(ns_b.ns_id, keys).tiers == (Tier.REMOTE,) * 4
    lease = b.acquire(ns_b.ns_id, keys, Tier.HBM)
    assert lease.keys == tuple(keys[:4])
    assert b.read_slots(lease.lease_id) == pages[:4]
    b.release(lease.lease_id)
    assert b.lookup(ns_b.ns_id, keys).tiers[:4] != (Tier.REMOTE,) * 4  # now local
    assert b.wait_remote_writes(WAIT_S)
    stats = b.stats()
    assert stats.remote is not None and stats.remote.pages_written == 0  # not written back
    assert stats.tiers[Tier.REMOTE].bytes_out == 4 * ns_b.page_bytes


def test_commit_of_a_fill_lease_reaches_the_other_node(nodes: tuple[PageStore, PageStore]) -> None:
    a, b = nodes
    ns_a, ns_b = a.register(SPEC), b.register(SPEC)
    keys, pages = make_keys(ns_a, 3), make_pages(ns_a, 3, seed=3)
    lease = a.allocate(ns_a.ns_id, 3)
    a.write_slots(lease.lease_id, list(lease.slots), pages)
    a.commit(lease.lease_id, keys, list(lease.slots), release=True)
    assert a.wait_remote_writes(WAIT_S)
    assert b.get(ns_b.ns_id, keys) == pages


def test_other_tenants_and_specs_get_no_hits(tmp_path: Path, backend: MemoryBackend) -> None:
    shared = {"hbm": MemoryTierConfig(24 * SPEC.page_bytes, region_share=0.34),
              "dram": MemoryTierConfig(48 * SPEC.page_bytes, region_share=0.34)}
    with PageStore(node_config(tmp_path, "a"), backend) as a, \
            PageStore(node_config(tmp_path, "b", **shared), backend) as b:
        ns_a = a.register(SPEC)
        keys, pages = make_keys(ns_a, 3), make_pages(ns_a, 3)
        a.put(ns_a.ns_id, keys, pages)
        assert a.wait_remote_writes(WAIT_S)
        other_tenant = b.register(SPEC, tenant="beta")
        other_spec = b.register(replace(SPEC, model="tiny@r2"))
        for ns in (other_tenant, other_spec):
            assert b.lookup(ns.ns_id, keys).num_hits == 0
            assert b.get(ns.ns_id, keys) == []
        assert b.get(b.register(SPEC).ns_id, keys) == pages  # the same tenant and spec: shared


def test_a_down_store_costs_misses_and_the_node_keeps_serving(
        nodes: tuple[PageStore, PageStore], backend: MemoryBackend) -> None:
    a, b = nodes
    ns_a, ns_b = a.register(SPEC), b.register(SPEC)
    keys, pages = make_keys(ns_a, 4), make_pages(ns_a, 4)
    a.put(ns_a.ns_id, keys, pages)
    assert a.wait_remote_writes(WAIT_S)
    backend.down = True
    assert b.lookup(ns_b.ns_id, keys).num_hits == 0
    lease = b.acquire(ns_b.ns_id, keys, Tier.HBM)
    assert lease.keys == ()
    b.release(lease.lease_id)
    b.put(ns_b.ns_id, keys[:2], pages[:2])  # the node works without its remote tier
    assert b.get(ns_b.ns_id, keys) == pages[:2]
    stats = b.stats().remote
    assert stats is not None and stats.errors >= 1 and not stats.available


def test_a_delete_removes_the_page_from_the_remote_tier(nodes: tuple[PageStore, PageStore]) -> None:
    a, b = nodes
    ns_a, ns_b = a.register(SPEC), b.register(SPEC)
    keys, pages = make_keys(ns_a, 2), make_pages(ns_a, 2)
    a.put(ns_a.ns_id, keys, pages)
    assert a.wait_remote_writes(WAIT_S)
    assert a.delete(ns_a.ns_id, keys[1:]) == 1
    assert a.wait_remote_writes(WAIT_S)
    assert b.lookup(ns_b.ns_id, keys).num_hits == 1


def test_write_on_demote_writes_pages_as_they_leave_dram(tmp_path: Path, backend: MemoryBackend) -> None:
    remote = RemoteConfig(write_on=RemoteWriteOn.DEMOTE)
    # b asks again at once after a miss (no miss cache): the pages arrive between two lookups.
    with PageStore(node_config(tmp_path, "a", remote=remote), backend) as a, \
            PageStore(node_config(tmp_path, "b", remote=RemoteConfig(miss_cache_s=0.0)), backend) as b:
        ns_a, ns_b = a.register(SPEC), b.register(SPEC)
        keys, pages = make_keys(ns_a, 24), make_pages(ns_a, 24)
        a.put(ns_a.ns_id, keys[:4], pages[:4])
        assert a.wait_remote_writes(WAIT_S)
        assert b.lookup(ns_b.ns_id, keys).num_hits == 0  # committed, still in dram: not written
        a.put(ns_a.ns_id, keys[4:], pages[4:])  # 24 pages through 16 dram slots: some leave dram
        a.run_maintenance()
        assert a.wait_remote_writes(WAIT_S)
        written = a.stats().remote
        assert written is not None and written.pages_written >= 8
        assert b.lookup(ns_b.ns_id, keys).num_hits >= 4
        hits = b.lookup(ns_b.ns_id, keys).num_hits
        assert b.get(ns_b.ns_id, keys[:hits]) == pages[:hits]


def test_a_remote_page_that_finds_dram_full_of_leases_is_a_miss(
        nodes: tuple[PageStore, PageStore]) -> None:
    a, b = nodes
    ns_a, ns_b = a.register(SPEC), b.register(SPEC)
    keys, pages = make_keys(ns_a, 4), make_pages(ns_a, 4)
    a.put(ns_a.ns_id, keys, pages)
    assert a.wait_remote_writes(WAIT_S)
    held = b.allocate(ns_b.ns_id, b.num_slots(ns_b.ns_id, Tier.DRAM), tier=Tier.DRAM)
    assert b.get(ns_b.ns_id, keys) == []
    b.release(held.lease_id)
    assert b.get(ns_b.ns_id, keys) == pages


def test_the_backend_is_closed_with_the_store(tmp_path: Path, backend: MemoryBackend) -> None:
    with PageStore(node_config(tmp_path, "a"), backend):
        assert not backend.closed
    assert backend.closed


def test_a_remote_tier_without_redis_py_is_refused_at_open(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "redis" else find_spec(name, *args))
    store = PageStore(node_config(tmp_path, "a", remote=RemoteConfig(nodes=("127.0.0.1:1",))))
    with pytest.raises(ConfigError, match=r"pip install 'tierd\[remote\]'"):
        store.open()
