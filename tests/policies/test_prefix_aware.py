"""The prefix-aware order over one memory tier: broken chains first, leaves first, LRU among
leaves, parents peeled after their children, and a fallback when every leaf is pinned."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.config import EvictionPolicy
from tierd.index.chains import ChainIndex, DiskChains
from tierd.index.residency import DiskResidency, MemoryResidency
from tierd.tier import Tier


def k(i: int) -> bytes:
    return bytes([i]) * 16


def region(policy: EvictionPolicy = EvictionPolicy.PREFIX_AWARE) -> MemoryResidency:
    return MemoryResidency(32, policy, tier=Tier.DRAM)


def put(res: MemoryResidency, *ids: int, parent: int | None = None) -> None:
    """One put of pages ``ids`` (a chain after ``parent``)."""
    before = None if parent is None else k(parent)
    for i in ids:
        slots = res.reserve(1)
        assert slots is not None
        res.begin_store(k(i), slots[0])
        res.complete_store(k(i), True, before)
        before = k(i)


def victims(res: MemoryResidency, n: int = 32) -> list[int]:
    return [key[0] for key, _ in res.victims(n)]


def test_a_chain_goes_from_its_end_where_lru_starts_at_its_root() -> None:
    for policy, expected in ((EvictionPolicy.PREFIX_AWARE, [3, 2, 1]), (EvictionPolicy.LRU, [1, 2, 3])):
        res = region(policy)
        put(res, 1, 2, 3)
        assert victims(res) == expected


def test_lru_among_leaves_then_each_parent_right_after_its_last_child() -> None:
    res = region()
    put(res, 1, 2)
    put(res, 3, 4)
    put(res, 5, parent=1)  # a branch: 1 has children 2 and 5
    for i in (1, 2):       # a lookup of 1, 2 touches both
        res.touch(k(i))
    # Leaves by recency: 4 (oldest), 5, 2; 3 follows 4; 1 follows 2 (its last child).
    assert victims(res) == [4, 3, 5, 2, 1]
    assert victims(res, 3) == [4, 3, 5]


def test_a_parent_used_after_another_leaf_waits_for_its_turn() -> None:
    res = region()
    put(res, 1, 2)
    put(res, 9)
    res.touch(k(1))  # a lookup of a shorter prefix: 1 is now used after 9
    assert victims(res) == [2, 9, 1]


def test_broken_chains_go_first_leaves_first() -> None:
    res = region()
    put(res, 1)
    put(res, 2, 3, parent=9)  # 9 is not cached: 2 and 3 are unreachable
    put(res, 4)
    assert victims(res) == [3, 2, 1, 4]
    put(res, 9)  # the parent arrived: nothing is broken now
    assert victims(res)[:2] == [1, 3]


def test_a_deleted_page_breaks_the_chain_below_it() -> None:
    res = region()
    put(res, 1, 2, 3, 4)
    put(res, 5)
    res.remove(k(2))
    assert victims(res) == [4, 3, 1, 5]  # 1 is a leaf now, older than 5


def test_pinned_leaves_make_the_order_fall_back_to_other_pages_lru() -> None:
    res = region()
    put(res, 1, 2, 3)
    put(res, 4, 5)
    res.pin(res.slots[k(3)])
    res.pin(res.slots[k(5)])
    # Leaves 3 and 5 may not go; 2 and 4 are no leaves while their children stay.
    assert victims(res) == [1, 2, 4]
    assert victims(res, 1) == [1]


def test_the_disk_keeps_a_page_while_a_child_is_cached_in_any_tier() -> None:
    chains = ChainIndex()
    disk = DiskResidency(EvictionPolicy.PREFIX_AWARE, DiskChains({7: chains}))
    dkeys = [(7).to_bytes(4, "big") + k(i) for i in range(4)]
    for i, dkey in enumerate(dkeys):
        disk.add(dkey, 100)
        chains.name_parent(k(i), k(i - 1) if i else None)
    chains.entered(k(4), Tier.DRAM, k(3))  # a child of 3, in dram only
    assert disk.victims(400) == [dkeys[3], dkeys[2], dkeys[1], dkeys[0]]  # tier-local leaves only
    chains.entered(k(9), Tier.DRAM)
    disk.add((7).to_bytes(4, "big") + k(9), 100)
    assert disk.victims(100) == [(7).to_bytes(4, "big") + k(9)]  # a leaf in every tier first
    assert disk.victims(200, exclude={(7).to_bytes(4, "big") + k(9)}) == [dkeys[3], dkeys[2]]


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["put", "touch", "drop"]), st.integers(0, 9)), max_size=50))
def test_victims_never_put_a_parent_before_a_child_of_it(ops: list[tuple[str, int]]) -> None:
    """Pages 0..9 are one chain (i-1 before i); whatever is cached, a victim list taken in
    order never takes a page while a child of it is still in the tier."""
    res = region()
    for op, i in ops:
        key = k(i)
        if op == "put" and key not in res.slots:
            put(res, i, parent=i - 1 if i else None)
        elif op == "touch":
            res.touch(key)
        elif op == "drop":
            res.remove(key)
    left = set(res.slots)
    for key, _ in res.victims(10):
        assert k(key[0] + 1) not in left, (key[0], sorted(x[0] for x in left))
        left.discard(key)
    assert not left
