"""Read-only views of the manager's bookkeeping: tier statistics, regions above their watermarks and
a copy of the whole index.

Functions over the objects they read; the manager calls them with its lock held.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from tierd.config import StoreConfig
from tierd.index.leases import LeaseRecord
from tierd.keys import PageKey
from tierd.store.counters import Counters
from tierd.store.disk_book import DiskBook
from tierd.store.namespace_book import NamespaceBook
from tierd.store.types import IndexSnapshot, RegionSnapshot
from tierd.tier import LOCAL_TIERS, MEMORY_TIERS, Tier
from tierd.tiers.page_format import split_disk_key
from tierd.values import LeaseKind, TierStats


def tier_stats(books: Sequence[NamespaceBook], disk: DiskBook, counters: Counters,
               capacity_bytes: Callable[[Tier], int], disk_queue_depth: int) -> dict[Tier, TierStats]:
    out: dict[Tier, TierStats] = {}
    for tier in LOCAL_TIERS:
        c = counters[tier]
        if tier is Tier.DISK:
            used, pages, queue = disk.residency.used_bytes, disk.residency.num_pages, disk_queue_depth
            evictions = disk.evictions
        else:
            regions = [book for book in books if tier in book.mem]
            used = sum(book.mem[tier].used_slots * book.page_bytes for book in regions)
            pages = sum(book.mem[tier].num_pages for book in regions)
            queue = sum(len(book.mem[tier].pending) for book in regions)
            evictions = c.evictions
        out[tier] = TierStats(capacity_bytes(tier), used, pages, c.hits, c.misses, evictions,
                              c.bytes_in, c.bytes_out, queue)
    return out


def snapshot(books: Sequence[NamespaceBook], disk: DiskBook, leases: Sequence[LeaseRecord],
             open_plans: int) -> IndexSnapshot:
    fill: dict[tuple[int, Tier], set[int]] = {}
    for record in leases:
        if record.kind is LeaseKind.FILL:
            fill.setdefault((record.ns_id, record.tier), set()).update(record.open_slots)
    regions: dict[tuple[int, Tier], RegionSnapshot] = {}
    used: dict[Tier, int] = dict.fromkeys(MEMORY_TIERS, 0)
    for book in books:
        for tier, res in book.mem.items():
            regions[(book.ns_id, tier)] = RegionSnapshot(
                res.num_slots, res.used_slots, dict(res.slots), dict(res.pending), dict(res.pins),
                frozenset(fill.get((book.ns_id, tier), ())), frozenset(book.orphans.get(tier, ())))
            used[tier] += res.used_slots * book.page_bytes
    used[Tier.DISK] = disk.residency.used_bytes
    return IndexSnapshot(regions, _by_namespace(disk.residency.pages), _by_namespace(disk.residency.pending),
                         disk.residency.used_bytes, disk.budget_bytes, used,
                         tuple(record.snapshot() for record in leases), open_plans)


def _by_namespace(dkeys: dict[bytes, int]) -> dict[int, frozenset[PageKey]]:
    out: dict[int, set[PageKey]] = {}
    for dkey in dkeys:
        ns_id, key = split_disk_key(dkey)
        out.setdefault(ns_id, set()).add(key)
    return {ns_id: frozenset(keys) for ns_id, keys in out.items()}


def watermark_excess(books: Sequence[NamespaceBook], config: StoreConfig) -> list[tuple[int, Tier, int]]:
    """``(ns_id, tier, pages)`` for every region above its high watermark: the pages to demote to
    bring it down to its low watermark."""
    out = []
    for book in books:
        for tier, res in book.mem.items():
            cfg = config.memory_tier(tier)
            if res.used_slots > cfg.high_watermark * res.num_slots:
                out.append((book.ns_id, tier, res.used_slots - math.floor(cfg.low_watermark * res.num_slots)))
    return out
