"""Where a namespace's pages are: the fastest tier holding a key, cached prefixes, touches.

Functions over one namespace's book and the disk book; call them with the manager's lock held.
"""

from __future__ import annotations

from collections.abc import Sequence

from tierd.keys import PageKey
from tierd.store.disk_book import DiskBook
from tierd.store.namespace_book import NamespaceBook
from tierd.store.plans import Move
from tierd.tier import MEMORY_TIERS, Tier


def fastest_tier(book: NamespaceBook, disk: DiskBook, key: PageKey) -> Tier | None:
    """The fastest tier holding ``key`` (published), or ``None``; touches nothing."""
    tier = book.memory_tier_of(key)
    if tier is None and book.prefix + key in disk.residency.pages:
        return Tier.DISK
    return tier


def touch(book: NamespaceBook, disk: DiskBook, tier: Tier, key: PageKey) -> None:
    """Tell ``tier``'s eviction order that ``key`` was used."""
    if tier is Tier.DISK:
        disk.residency.touch(book.prefix + key)
    else:
        book.mem[tier].touch(key)


def cached_prefix(book: NamespaceBook, disk: DiskBook, keys: Sequence[PageKey]) -> int:
    """How many leading ``keys`` are cached in some tier (nothing touched or counted)."""
    present = 0
    for key in keys:
        if fastest_tier(book, disk, key) is None:
            break
        present += 1
    return present


def touch_prefix(book: NamespaceBook, disk: DiskBook, keys: Sequence[PageKey]) -> list[Tier]:
    """The fastest tier of each key of the cached prefix of ``keys``, each hit touched.

    The per-request hot path, so the loop works on the residency dicts directly.
    """
    tiers: list[Tier] = []
    memory = [(tier, res.slots, res.order.touch) for tier in MEMORY_TIERS
              if (res := book.mem.get(tier)) is not None]
    on_disk, touch_disk, prefix = disk.residency.pages, disk.residency.touch, book.prefix
    for key in keys:
        for tier, slots, touch_mem in memory:
            if key in slots:
                touch_mem(key)
                tiers.append(tier)
                break
        else:
            dkey = prefix + key
            if dkey not in on_disk:
                break
            touch_disk(dkey)
            tiers.append(Tier.DISK)
    return tiers


def skip_cached(book: NamespaceBook, disk: DiskBook, found: Tier | None, key: PageKey,
                ticket: int | None, persists: list[Move], parent: PageKey | None = None) -> None:
    """A page a store finds cached (``found``) or being put (``None``): touch it, learn its
    ``parent`` if its chain did not know it; under write_through make sure it is on its way to
    disk (an earlier write may have failed) and that ``ticket`` waits for it."""
    if found is None:
        disk.watch(book, key, ticket)
        return
    book.chains.name_parent(key, parent)
    touch(book, disk, found, key)
    if found is not Tier.DISK:
        disk.committed(book, found, key, book.mem[found].slots[key], ticket, persists)
