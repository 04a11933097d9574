"""SlotAllocator: no slot handed out twice, all-or-nothing alloc, bad frees change nothing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tierd.errors import InvalidArgument
from tierd.index.slots import SlotAllocator


class SlotMachine(RuleBasedStateMachine):
    """Random alloc/free sequences against a model: the set of slots the caller holds."""

    def __init__(self) -> None:
        super().__init__()
        self.slots = SlotAllocator(0)
        self.held: set[int] = set()

    @initialize(num_slots=st.integers(min_value=0, max_value=40))
    def start(self, num_slots: int) -> None:
        self.slots = SlotAllocator(num_slots)
        self.held = set()

    def _snapshot(self) -> tuple[int, int, list[bool]]:
        n = self.slots.num_slots
        return (self.slots.num_free, self.slots.num_used,
                [self.slots.is_allocated(i) for i in range(n)])

    @rule(data=st.data())
    def alloc(self, data: st.DataObject) -> None:
        num_pages = data.draw(st.integers(min_value=0, max_value=self.slots.num_slots + 3))
        free_before = self.slots.num_slots - len(self.held)
        before = self._snapshot()
        got = self.slots.alloc(num_pages)
        if num_pages > free_before:
            assert got is None
            assert self._snapshot() == before
            return
        assert got is not None
        assert len(got) == num_pages
        assert len(set(got)) == num_pages, f"one alloc returned a slot twice: {got}"
        assert all(0 <= s < self.slots.num_slots for s in got)
        assert not self.held & set(got), f"slots {self.held & set(got)} were handed out twice"
        self.held |= set(got)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def free_some(self, data: st.DataObject) -> None:
        batch = data.draw(st.lists(st.sampled_from(sorted(self.held)), unique=True, min_size=1))
        self.slots.free(batch)
        self.held -= set(batch)

    @rule(data=st.data())
    def bad_free_changes_nothing(self, data: st.DataObject) -> None:
        n = self.slots.num_slots
        good = data.draw(st.lists(st.sampled_from(sorted(self.held)), unique=True)
                         if self.held else st.just([]))
        bad_choices = [st.integers(min_value=n, max_value=n + 100), st.integers(max_value=-1)]
        not_held = sorted(set(range(n)) - self.held)
        if not_held:
            bad_choices.append(st.sampled_from(not_held))
        if good:
            bad_choices.append(st.sampled_from(good))  # the same slot twice in one batch
        bad = data.draw(st.one_of(*bad_choices))
        position = data.draw(st.integers(min_value=0, max_value=len(good)))
        batch = good[:position] + [bad] + good[position:]
        before = self._snapshot()
        with pytest.raises(InvalidArgument):
            self.slots.free(batch)
        assert self._snapshot() == before

    @invariant()
    def counts_add_up(self) -> None:
        assert self.slots.num_free + self.slots.num_used == self.slots.num_slots
        assert self.slots.num_used == len(self.held)

    @invariant()
    def states_match_model(self) -> None:
        for slot in range(self.slots.num_slots):
            assert self.slots.is_allocated(slot) == (slot in self.held)


TestSlotMachine = SlotMachine.TestCase
TestSlotMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_fresh_allocator_hands_out_lowest_slots_first() -> None:
    slots = SlotAllocator(8)
    assert slots.alloc(3) == [0, 1, 2]
    assert slots.alloc(2) == [3, 4]
    slots.free([1, 3])
    again = slots.alloc(2)
    assert again is not None and sorted(again) == [1, 3]


@given(num_slots=st.integers(min_value=0, max_value=64), data=st.data())
def test_alloc_is_all_or_nothing(num_slots: int, data: st.DataObject) -> None:
    slots = SlotAllocator(num_slots)
    first = data.draw(st.integers(min_value=0, max_value=num_slots))
    assert slots.alloc(first) is not None
    too_many = data.draw(st.integers(min_value=num_slots - first + 1, max_value=num_slots + 10))
    assert slots.alloc(too_many) is None
    assert slots.num_free == num_slots - first
    rest = slots.alloc(num_slots - first)
    assert rest is not None and slots.num_free == 0


def test_free_messages_name_the_slot_and_the_problem() -> None:
    slots = SlotAllocator(4)
    held = slots.alloc(2)
    assert held == [0, 1]
    with pytest.raises(InvalidArgument, match=r"slot 7 is out of range.*4 slots.*0\.\.3"):
        slots.free([0, 7])
    with pytest.raises(InvalidArgument, match="slot 3: it is not allocated"):
        slots.free([0, 3])
    with pytest.raises(InvalidArgument, match="slot 1: it appears twice"):
        slots.free([1, 0, 1])
    assert slots.is_allocated(0) and slots.is_allocated(1)
    assert slots.num_used == 2


def test_numpy_integers_are_accepted_and_bad_types_rejected() -> None:
    slots = SlotAllocator(4)
    got = slots.alloc(np.int64(2))
    assert got == [0, 1]
    slots.free(np.array(got, dtype=np.int32))
    assert slots.num_free == 4
    for bad in (True, 1.0, "1"):
        with pytest.raises(InvalidArgument, match="must be an integer"):
            slots.alloc(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="must be an integer"):
            slots.free([bad])  # type: ignore[list-item]


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="num_slots must be 0 or more, got -1"):
        SlotAllocator(-1)
    with pytest.raises(InvalidArgument, match="num_pages must be 0 or more, got -2"):
        SlotAllocator(3).alloc(-2)
    with pytest.raises(InvalidArgument, match="out of range"):
        SlotAllocator(3).is_allocated(3)
