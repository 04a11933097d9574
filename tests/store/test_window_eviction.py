"""Under prefix_aware, a sliding-window namespace's pages that no window needs go down first.

A chain of 10 pages of 16 tokens with a 32-token window and 16 sink tokens: a continuation of
the chain attends to page 0 (the sinks) and pages 8-9; pages 1-7 are 2 or more pages before the
end of every cached chain through them, so they are inside no window again. When dram must make
room they go to disk first (children or not: they stay cached, so the chain stays whole), the
oldest first; without a disk tier (where leaving dram is a drop) the chain shrinks from its end.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from store_helpers import SPEC, make_keys, make_pages, small_config

from tierd.config import EvictionPolicy, MemoryTierConfig, StoreConfig
from tierd.spec import PageSpec
from tierd.store import PageStore
from tierd.tier import Tier

DRAM_PAGES = 16
WINDOWED = replace(SPEC, window_tokens=32, sink_tokens=16)


def _config(data_dir: Path, device: str, disk_pages: int = 256) -> StoreConfig:
    # Watermarks at 100%: only a put makes room, so exactly the pages it needs leave dram.
    dram = MemoryTierConfig(DRAM_PAGES * SPEC.page_bytes, region_share=1.0, high_watermark=1.0,
                            low_watermark=1.0)
    return small_config(data_dir, hbm_pages=0, dram_pages=DRAM_PAGES, disk_pages=disk_pages,
                        device=device, dram=dram, eviction_policy=EvictionPolicy.PREFIX_AWARE)


def _fill(store: PageStore, spec: PageSpec) -> tuple[int, list[bytes], list[bytes]]:
    ns = store.register(spec)
    chain, other = make_keys(ns, 10), make_keys(ns, 10, start_token=100_000)
    store.put(ns.ns_id, chain, make_pages(ns, 10))
    store.put(ns.ns_id, other, make_pages(ns, 10, seed=1))  # 20 pages in 16 slots: 4 must go
    return ns.ns_id, chain, other


def _in_dram(store: PageStore, ns_id: int, keys: list[bytes]) -> list[int]:
    region = store.inspect().regions[(ns_id, Tier.DRAM)]
    return [i for i, key in enumerate(keys) if key in region.pages]


def test_pages_outside_every_window_leave_dram_first_and_the_prefix_stays_whole(
        tmp_path: Path, device: str) -> None:
    with PageStore(_config(tmp_path / "data", device)) as store:
        ns_id, chain, other = _fill(store, WINDOWED)
        assert _in_dram(store, ns_id, chain) == [0, 5, 6, 7, 8, 9]  # 1-4 (the oldest) went down
        assert _in_dram(store, ns_id, other) == list(range(10))
        found = store.lookup(ns_id, chain)
        assert found.num_hits == 10
        assert found.tiers == (Tier.DRAM,) + (Tier.DISK,) * 4 + (Tier.DRAM,) * 5
        assert store.stats().evictions_with_children == 0  # by design: not counted
        # A continuation leases only its window, all in dram: nothing had to come back up.
        lease = store.acquire(ns_id, chain, Tier.DRAM)
        assert lease.keys == (chain[0], chain[8], chain[9])
        store.release(lease.lease_id)


def test_without_a_window_the_same_puts_shrink_chains_from_their_ends(tmp_path: Path, device: str) -> None:
    with PageStore(_config(tmp_path / "data", device)) as store:
        ns_id, chain, _ = _fill(store, SPEC)
        assert _in_dram(store, ns_id, chain) == [0, 1, 2, 3, 4, 5]
        assert store.lookup(ns_id, chain).num_hits == 10


def test_without_a_disk_tier_pages_outside_windows_are_not_dropped_first(tmp_path: Path, device: str) -> None:
    with PageStore(_config(tmp_path / "data", device, disk_pages=0)) as store:
        ns_id, chain, _ = _fill(store, WINDOWED)
        assert _in_dram(store, ns_id, chain) == [0, 1, 2, 3, 4, 5]  # a drop: from the chain's end
        assert store.lookup(ns_id, chain).num_hits == 6
