"""Eviction orders: every policy honours the interface the residency tables rely on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierd.config import EvictionPolicy
from tierd.index.residency import MemoryResidency
from tierd.policies import make_order


@pytest.mark.parametrize("policy", list(EvictionPolicy))
def test_every_policy_orders_exactly_the_pages_held(policy: EvictionPolicy) -> None:
    entries: dict[bytes, int] = {}
    order = make_order(policy, entries)
    for i in range(5):
        entries[bytes([i])] = i
        order.insert(bytes([i]))
    del entries[bytes([2])]
    order.remove(bytes([2]))
    order.touch(bytes([9]))  # not held: ignored
    assert sorted(order.candidates()) == [bytes([i]) for i in (0, 1, 3, 4)]
    assert len(order) == 4 and bytes([3]) in order and bytes([2]) not in order


@given(ops=st.lists(st.tuples(st.sampled_from(["put", "touch", "drop"]), st.integers(0, 7)), max_size=60))
def test_lru_gives_up_the_least_recently_used_first(ops: list[tuple[str, int]]) -> None:
    res = MemoryResidency(8, EvictionPolicy.LRU)
    model: list[bytes] = []  # least recently used first
    for op, i in ops:
        key = bytes([i]) * 16
        if op == "put" and key not in model:
            slots = res.reserve(1)
            assert slots is not None
            res.begin_store(key, slots[0])
            res.complete_store(key, True)
            model.append(key)
        elif op == "touch" and key in model:
            res.touch(key)
            model.remove(key)
            model.append(key)
        elif op == "drop" and key in model:
            res.remove(key)
            model.remove(key)
    assert [key for key, _ in res.victims(8)] == model
