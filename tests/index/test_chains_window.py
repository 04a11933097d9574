"""Pages outside every window (a sliding-window namespace's chains), kept by the chain index as
pages enter and leave tiers, against a recomputation over the whole forest after every step."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.attention_window import WindowRule, last_attending_prefix
from tierd.index.chains import ChainIndex
from tierd.tier import Tier

TIERS = (Tier.HBM, Tier.DRAM, Tier.DISK)


def k(i: int) -> bytes:
    return bytes([i + 1]) * 16


def test_the_rule_agrees_with_the_last_prefix_that_attends_to_a_page() -> None:
    for page_tokens in (1, 16, 32):
        for window_tokens in (1, 15, 16, 17, 100, 1024):
            rule = WindowRule.of(page_tokens, window_tokens, 0)
            assert rule is not None
            for page in range(4):
                last = last_attending_prefix(page, page_tokens, window_tokens)
                assert last is not None
                # A chain ending reach_pages past the page is the first that no longer attends.
                assert last == page + rule.reach_pages
    assert WindowRule.of(16, 0, 0) is None
    assert WindowRule.of(16, 64, 17) == WindowRule(4, 2)


def test_a_chain_longer_than_its_window_has_pages_outside_it() -> None:
    index = ChainIndex(WindowRule(reach_pages=2, sink_pages=1))
    before = None
    for i in range(6):
        index.entered(k(i), Tier.DRAM, before)
        before = k(i)
    assert [index.outside_windows(k(i)) for i in range(6)] == [False, True, True, True, False, False]
    index.entered(k(10), Tier.DRAM, k(2))  # a short branch after page 2: page 2 is needed again
    assert [index.outside_windows(k(i)) for i in range(6)] == [False, True, False, True, False, False]
    index.left(k(10), Tier.DRAM)
    assert index.outside_windows(k(2))
    for i in (5, 4):
        index.left(k(i), Tier.DRAM)  # the chain shrinks: its end moves back
    assert [index.outside_windows(k(i)) for i in range(4)] == [False, True, False, False]
    assert not ChainIndex().outside_windows(k(1))  # full attention: no page is outside


def _reference(parents: list[int | None], cached: set[int], rule: WindowRule) -> dict[int, bool]:
    children: dict[int, list[int]] = {}
    for i, parent in enumerate(parents):
        if parent is not None:
            children.setdefault(parent, []).append(i)

    def reach(i: int) -> int:
        below = [reach(c) + 1 for c in children.get(i, []) if c in cached]
        return min(min(below), rule.reach_pages) if below else 0

    def depth(i: int) -> int:
        parent = parents[i]
        return 0 if parent is None else 1 + depth(parent)

    return {i: i in cached and reach(i) >= rule.reach_pages and depth(i) >= rule.sink_pages
            for i in range(len(parents))}


@st.composite
def forests(draw: st.DrawFn) -> list[int | None]:
    """Mostly long chains (the page before), some branches (an earlier page), a few roots."""
    size = draw(st.integers(2, 14))
    out: list[int | None] = [None]
    for i in range(1, size):
        kind = draw(st.integers(0, 9))
        out.append(i - 1 if kind < 7 else None if kind == 9 else draw(st.integers(0, i - 1)))
    return out


@settings(max_examples=150, deadline=None)
@given(forest=forests(), reach_pages=st.integers(1, 4), sink_pages=st.integers(0, 2),
       steps=st.lists(st.tuples(st.integers(0, 3).map(lambda n: n == 0), st.integers(0, 13),
                                st.sampled_from(TIERS)), max_size=80))
def test_outside_windows_follows_every_enter_and_leave(forest: list[int | None], reach_pages: int,
                                                       sink_pages: int,
                                                       steps: list[tuple[bool, int, Tier]]) -> None:
    rule = WindowRule(reach_pages, sink_pages)
    index = ChainIndex(rule)
    held: set[tuple[int, Tier]] = set()
    for put, page, tier in steps:
        page %= len(forest)
        if put:  # a put of the page's whole chain, root first, as an engine saves a prompt
            for i in [*reversed(_ancestors(forest, page)), page]:
                parent = forest[i]
                index.entered(k(i), tier, None if parent is None else k(parent))
                held.add((i, tier))
        else:
            index.left(k(page), tier)
            held.discard((page, tier))
        cached = {i for i, _ in held}
        expected = _reference(forest, cached, rule)
        for i, outside in expected.items():
            ancestors_cached = all(a in cached for a in _ancestors(forest, i))
            if ancestors_cached:
                assert index.outside_windows(k(i)) == outside, (i, held)
            else:
                # An ancestor cached nowhere may be forgotten: the page may then count as its
                # chain's first (a sink), never the other way round.
                assert outside or not index.outside_windows(k(i)), (i, held)


def _ancestors(parents: list[int | None], i: int) -> list[int]:
    out = []
    parent = parents[i]
    while parent is not None:
        out.append(parent)
        parent = parents[parent]
    return out
