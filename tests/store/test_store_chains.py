"""The page store's puts and commits name parents (the in-process calls the daemon serves):
under prefix_aware a chain put in pieces is evicted from its end, a malformed parent is refused,
and after a restart a later put may continue a chain found on disk."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from store_helpers import SPEC, make_keys, make_pages, small_config

from tierd.config import EvictionPolicy, MemoryTierConfig, StoreConfig
from tierd.errors import InvalidArgument
from tierd.store import PageStore
from tierd.tier import Tier

DRAM_PAGES = 16
DRAM_LOW_PAGES = 12  # background eviction stops at 75%


def _config(data_dir: Path, device: str) -> StoreConfig:
    return small_config(data_dir, dram_pages=DRAM_PAGES, device=device,
                        eviction_policy=EvictionPolicy.PREFIX_AWARE)


def _settle(store: PageStore) -> None:
    deadline_s = time.monotonic() + 10.0
    while store.stats().tiers[Tier.DRAM].pages > DRAM_LOW_PAGES:
        assert time.monotonic() < deadline_s, "background eviction did not reach the low watermark"
        time.sleep(0.01)


def test_a_chain_put_in_pieces_is_evicted_from_its_end(tmp_path: Path, device: str) -> None:
    with PageStore(_config(tmp_path / "data", device)) as store:
        ns = store.register(SPEC)
        chain, other = make_keys(ns, 10), make_keys(ns, 8, start_token=100_000)
        store.put(ns.ns_id, chain[:5], make_pages(ns, 5))
        store.put(ns.ns_id, chain[5:], make_pages(ns, 5, seed=1), parent=chain[4])
        store.put(ns.ns_id, other, make_pages(ns, 8, seed=2))  # 18 pages: 2 must go first
        _settle(store)
        tiers = list(store.lookup(ns.ns_id, chain).tiers)
        assert tiers == sorted(tiers) and tiers[0] is Tier.DRAM and tiers[-1] is Tier.DISK
        stats = store.stats()
        assert stats.eviction_policy is EvictionPolicy.PREFIX_AWARE
        assert stats.evictions_with_children == 0


def test_a_malformed_parent_is_refused_and_changes_nothing(tmp_path: Path, device: str) -> None:
    with PageStore(_config(tmp_path / "data", device)) as store:
        ns = store.register(SPEC)
        keys, pages = make_keys(ns, 2), make_pages(ns, 2)
        with pytest.raises(InvalidArgument, match="parent: a page key must be 16 bytes, got 3 bytes"):
            store.put(ns.ns_id, keys, pages, parent=b"abc")
        lease = store.allocate(ns.ns_id, 2)
        with pytest.raises(InvalidArgument, match="parent: a page key must be 16 bytes, got str"):
            store.commit(lease.lease_id, keys, lease.slots, parent="k" * 16)  # type: ignore[arg-type]
        assert store.lookup(ns.ns_id, keys).num_hits == 0
        assert store.stats().leases == 1


def test_after_a_restart_a_put_may_continue_a_chain_on_disk(tmp_path: Path, device: str) -> None:
    config = _config(tmp_path / "data", device)
    with PageStore(config) as store:
        ns = store.register(SPEC)
        chain = make_keys(ns, 8)
        store.put(ns.ns_id, chain[:4], make_pages(ns, 4))
    with PageStore(config) as store:
        ns = store.register(SPEC)
        assert list(store.lookup(ns.ns_id, chain[:4]).tiers) == [Tier.DISK] * 4
        # chain[:4] kept their parents on disk; naming chain[3] as the parent of what follows
        # makes the whole of chain one chain again.
        store.put(ns.ns_id, chain[4:], make_pages(ns, 4, seed=1), parent=chain[3])
        assert store.lookup(ns.ns_id, chain).num_hits == 8
        assert store.stats().evictions_with_children == 0


def test_background_eviction_waits_for_a_leased_leaf_and_a_put_breaks_a_chain_only_to_fit(
        tmp_path: Path, device: str) -> None:
    # dram above its high watermark, but the chain's only leaf is leased: maintenance finds no
    # victim that keeps the chain whole, and takes none; a put that needs a slot takes the oldest.
    dram = MemoryTierConfig(DRAM_PAGES * SPEC.page_bytes, region_share=1.0, high_watermark=0.25,
                            low_watermark=0.25)
    config = small_config(tmp_path / "data", hbm_pages=0, dram_pages=DRAM_PAGES, device=device,
                          dram=dram, eviction_policy=EvictionPolicy.PREFIX_AWARE)
    with PageStore(config) as store:
        ns = store.register(SPEC)
        chain = make_keys(ns, 8)
        store.put(ns.ns_id, chain, make_pages(ns, 8))
        lease = store.acquire(ns.ns_id, chain[7:], Tier.DRAM)  # pins the leaf only
        assert lease.keys == (chain[7],)
        for _ in range(3):
            store.run_maintenance()
        assert store.lookup(ns.ns_id, chain).tiers == (Tier.DRAM,) * 8
        assert store.stats().evictions_with_children == 0
        store.put(ns.ns_id, make_keys(ns, 9, start_token=100_000), make_pages(ns, 9, seed=1))
        assert store.stats().evictions_with_children >= 1  # 16 slots, 17 pages: one had to go
        store.release(lease.lease_id)
