"""Applying a plan's outcomes to the bookkeeping: publish what arrived, roll back what did not.

One function per plan kind, over the objects it changes (the namespace's book, the disk book,
the counters). The manager calls them with its lock held, after checking the plan is open.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tierd.store.counters import Counters
from tierd.store.disk_book import DiskBook
from tierd.store.namespace_book import NamespaceBook
from tierd.store.plans import Move, Place, Plan, PlanError, PlanKind
from tierd.tier import Tier

# (dkey, ok) of every disk write that settled: the manager tells the durability tracker after
# releasing its lock.
Durable = list[tuple[bytes, bool]]
Completer = Callable[[NamespaceBook, DiskBook, Counters, Plan, Sequence[bool], Durable], list[Move]]


def place(where: Place | None) -> Place:
    if where is None:
        raise PlanError("a move has no place where one was expected")
    return where


def drop(book: NamespaceBook, counters: Counters, tier: Tier, key: bytes, slot: int) -> int:
    """Evict ``key`` from ``slot`` if it is still there and unpinned; 1 when it went."""
    # A page outside every window goes down with its children left in place, by design.
    had_children = book.chains.children_in(key, tier) > 0 and not book.chains.outside_windows(key)
    if book.mem[tier].drop_unpinned(key, slot):
        counters[tier].evictions += 1
        counters.evictions_with_children += had_children
        return 1
    return 0


def _release_source(book: NamespaceBook, disk: DiskBook, key: bytes, src: Place, ok: bool) -> None:
    if src.on_disk:
        disk.end_read(book.dkey(key), ok)
    else:
        book.unpin(src.tier, src.slot)


def _store(book: NamespaceBook, disk: DiskBook, counters: Counters, plan: Plan,
           outcomes: Sequence[bool], durable: Durable) -> list[Move]:
    """Publish stored pages; under write_through their disk writes are the moves returned."""
    persists: list[Move] = []
    for move, ok in zip(plan.moves, outcomes):
        dst = place(move.dst)
        published = book.mem[dst.tier].complete_store(move.key, ok, move.parent)
        if published is not None:
            counters[dst.tier].bytes_in += book.page_bytes
            disk.committed(book, dst.tier, move.key, published, plan.durability_ticket, persists)
    return persists


def _read(book: NamespaceBook, disk: DiskBook, counters: Counters, plan: Plan,
          outcomes: Sequence[bool], durable: Durable) -> list[Move]:
    copied = True  # callers use the prefix that arrived: count bytes out for it only
    for move, ok in zip(plan.moves, outcomes):
        src = place(move.src)
        copied = copied and ok
        if copied:
            counters[src.tier].bytes_out += book.page_bytes
        _release_source(book, disk, move.key, src, ok)
    return []


def _promote(book: NamespaceBook, disk: DiskBook, counters: Counters, plan: Plan,
             outcomes: Sequence[bool], durable: Durable) -> list[Move]:
    for move, ok in zip(plan.moves, outcomes):
        src, dst = place(move.src), place(move.dst)
        _release_source(book, disk, move.key, src, ok)
        book.mem[dst.tier].complete_store(move.key, ok)
        if ok:
            counters.moved(src.tier, dst.tier, book.page_bytes)
    return []


def _demote(book: NamespaceBook, disk: DiskBook, counters: Counters, plan: Plan,
            outcomes: Sequence[bool], durable: Durable) -> list[Move]:
    for move, ok in zip(plan.moves, outcomes):
        src, dst = place(move.src), place(move.dst)
        book.mem[dst.tier].complete_store(move.key, ok)
        book.unpin(src.tier, src.slot)
        if ok:
            counters.moved(src.tier, dst.tier, book.page_bytes)
            drop(book, counters, src.tier, move.key, src.slot)
    return []


def _persist(book: NamespaceBook, disk: DiskBook, counters: Counters, plan: Plan,
             outcomes: Sequence[bool], durable: Durable) -> list[Move]:
    for move, ok in zip(plan.moves, outcomes):
        src, dkey = place(move.src), book.dkey(move.key)
        book.unpin(src.tier, src.slot)
        disk.complete_write(dkey, ok)
        durable.append((dkey, ok))
        if ok:
            counters.moved(src.tier, Tier.DISK, book.page_bytes)
            if plan.evict:
                drop(book, counters, src.tier, move.key, src.slot)
    return []


def _slots(book: NamespaceBook, disk: DiskBook, counters: Counters, plan: Plan,
           outcomes: Sequence[bool], durable: Durable) -> list[Move]:
    for move in plan.moves:
        where = place(move.src if move.src is not None else move.dst)
        book.unpin(where.tier, where.slot)
    return []


COMPLETERS: dict[PlanKind, Completer] = {
    PlanKind.STORE: _store, PlanKind.READ: _read, PlanKind.PROMOTE: _promote,
    PlanKind.DEMOTE: _demote, PlanKind.PERSIST: _persist, PlanKind.SLOTS: _slots,
}
