"""Residency bookkeeping: which page sits in which slot of which tier, and in what eviction order.

Pure bookkeeping: nothing here touches page bytes. Primitives, per memory tier of a namespace:

- ``reserve(n)`` slots for pages about to be written, ``begin_store`` marks them pending (invisible to
  lookups, never victims), ``complete_store(success)`` publishes them or gives the slots back;
- ``pin``/``unpin`` a slot (leases, copies in flight): pinned pages are never victims, and a pinned
  slot is never freed (``remove`` of a pinned page leaves freeing it to the last unpin's owner);
- ``victims(n)`` the first unpinned pages of the eviction order, ``touch`` marks a page used.

The eviction order is a policy object (``tierd.policies``). Every page published or removed is
told to the namespace's chains (``tierd.index.chains``), which the orders and the manager read.
Not thread-safe: the manager calls everything here with its lock held.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from typing import Protocol

from tierd.config import EvictionPolicy
from tierd.errors import InvalidArgument
from tierd.index.chains import ChainIndex, DiskChains, TierChains
from tierd.index.slots import SlotAllocator
from tierd.keys import PageKey
from tierd.policies import EvictionOrder, make_order
from tierd.tier import Tier


class PageDirectory(Protocol):
    """Told of every published page of a region (the shared page index, ``tierd.page_index``)."""

    def published(self, key: PageKey, slot: int) -> None: ...

    def unpublished(self, key: PageKey) -> None:
        """Called before the page's slot can be freed (and so written again)."""


class MemoryResidency:
    """One namespace's pages in one memory tier (``hbm`` or ``dram``).

    ``directory``, if given, hears of every page published and unpublished here; ``chains`` (the
    namespace's, else one of its own) of every page entering and leaving ``tier``; ``final``: a
    page leaving ``tier`` leaves the cache (dram without a disk tier).
    """

    def __init__(self, num_slots: int, policy: EvictionPolicy = EvictionPolicy.LRU,
                 directory: PageDirectory | None = None, chains: ChainIndex | None = None,
                 tier: Tier = Tier.DRAM, final: bool = False) -> None:
        self.allocator = SlotAllocator(num_slots)
        self.directory = directory
        self.chains = chains if chains is not None else ChainIndex()
        self.tier = tier
        self.slots: dict[PageKey, int] = {}      # published pages, first cached first
        self.order: EvictionOrder[PageKey] = make_order(policy, self.slots,
                                                        TierChains(self.chains, tier, final))
        self.pending: dict[PageKey, int] = {}    # being written: not visible, not evictable
        self.cancelled: set[PageKey] = set()     # pending pages deleted meanwhile: never published
        self.pins: dict[int, int] = {}           # slot -> pin count (leases, copies in flight)

    @property
    def num_slots(self) -> int:
        return self.allocator.num_slots

    @property
    def num_pages(self) -> int:
        return len(self.slots)

    @property
    def used_slots(self) -> int:
        return self.allocator.num_used

    @property
    def free_slots(self) -> int:
        return self.allocator.num_free

    def slot_of(self, key: PageKey) -> int | None:
        """The slot of a published page, or ``None``."""
        return self.slots.get(key)

    def touch(self, key: PageKey) -> None:
        self.order.touch(key)

    def reserve(self, num_pages: int) -> list[int] | None:
        """Free slots for ``num_pages`` pages, or ``None`` (nothing changes) when too few are free."""
        return self.allocator.alloc(num_pages)

    def unreserve(self, slots: Iterable[int]) -> None:
        self.allocator.free(list(slots))

    def begin_store(self, key: PageKey, slot: int) -> None:
        self.pending[key] = slot

    def complete_store(self, key: PageKey, success: bool,
                       parent: PageKey | None = None) -> int | None:
        """Publish a pending page (``success``) or give its slot back. Returns the published slot.
        ``parent``: the page before it, as its put named it.

        When the key was published meanwhile by someone else, or deleted, the slot is freed.
        """
        slot = self.pending.pop(key)
        cancelled = key in self.cancelled
        self.cancelled.discard(key)
        if success and not cancelled and key not in self.slots:
            self._published(key, slot, parent)
            return slot
        self.allocator.free([slot])
        return None

    def cancel_pending(self, key: PageKey) -> bool:
        """A page being written was deleted: its store completes without publishing it."""
        if key in self.pending:
            self.cancelled.add(key)
            return True
        return False

    def publish(self, key: PageKey, slot: int, parent: PageKey | None = None) -> bool:
        """Bind an already reserved slot (a filled lease slot) to ``key``; False if ``key`` is cached."""
        if key in self.slots or key in self.pending:
            return False
        self._published(key, slot, parent)
        return True

    def _published(self, key: PageKey, slot: int, parent: PageKey | None) -> None:
        self.slots[key] = slot
        self.order.insert(key)
        self.chains.entered(key, self.tier, parent)
        if self.directory is not None:
            self.directory.published(key, slot)

    def pin(self, slot: int) -> None:
        self.pins[slot] = self.pins.get(slot, 0) + 1

    def unpin(self, slot: int) -> None:
        count = self.pins.get(slot, 0)
        if count <= 0:
            raise InvalidArgument(f"slot {slot} is not pinned")
        if count == 1:
            del self.pins[slot]
        else:
            self.pins[slot] = count - 1

    def is_pinned(self, slot: int) -> bool:
        return slot in self.pins

    def victims(self, num_pages: int, fallback: bool = True) -> list[tuple[PageKey, int]]:
        """Up to ``num_pages`` unpinned pages, first victims first (not removed: pin to claim);
        ``fallback``: see ``EvictionOrder.candidates``."""
        out: list[tuple[PageKey, int]] = []
        if num_pages <= 0:
            return out
        pins, slots = self.pins, self.slots
        for key in self.order.candidates(lambda key: slots[key] in pins, fallback):
            out.append((key, slots[key]))
            if len(out) == num_pages:
                break
        return out

    def remove(self, key: PageKey) -> int | None:
        """Drop a published page; its slot is freed unless pinned (then the caller frees it later)."""
        slot = self.slots.pop(key, None)
        if slot is None:
            return None
        self.order.remove(key)
        self.chains.left(key, self.tier)
        if self.directory is not None:
            self.directory.unpublished(key)
        if slot not in self.pins:
            self.allocator.free([slot])
        return slot

    def drop_unpinned(self, key: PageKey, slot: int) -> bool:
        """Remove ``key`` if it still sits in ``slot`` and nobody pins it; True when removed."""
        if self.slots.get(key) != slot or slot in self.pins:
            return False
        del self.slots[key]
        self.order.remove(key)
        self.chains.left(key, self.tier)
        if self.directory is not None:
            self.directory.unpublished(key)
        self.allocator.free([slot])
        return True


