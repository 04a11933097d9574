"""Free-slot bookkeeping of one region.

A region has ``num_slots`` page-sized slots numbered ``0 .. num_slots - 1``; this module only
knows which of them are handed out. Which page a slot holds is the page index's business.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

from tierd.errors import InvalidArgument

_FREE = 0
_ALLOCATED = 1


def _as_index(value: object, what: str) -> int:
    """``value`` as a Python int (numpy integers included), else ``InvalidArgument``."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgument(f"{what} must be an integer, got {type(value).__name__} "
                              f"{value!r}") from None


class SlotAllocator:
    """The free slots of one region of ``num_slots`` slots.

    ``alloc`` and ``free`` cost O(1) per slot: a stack of free slot ids plus one state byte per
    slot. A fresh allocator hands out the lowest ids first (so a half-empty region keeps its
    pages at the front); freed slots are reused last-in first-out.

    Not thread-safe: there is no lock inside. The owner (the page index) calls it with its own
    lock held, so that slot state and key-to-slot bindings change together.
    """

    def __init__(self, num_slots: int) -> None:
        num_slots = _as_index(num_slots, "num_slots")
        if num_slots < 0:
            raise InvalidArgument(f"num_slots must be 0 or more, got {num_slots}")
        self._num_slots = num_slots
        # The top of the stack is the end of the list: descending order makes slot 0 come first.
        self._free_stack: list[int] = list(range(num_slots - 1, -1, -1))
        self._states = bytearray(num_slots)

    @property
    def num_slots(self) -> int:
        """Slots of the region, free or not."""
        return self._num_slots

    @property
    def num_free(self) -> int:
        return len(self._free_stack)

    @property
    def num_used(self) -> int:
        return self._num_slots - len(self._free_stack)

    def is_allocated(self, slot: int) -> bool:
        """Whether ``slot`` is handed out; ``InvalidArgument`` if it is not a slot of the region."""
        return self._states[self._check_slot(slot)] == _ALLOCATED

    def alloc(self, num_pages: int) -> list[int] | None:
        """``num_pages`` distinct free slots, now allocated; ``None`` (and no change) if fewer are free.

        ``alloc(0)`` returns ``[]``. The slots come lowest-first on a fresh allocator.
        """
        num_pages = _as_index(num_pages, "num_pages")
        if num_pages < 0:
            raise InvalidArgument(f"num_pages must be 0 or more, got {num_pages}")
        if num_pages > len(self._free_stack):
            return None
        if num_pages == 0:
            return []
        cut = len(self._free_stack) - num_pages
        slots = self._free_stack[cut:]
        del self._free_stack[cut:]
        slots.reverse()  # pop order: the top of the stack first
        states = self._states
        for slot in slots:
            states[slot] = _ALLOCATED
        return slots

    def free(self, slots: Iterable[int]) -> None:
        """Return ``slots`` to the free pool, all or none.

        Raises ``InvalidArgument`` naming the first slot that is out of range, not allocated, or
        given twice in the batch; then no slot of the batch is freed.
        """
        batch = [self._check_slot(slot) for slot in slots]
        states = self._states
        seen: set[int] = set()
        for slot in batch:
            if states[slot] != _ALLOCATED:
                raise InvalidArgument(f"cannot free slot {slot}: it is not allocated (double free "
                                      f"or a slot never handed out); nothing was freed")
            if slot in seen:
                raise InvalidArgument(f"cannot free slot {slot}: it appears twice in the batch; "
                                      f"nothing was freed")
            seen.add(slot)
        for slot in batch:
            states[slot] = _FREE
        # Reversed so that an alloc of the same size right after gets the batch back in its order.
        batch.reverse()
        self._free_stack.extend(batch)

    def _check_slot(self, slot: object) -> int:
        index = _as_index(slot, "a slot id")
        if not 0 <= index < self._num_slots:
            valid = f"0..{self._num_slots - 1}" if self._num_slots else "none"
            raise InvalidArgument(f"slot {index} is out of range: this region has {self._num_slots} "
                                  f"slots (valid ids: {valid})")
        return index

    def __repr__(self) -> str:
        return f"SlotAllocator(num_slots={self._num_slots}, num_used={self.num_used})"
