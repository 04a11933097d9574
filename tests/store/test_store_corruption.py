"""Corruption: bytes flipped inside a stored value in LMDB's data file, or two values exchanged
inside LMDB (as a misdirected write would leave them), are caught by the checksum, which covers
the page key; the store reports a miss, counts a checksum failure and never returns the bad page."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest
from store_helpers import SPEC, make_keys, make_pages, small_config

from tierd.store import PageStore
from tierd.tier import Tier
from tierd.tiers.page_format import disk_key


def _flip_inside(data_file: Path, payload: bytes, offset: int) -> None:
    raw = bytearray(data_file.read_bytes())
    at = raw.find(payload[:64])
    assert at >= 0, "the stored payload was not found verbatim in data.mdb"
    raw[at + offset] ^= 0xFF
    data_file.write_bytes(bytes(raw))


def _exchange(env_dir: Path, a: bytes, b: bytes) -> None:
    env = lmdb.open(str(env_dir), max_dbs=2)
    try:
        pages_db = env.open_db(b"pages")
        with env.begin(write=True, db=pages_db) as txn:
            value_a, value_b = txn.get(a), txn.get(b)
            assert value_a is not None and value_b is not None
            txn.put(a, value_b)
            txn.put(b, value_a)
    finally:
        env.close()


@pytest.mark.parametrize("damage", ["flipped_byte", "exchanged_values"])
@pytest.mark.parametrize("read_path", ["get", "acquire"])
def test_damaged_page_is_a_miss_and_a_checksum_failure(tmp_path: Path, device: str, read_path: str,
                                                       damage: str) -> None:
    cfg = small_config(tmp_path, device=device)
    with PageStore(cfg) as store:
        ns = store.register(SPEC)
        keys, pages = make_keys(ns, 4), make_pages(ns, 4)
        store.put(ns.ns_id, keys, pages)
    data_file = next(cfg.data_dir.rglob("data.mdb"))
    if damage == "flipped_byte":
        _flip_inside(data_file, pages[2], offset=SPEC.page_bytes // 2)
        damaged = [2]
    else:
        _exchange(data_file.parent, disk_key(ns.ns_id, keys[1]), disk_key(ns.ns_id, keys[2]))
        damaged = [1, 2]
    first = damaged[0]

    with PageStore(cfg) as store:
        assert store.lookup(ns.ns_id, keys).num_hits == 4  # headers still look fine
        if read_path == "get":
            got = store.get(ns.ns_id, keys)
            assert [bytes(p) for p in got] == pages[:first]
        else:
            lease = store.acquire(ns.ns_id, keys, Tier.HBM)
            assert lease.keys == tuple(keys[:first])
            assert store.read_slots(lease.lease_id) == pages[:first]
            store.release(lease.lease_id)
        for i in damaged:  # each is a miss: never another page's bytes
            assert store.get(ns.ns_id, keys[i:i + 1]) == []
        assert store.stats().checksum_failures == len(damaged)
        # The bad pages are gone for good; the pages after them are untouched.
        assert store.lookup(ns.ns_id, keys).num_hits == first
        assert [bytes(p) for p in store.get(ns.ns_id, keys[3:])] == pages[3:]
        for i in damaged:  # a fresh copy can be stored again
            store.put(ns.ns_id, keys[i:i + 1], pages[i:i + 1])
        assert [bytes(p) for p in store.get(ns.ns_id, keys)] == pages


def test_lmdb_map_full_lowers_the_budget_and_loses_nothing_listed(tmp_path: Path, device: str) -> None:
    from dataclasses import replace

    from tierd.config import WritePolicy

    cfg = small_config(tmp_path, disk_pages=48, write_policy=WritePolicy.WRITE_THROUGH, device=device)
    # No headroom: LMDB's page overhead fills the map before the byte budget is reached.
    cfg = cfg.with_changes(disk=replace(cfg.disk, map_headroom=0.0, map_min_extra_bytes=0))
    with PageStore(cfg) as store:
        ns = store.register(SPEC)
        keys, pages = make_keys(ns, 120), make_pages(ns, 120)
        for start in range(0, 120, 8):
            result = store.put(ns.ns_id, keys[start:start + 8], pages[start:start + 8])
            store.wait_durable(result.durable_ticket, timeout_s=10)
        stats = store.stats()
        assert stats.map_full_events >= 1
        assert stats.disk_budget_bytes < cfg.disk.capacity_bytes
        # Whatever the index lists reads back bit-exact; the store still takes durable writes.
        by_key = dict(zip(keys, pages))
        for key in keys:
            if store.lookup(ns.ns_id, [key]).num_hits:
                assert [bytes(p) for p in store.get(ns.ns_id, [key])] == [by_key[key]]
        fresh_keys, fresh_pages = make_keys(ns, 2, start_token=50_000), make_pages(ns, 2, seed=5)
        deadline_ok = False
        for _ in range(20):
            result = store.put(ns.ns_id, fresh_keys, fresh_pages)
            if store.wait_durable(result.durable_ticket, timeout_s=5):
                deadline_ok = True
                break
            store.run_maintenance()
        assert deadline_ok, "after the map filled, new pages never became durable again"
