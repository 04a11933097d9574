"""Leases over a namespace's slots: fill leases made, filled and bound; read leases made from
holds; and leases ended.

Functions over the lease table and the books a lease touches; call them with the manager's lock
held. The manager looks the lease and its book up; these only check, pin and bind.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from tierd.errors import FailedPrecondition, InvalidArgument, NotFound
from tierd.index.leases import LeaseRecord, LeaseTable
from tierd.keys import PageKey
from tierd.store import lookups, windows
from tierd.store.completion import place
from tierd.store.counters import Counters
from tierd.store.disk_book import DiskBook
from tierd.store.holds import Hold
from tierd.store.namespace_book import NamespaceBook
from tierd.store.plans import Move, Place
from tierd.tier import Tier
from tierd.values import Lease, LeaseKind


def new_fill_lease(leases: LeaseTable, book: NamespaceBook, tier: Tier, num_pages: int,
                   ttl_s: float, owner: str | None) -> Lease | None:
    """A FILL lease of ``num_pages`` free slots of ``tier``; None when fewer are free."""
    slots = book.residency(tier).reserve(num_pages)
    if slots is None:
        return None
    record = leases.add(book.ns_id, tier, LeaseKind.FILL, (), tuple(slots),
                        time.monotonic() + ttl_s, owner)
    return record.snapshot()


def bind_fill(book: NamespaceBook, disk: DiskBook, counters: Counters, record: LeaseRecord,
              keys: Sequence[PageKey], slots: Sequence[int], ticket: int | None,
              parent: PageKey | None = None) -> tuple[int, list[Move]]:
    """Bind filled open slots of a FILL lease to ``keys`` (a chain after ``parent``); a key
    cached meanwhile keeps its page (the slot goes back). ``(bound, persists)``: the disk writes
    write_through wants."""
    if record.kind is not LeaseKind.FILL:
        raise FailedPrecondition(f"lease {record.lease_id} is a read lease; commit takes a lease "
                                 "from Allocate")
    bad = [s for s in slots if s not in record.open_slots]
    if bad or len(set(slots)) != len(slots):
        raise InvalidArgument(f"slots {bad or list(slots)} are not open slots of lease "
                              f"{record.lease_id} (open: {sorted(record.open_slots)}) or repeat")
    persists: list[Move] = []
    parents = [parent, *keys[:-1]]
    bound = sum(_bind(book, disk, counters, record, key, slot, ticket, persists, key_parent)
                for key, slot, key_parent in zip(keys, slots, parents))
    return bound, persists


def _bind(book: NamespaceBook, disk: DiskBook, counters: Counters, record: LeaseRecord,
          key: PageKey, slot: int, ticket: int | None, persists: list[Move],
          parent: PageKey | None) -> bool:
    record.open_slots.discard(slot)
    res = book.mem[record.tier]
    if not res.publish(key, slot, parent):
        book.orphan_or_free(record.tier, slot)
        found = lookups.fastest_tier(book, disk, key)
        lookups.skip_cached(book, disk, found, key, ticket, persists, parent)
        return False
    counters[record.tier].bytes_in += book.page_bytes
    disk.committed(book, record.tier, key, slot, ticket, persists)
    return True


def slot_moves(book: NamespaceBook, record: LeaseRecord, slots: Sequence[int] | None,
               write: bool) -> list[Move]:
    """The moves of a SLOTS plan between a lease's slots and callers' buffers, the slots pinned.

    ``write``: into open slots of a FILL lease (``slots``, each once); else out of every slot
    of a READ lease, in its order.
    """
    if write:
        wanted = list(slots or ())
        if record.kind is not LeaseKind.FILL or len(set(wanted)) != len(wanted) or any(
                s not in record.open_slots for s in wanted):
            raise InvalidArgument(f"slots {wanted} are not distinct open slots of fill lease "
                                  f"{record.lease_id} (open: {sorted(record.open_slots)})")
        moves = [Move(b"", None, Place(record.tier, s)) for s in wanted]
    else:
        if record.kind is not LeaseKind.READ:
            raise FailedPrecondition(f"lease {record.lease_id} is a fill lease: its slots hold "
                                     "what you wrote; read pages through a read lease")
        moves = [Move(k, Place(record.tier, s), None) for k, s in zip(record.keys, record.slots)]
    for move in moves:
        book.mem[record.tier].pin(place(move.dst if write else move.src).slot)
    return moves


def read_lease(leases: LeaseTable, book: NamespaceBook, counters: Counters, hold: Hold,
               keys: Sequence[PageKey], present: int, ttl_s: float, owner: str | None) -> Lease:
    """A READ lease over the longest prefix of ``keys`` whose pages to lease the hold pins: its
    leading keys, or in a windowed namespace the pages a continuation of it attends to (then
    the lease says which). ``book`` is the hold's namespace's; the hold's other pins go."""
    window, leased = windows.servable_window(book.ns.spec, keys, present, hold.pins)
    slots = [hold.pins[key] for key in leased]
    hold.release(book, keep=set(leased))
    res = book.mem[hold.tier]
    for key in leased:
        res.touch(key)
    counters[hold.tier].hits += len(leased)
    counters[hold.tier].misses += int(window.prefix_pages < len(keys))
    record = leases.add(hold.ns_id, hold.tier, LeaseKind.READ, tuple(leased), tuple(slots),
                        time.monotonic() + ttl_s, owner,
                        window if book.ns.spec.windowed else None)
    return record.snapshot()


def end_lease(book: NamespaceBook, record: LeaseRecord) -> None:
    """Unpin a READ lease's pages, or give back a FILL lease's unfilled slots (the record was
    popped from the table already)."""
    if record.kind is LeaseKind.READ:
        for slot in record.slots:
            book.unpin(record.tier, slot)
    else:
        for slot in record.open_slots:
            book.orphan_or_free(record.tier, slot)
        record.open_slots.clear()


def end_leases(leases: LeaseTable, books: Mapping[int, NamespaceBook],
               lease_ids: Sequence[int]) -> int:
    """End each lease of ``lease_ids`` still live; how many were (unknown ones are skipped:
    expired or released meanwhile, what the caller wanted anyway)."""
    ended = 0
    for lease_id in lease_ids:
        try:
            record = leases.pop(lease_id)
        except NotFound:
            continue
        end_lease(books[record.ns_id], record)
        ended += 1
    return ended