class DiskResidency:
    """Every namespace's pages on disk, keyed by the LMDB key, in eviction order.

    ``used_bytes`` counts stored pages plus writes in flight, so the budget is enforced before
    LMDB's map can fill. ``chains`` (the manager's, by namespace) hears of every page stored and
    removed.
    """

    def __init__(self, policy: EvictionPolicy = EvictionPolicy.LRU,
                 chains: DiskChains | None = None) -> None:
        self.pages: dict[bytes, int] = {}     # disk key -> stored bytes (header + payload)
        self.chains = chains if chains is not None else DiskChains({})
        self.order: EvictionOrder[bytes] = make_order(policy, self.pages, self.chains)
        self.pending: dict[bytes, int] = {}   # writes queued, not yet committed
        self.used_bytes = 0

    @property
    def num_pages(self) -> int:
        return len(self.pages)

    def __contains__(self, dkey: bytes) -> bool:
        return dkey in self.pages

    def touch(self, dkey: bytes) -> None:
        self.order.touch(dkey)

    def add(self, dkey: bytes, stored_bytes: int) -> None:
        """A page found on disk at start-up (oldest first) or committed without a pending write."""
        if dkey not in self.pages:
            self.pages[dkey] = stored_bytes
            self.order.insert(dkey)
            self.chains.entered(dkey)
            self.used_bytes += stored_bytes

    def begin_write(self, dkey: bytes, stored_bytes: int) -> bool:
        """Account a queued write; False when the page is already stored or queued."""
        if dkey in self.pages or dkey in self.pending:
            return False
        self.pending[dkey] = stored_bytes
        self.used_bytes += stored_bytes
        return True

    def complete_write(self, dkey: bytes, success: bool) -> None:
        stored_bytes = self.pending.pop(dkey)
        if success:
            self.pages[dkey] = stored_bytes
            self.order.insert(dkey)
            self.chains.entered(dkey)
        else:
            self.used_bytes -= stored_bytes

    def remove(self, dkey: bytes) -> bool:
        stored_bytes = self.pages.pop(dkey, None)
        if stored_bytes is None:
            return False
        self.order.remove(dkey)
        self.chains.left(dkey)
        self.used_bytes -= stored_bytes
        return True

    def victims(self, num_bytes: int, exclude: Container[bytes] = frozenset()) -> list[bytes]:
        """Stored pages, first victims first, whose sizes add up to at least ``num_bytes``."""
        out: list[bytes] = []
        freed = 0
        for dkey in self.order.candidates(lambda dkey: dkey in exclude):
            if freed >= num_bytes:
                break
            out.append(dkey)
            freed += self.pages[dkey]
        return out
