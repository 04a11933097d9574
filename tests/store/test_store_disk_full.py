"""The page store while its disk is full: pages stay served from memory, flush says the disk
failed (not that a deadline passed) and how many pages are in memory only, writes resume once
space is back, and close reports the pages it could not write."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from disk_full import small_tmpfs
from store_helpers import SPEC, make_keys, make_pages, small_config

from tierd.config import WritePolicy
from tierd.errors import DiskWriteFailed, ResourceExhausted
from tierd.store import PageStore
from tierd.tier import Tier
from tierd.tiers.write_failures import NO_SPACE_TEXT

FS_BYTES = 16 << 20
# Long enough that a flush which waited for it instead of reporting the failure would hang.
FLUSH_TIMEOUT_S = 600.0


def test_a_full_disk_keeps_pages_in_memory_and_flush_reports_it(tmp_path: Path, device: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    with small_tmpfs(tmp_path / "fs", FS_BYTES) as fs:
        cfg = small_config(fs.root / "data", device=device, write_policy=WritePolicy.WRITE_THROUGH)
        store = PageStore(cfg)
        store.open()
        ns = store.register(SPEC)
        keys, pages = make_keys(ns, 13), make_pages(ns, 13)
        assert store.wait_durable(store.put(ns.ns_id, keys[:4], pages[:4]).durable_ticket, 60)

        fs.fill()
        result = store.put(ns.ns_id, keys[4:10], pages[4:10])
        assert result.stored == 6 and not store.wait_durable(result.durable_ticket, 60)
        assert [bytes(p) for p in store.get(ns.ns_id, keys[:10])] == pages[:10]
        with pytest.raises(DiskWriteFailed, match="6 page\\(s\\) are in memory only") as failed:
            store.flush(FLUSH_TIMEOUT_S)
        assert NO_SPACE_TEXT in str(failed.value)
        # dram (16 slots) holds 6 pages it cannot drop: a put needing 12 slots says why it fails.
        with pytest.raises(ResourceExhausted, match="the disk is refusing writes"):
            store.put(ns.ns_id, make_keys(ns, 12, start_token=1 << 20), make_pages(ns, 12, seed=9))
        assert [bytes(p) for p in store.get(ns.ns_id, keys[:10])] == pages[:10]
        stats = store.stats()
        assert stats.disk_write_failures >= 6 and NO_SPACE_TEXT in stats.disk_write_error
        assert stats.tiers[Tier.DISK].pages == 4

        fs.drain()  # space is back: the same pages are written, no restart
        assert store.flush(FLUSH_TIMEOUT_S) == 6
        stats = store.stats()
        assert stats.disk_write_error == "" and stats.tiers[Tier.DISK].pages == 10

        fs.fill()
        store.put(ns.ns_id, keys[10:], pages[10:])
        with caplog.at_level(logging.ERROR, logger="tierd.store"):
            assert store.close() == 3
        assert any("3 page(s) could not be written to disk and are lost" in r.getMessage()
                   for r in caplog.records)
        assert not [r for r in caplog.records if r.exc_info is not None]

        fs.drain()
        with PageStore(cfg) as again:
            ns = again.register(SPEC)
            assert again.lookup(ns.ns_id, keys).num_hits == 10
            assert [bytes(p) for p in again.get(ns.ns_id, keys)] == pages[:10]
            assert again.close() == 0
