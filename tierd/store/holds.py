"""Holds: pages pinned in a target tier for one acquirer as they arrive.

Pages moved up for one request never evict each other: each is pinned the moment it lands. The
manager owns holds and changes them under its lock only; once ``closed`` (the lease is made or
the wait gave up) late arrivals are no longer pinned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tierd.index.residency import MemoryResidency
from tierd.keys import PageKey
from tierd.store.namespace_book import NamespaceBook
from tierd.tier import Tier


@dataclass
class Hold:
    ns_id: int
    tier: Tier
    pins: dict[PageKey, int] = field(default_factory=dict)  # key -> pinned slot in ``tier``
    closed: bool = False

    def pin_present(self, res: MemoryResidency, keys: Sequence[PageKey]) -> list[PageKey]:
        """Pin the keys already in ``res`` (the hold's tier); the others, in order, must move."""
        todo: list[PageKey] = []
        for key in keys:
            slot = res.slots.get(key)
            if slot is None:
                todo.append(key)
            elif key not in self.pins:
                res.pin(slot)
                self.pins[key] = slot
        return todo

    def arrived(self, res: MemoryResidency, key: PageKey) -> bool:
        """Pin ``key``, just moved into ``res``; False when it is gone again or the hold closed."""
        slot = res.slots.get(key)
        if slot is None or self.closed:
            return False
        if key not in self.pins:
            res.pin(slot)
            self.pins[key] = slot
        return True

    def release(self, book: NamespaceBook, keep: set[PageKey] | None = None) -> None:
        """Close the hold and unpin every page it holds except ``keep`` (handed to a lease)."""
        self.closed = True
        for key, slot in self.pins.items():
            if keep is None or key not in keep:
                book.unpin(self.tier, slot)
        self.pins.clear()
