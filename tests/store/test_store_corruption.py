"""Corruption: bytes flipped inside a stored value in LMDB's data file are caught by the checksum;
the store reports a miss, counts a checksum failure and never returns the bad page."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_helpers import SPEC, make_keys, make_pages, small_config

from tierd.store import PageStore
from tierd.tier import Tier


def _flip_inside(data_file: Path, payload: bytes, offset: int) -> None:
    raw = bytearray(data_file.read_bytes())
    at = raw.find(payload[:64])
    assert at >= 0, "the stored payload was not found verbatim in data.mdb"
    raw[at + offset] ^= 0xFF
    data_file.write_bytes(bytes(raw))


@pytest.mark.parametrize("read_path", ["get", "acquire"])
def test_flipped_byte_is_a_miss_and_a_checksum_failure(tmp_path: Path, device: str, read_path: str) -> None:
    cfg = small_config(tmp_path, device=device)
    with PageStore(cfg) as store:
        ns = store.register(SPEC)
        keys, pages = make_keys(ns, 4), make_pages(ns, 4)
        store.put(ns.ns_id, keys, pages)
    data_file = next(cfg.data_dir.rglob("data.mdb"))
    _flip_inside(data_file, pages[2], offset=SPEC.page_bytes // 2)

    with PageStore(cfg) as store:
        assert store.lookup(ns.ns_id, keys).num_hits == 4  # headers still look fine
        if read_path == "get":
            got = store.get(ns.ns_id, keys)
            assert [bytes(p) for p in got] == pages[:2]
        else:
            lease = store.acquire(ns.ns_id, keys, Tier.HBM)
            assert lease.keys == tuple(keys[:2])
            assert store.read_slots(lease.lease_id) == pages[:2]
            store.release(lease.lease_id)
        assert store.stats().checksum_failures == 1
        # The bad page is gone for good; the pages after it are untouched.
        assert store.lookup(ns.ns_id, keys).num_hits == 2
        assert [bytes(p) for p in store.get(ns.ns_id, keys[3:])] == pages[3:]
        store.put(ns.ns_id, keys[2:3], pages[2:3])  # a fresh copy can be stored again
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
