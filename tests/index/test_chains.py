"""The chain index: parents named by puts and commits, cached children per tier, broken chains."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.index.chains import ChainIndex
from tierd.tier import Tier


def k(i: int) -> bytes:
    return bytes([i]) * 16


def chain(index: ChainIndex, tier: Tier, *ids: int, parent: int | None = None) -> None:
    """Cache ``ids`` in ``tier`` as one put: each the parent of the next, after ``parent``."""
    before = None if parent is None else k(parent)
    for i in ids:
        index.entered(k(i), tier, before)
        before = k(i)


def test_counts_follow_children_per_tier() -> None:
    index = ChainIndex()
    chain(index, Tier.DRAM, 1, 2, 3)
    assert [index.parent_of(k(i)) for i in (1, 2, 3)] == [None, k(1), k(2)]
    assert index.children_in(k(1), Tier.DRAM) == 1 and index.children_in(k(3), Tier.DRAM) == 0
    index.entered(k(2), Tier.HBM)  # promoted: keeps its parent
    assert index.children_in(k(1), Tier.HBM) == 1 and index.cached_children(k(1)) == 1
    index.left(k(2), Tier.DRAM)
    assert index.children_in(k(1), Tier.DRAM) == 0 and index.cached_children(k(1)) == 1
    index.entered(k(2), Tier.DISK)
    assert index.children_in(k(1), Tier.DISK) == 1
    assert not any(index.is_broken(k(i)) for i in (1, 2, 3))


def test_a_page_cached_nowhere_breaks_every_chain_below_it_until_it_comes_back() -> None:
    index = ChainIndex()
    chain(index, Tier.DRAM, 1, 2, 3, 4)
    index.left(k(2), Tier.DRAM)  # deleted, or dropped for good
    assert [index.is_broken(k(i)) for i in (1, 3, 4)] == [False, True, True]
    assert index.cached_children(k(1)) == 0 and index.num_broken >= 2
    index.entered(k(2), Tier.DISK)  # put again
    assert not any(index.is_broken(k(i)) for i in (1, 2, 3, 4))
    assert index.cached_children(k(1)) == 1


def test_a_parent_not_cached_breaks_the_put_and_its_links_go_with_the_pages() -> None:
    index = ChainIndex()
    chain(index, Tier.HBM, 5, 6, parent=9)
    assert index.is_broken(k(5)) and index.is_broken(k(6))
    chain(index, Tier.DRAM, 9)  # the parent arrives later: the chain is whole
    assert not index.is_broken(k(5)) and not index.is_broken(k(6))
    for i in (9, 5, 6):
        index.left(k(i), Tier.HBM)
        index.left(k(i), Tier.DRAM)
    assert len(index) == 0 and index.num_broken == 0


def test_the_first_parent_named_is_kept_and_no_page_is_its_own() -> None:
    index = ChainIndex()
    chain(index, Tier.DRAM, 1, 2)
    index.entered(k(3), Tier.DRAM, k(3))
    assert index.parent_of(k(3)) is None
    index.name_parent(k(2), k(3))
    assert index.parent_of(k(2)) == k(1) and index.children_in(k(3), Tier.DRAM) == 0
    index.name_parent(k(3), k(1))  # learned later (a commit of a page cached already)
    assert index.children_in(k(1), Tier.DRAM) == 2


def test_a_cycle_of_named_parents_settles() -> None:
    index = ChainIndex()
    index.entered(k(1), Tier.DRAM, k(2))
    index.entered(k(2), Tier.DRAM, k(1))
    index.left(k(1), Tier.DRAM)
    assert index.is_broken(k(2))
    index.left(k(2), Tier.DRAM)
    assert len(index) == 0


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 7), st.sampled_from(
    [Tier.HBM, Tier.DRAM, Tier.DISK])), max_size=60))
def test_counts_and_brokenness_match_a_model(ops: list[tuple[bool, int, Tier]]) -> None:
    """Pages 0..7 form one chain (i-1 before i); any of them enters or leaves any tier."""
    index = ChainIndex()
    where: dict[int, set[Tier]] = {i: set() for i in range(8)}
    for enter, i, tier in ops:
        if enter:
            index.entered(k(i), tier, k(i - 1) if i else None)
            where[i].add(tier)
        else:
            index.left(k(i), tier)
            where[i].discard(tier)
    for i in range(7):
        child = where[i + 1] if index.parent_of(k(i + 1)) == k(i) else set()
        for tier in (Tier.HBM, Tier.DRAM, Tier.DISK):
            assert index.children_in(k(i), tier) == int(tier in child)
        assert index.cached_children(k(i)) == int(bool(child))
    for i in range(8):
        if where[i]:
            assert index.is_broken(k(i)) == _model_broken(index, where, i), (i, where)


def _model_broken(index: ChainIndex, where: dict[int, set[Tier]], i: int) -> bool:
    """Some ancestor along the known parents (each i-1 of i) is cached nowhere."""
    while index.parent_of(k(i)) is not None:
        i -= 1
        if not where[i]:
            return True
    return False


def test_a_shared_prefix_counts_each_continuation() -> None:
    index = ChainIndex()
    chain(index, Tier.DRAM, 1)
    for child in (2, 3, 4):
        chain(index, Tier.DRAM, child, parent=1)
    assert index.children_in(k(1), Tier.DRAM) == 3 and index.cached_children(k(1)) == 3
    index.left(k(1), Tier.DRAM)
    assert all(index.is_broken(k(i)) for i in (2, 3, 4))
    for child in (2, 3):
        index.left(k(child), Tier.DRAM)
    assert index.cached_children(k(1)) == 1 and index.is_broken(k(4))
    index.left(k(4), Tier.DRAM)
    assert len(index) == 0 and index.num_broken == 0
