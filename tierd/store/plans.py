"""Plans: what the manager decided to move, handed to the transfer engine and completed once.

A plan names, for each page, where its bytes come from and where they go (a slot of a tier, the
disk, or a caller's buffer). While a plan is open its sources are pinned (or marked as being read
from disk) and its destinations are pending, so none of them can be chosen as a victim; the
manager's ``complete(plan, outcomes)`` publishes what arrived and rolls back what did not.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tierd.errors import TierdError
from tierd.keys import PageKey
from tierd.store.transfer.base import Lane
from tierd.tier import Tier


class PlanError(TierdError):
    """A plan completed twice, or with the wrong number of outcomes: a bug in the caller."""

    status_name = "INTERNAL"


class PlanKind(enum.Enum):
    STORE = "store"      # caller buffers -> pending memory slots (put)
    READ = "read"        # pinned pages -> caller buffers (get, peek)
    PROMOTE = "promote"  # a copy to another tier that keeps the source (acquire, prefetch)
    DEMOTE = "demote"    # hbm -> dram; the source is dropped once the copy landed (eviction)
    PERSIST = "persist"  # memory -> disk (write_through, flush; with ``evict``: dram eviction)
    SLOTS = "slots"      # a lease's slots <-> caller buffers (no bookkeeping changes)

    @property
    def lane(self) -> Lane:
        return _LANES[self]


_LANES = {PlanKind.STORE: Lane.BYTES, PlanKind.READ: Lane.BYTES, PlanKind.SLOTS: Lane.BYTES,
          PlanKind.PROMOTE: Lane.PROMOTE, PlanKind.DEMOTE: Lane.DEMOTE,
          PlanKind.PERSIST: Lane.DEMOTE}

DISK_SLOT = -1


@dataclass(frozen=True)
class Place:
    """A slot of a memory tier, or the disk (``slot`` is ``DISK_SLOT``)."""

    tier: Tier
    slot: int = DISK_SLOT

    @property
    def on_disk(self) -> bool:
        return self.tier is Tier.DISK


ON_DISK = Place(Tier.DISK)


@dataclass(frozen=True)
class Move:
    """One page: from ``src`` to ``dst`` (``None``: a caller's buffer). ``seq`` orders disk writes;
    ``parent`` (STORE, and PERSIST: written with the page) is the page before it in its chain."""

    key: PageKey
    src: Place | None
    dst: Place | None
    seq: int = 0
    parent: PageKey | None = None


@dataclass(frozen=True)
class Plan:
    """Moves of pages of one namespace, decided together and completed together.

    ``evict`` (PERSIST only): drop each source page once it is on disk. ``durability_ticket``
    (STORE only): pages published by the plan are watched by it under write_through.
    """

    plan_id: int
    kind: PlanKind
    ns_id: int
    moves: tuple[Move, ...]
    evict: bool = False
    durability_ticket: int | None = None

    @property
    def lane(self) -> Lane:
        return self.kind.lane

    def __len__(self) -> int:
        return len(self.moves)
