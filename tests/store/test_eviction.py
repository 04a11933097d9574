"""Eviction that races the maintenance thread: a put that needs every slot of a full region."""

from __future__ import annotations

import threading
from pathlib import Path

from store_helpers import SPEC, make_keys, make_pages, small_config

from tierd.store import PageStore
from tierd.tier import Tier

PUTS = 400


def test_put_of_a_whole_region_succeeds_while_maintenance_evicts_too(tmp_path: Path) -> None:
    # Both threads demote the same victims; the one that finds none left must still see the
    # slots the other freed (it once answered RESOURCE_EXHAUSTED over a region with 0 used slots).
    dram_pages = 16
    config = small_config(tmp_path, hbm_pages=0, dram_pages=dram_pages, disk_pages=4 * dram_pages)
    with PageStore(config) as store:
        ns = store.register(SPEC)
        pages = make_pages(ns, dram_pages)
        stop = threading.Event()

        def maintain() -> None:
            while not stop.is_set():
                store.run_maintenance()

        helper = threading.Thread(target=maintain)
        helper.start()
        try:
            for round_ in range(PUTS):
                keys = make_keys(ns, dram_pages, start_token=round_ * dram_pages * SPEC.page_tokens)
                assert store.put(ns.ns_id, keys, pages, tier=Tier.DRAM).stored == dram_pages
        finally:
            stop.set()
            helper.join()
