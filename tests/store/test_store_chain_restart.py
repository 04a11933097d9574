"""Chains on disk survive a restart: the disk tier keeps each page's parent, so under
prefix_aware a chain found on disk at open is still evicted from its end under disk pressure."""

from __future__ import annotations

from pathlib import Path

from store_helpers import SPEC, make_keys, make_pages, small_config

from tierd.config import EvictionPolicy, StoreConfig, WritePolicy
from tierd.store import PageStore

CHAIN_PAGES = 8
DISK_PAGES = 12   # the chain and a few more: the pages put after the restart push it out
MAX_EXTRA_PUTS = 3 * DISK_PAGES
FLUSH_TIMEOUT_S = 10.0


def _config(data_dir: Path, device: str, policy: EvictionPolicy) -> StoreConfig:
    return small_config(data_dir, disk_pages=DISK_PAGES, device=device, eviction_policy=policy,
                        write_policy=WritePolicy.WRITE_THROUGH)


def _chain_left_on_disk_after_pressure(tmp_path: Path, device: str,
                                       policy: EvictionPolicy) -> list[bool]:
    """Put a chain, restart, then put unrelated pages one at a time until the disk drops a page
    of the chain; which pages of the chain are still on disk then."""
    config = _config(tmp_path / "data", device, policy)
    with PageStore(config) as store:
        ns = store.register(SPEC)
        chain = make_keys(ns, CHAIN_PAGES)
        store.put(ns.ns_id, chain, make_pages(ns, CHAIN_PAGES))
    with PageStore(config) as store:
        ns = store.register(SPEC)
        assert store.inspect().disk_pages[ns.ns_id] == frozenset(chain)
        for i in range(MAX_EXTRA_PUTS):
            # Each one a chain of its own (its tokens start far from the others').
            store.put(ns.ns_id, make_keys(ns, 1, start_token=100_000 * (i + 1)),
                      make_pages(ns, 1, seed=i + 1))
            store.flush(FLUSH_TIMEOUT_S)
            on_disk = store.inspect().disk_pages[ns.ns_id]
            if not on_disk >= set(chain):
                return [key in on_disk for key in chain]
    raise AssertionError("the disk never dropped a page of the chain")


def test_a_chain_reopened_from_disk_is_evicted_from_its_end(tmp_path: Path, device: str) -> None:
    left = _chain_left_on_disk_after_pressure(tmp_path, device, EvictionPolicy.PREFIX_AWARE)
    kept = left.index(False)
    assert 0 < kept < CHAIN_PAGES and left == [True] * kept + [False] * (CHAIN_PAGES - kept)
