"""Index memory per page, measured with tracemalloc: everything the manager allocates to index
20k chained pages (residency, disk index, chains, eviction order), under both policies.

The 16-byte key objects themselves are made by the caller before the measurement (protobuf or
``check_keys`` make them in the daemon); the index holds them, once for all its tables: about
59 bytes each more.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from store_helpers import SPEC, small_config

from tierd.config import EvictionPolicy
from tierd.keys import chain_keys, namespace_fingerprint
from tierd.spec import Namespace
from tierd.store.manager import Manager
from tierd.tier import Tier

NUM_PAGES = 20_000
CHAIN_PAGES = 32  # pages per put: 625 chains
MAX_INDEX_BYTES_PER_PAGE = 256


def _index_bytes_per_page(policy: EvictionPolicy, on_disk_too: bool) -> float:
    ns = Namespace(1, "default", SPEC, namespace_fingerprint(SPEC, b"default"))
    config = small_config(Path("/nonexistent"), hbm_pages=4, dram_pages=NUM_PAGES,
                          disk_pages=2 * NUM_PAGES, eviction_policy=policy)
    manager = Manager(config)
    manager.add_namespace(ns)
    manager.add_region(ns.ns_id, Tier.DRAM, NUM_PAGES)
    tokens = np.arange(NUM_PAGES * SPEC.page_tokens, dtype=np.uint32)
    keys = chain_keys(ns.fingerprint, tokens, SPEC.page_tokens)
    stored_bytes = SPEC.page_bytes + 40  # one int, as the disk book's own
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for start in range(0, NUM_PAGES, CHAIN_PAGES):
            chain = keys[start:start + CHAIN_PAGES]
            plan, _skipped, needed, _persist = manager.plan_store(
                ns.ns_id, Tier.DRAM, chain, None, keys[start - 1] if start else None)
            assert plan is not None and needed == 0
            manager.complete(plan, [True] * len(plan))
            if on_disk_too:
                for seq, key in enumerate(chain, start + 1):
                    manager.load_disk_page(ns.ns_id, key, stored_bytes, seq)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert manager.inspect().regions[(ns.ns_id, Tier.DRAM)].used_slots == NUM_PAGES
    return used / NUM_PAGES


@pytest.mark.parametrize("on_disk_too", [False, True], ids=["dram", "dram+disk"])
@pytest.mark.parametrize("policy", list(EvictionPolicy))
def test_index_memory_per_page_stays_under_256_bytes(policy: EvictionPolicy, on_disk_too: bool) -> None:
    per_page = _index_bytes_per_page(policy, on_disk_too)
    print(f"{policy.value} {'dram+disk' if on_disk_too else 'dram'}: {per_page:.1f} B per page")
    assert per_page <= MAX_INDEX_BYTES_PER_PAGE
