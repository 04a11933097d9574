"""``tierd.attention_window``: the pages a continuation attends to, against a token-by-token
reference, and the longest prefix whose attended pages are all ready, against a search of
every prefix."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from window_reference import reference_pages

from tierd.attention_window import attended_pages, last_attending_prefix, longest_servable_prefix


def reference_servable(present: int, ready: set[int], page_tokens: int, window_tokens: int,
                       sink_tokens: int) -> int:
    return max(m for m in range(present + 1)
               if set(reference_pages(m, page_tokens, window_tokens, sink_tokens)) <= ready)


def test_worked_examples() -> None:
    # 10 pages of 16 tokens, a window of 40 tokens: tokens 120..159 are in pages 7, 8, 9.
    assert attended_pages(10, 16, 40) == (7, 8, 9)
    # Four sink tokens add page 0; a window of exactly two pages is two pages.
    assert attended_pages(10, 16, 32, 4) == (0, 8, 9)
    # Sinks spilling into a second page, and a window reaching back over them, merge.
    assert attended_pages(4, 16, 40, 20) == (0, 1, 2, 3)
    # No window: every page. An empty prefix attends to nothing.
    assert attended_pages(5, 16, 0) == (0, 1, 2, 3, 4)
    assert attended_pages(0, 16, 40, 4) == ()
    # A window longer than the prefix: every page.
    assert attended_pages(3, 16, 1000) == (0, 1, 2)


@settings(max_examples=400, deadline=None)
@given(num_pages=st.integers(0, 40), page_tokens=st.integers(1, 20),
       window_tokens=st.integers(0, 300), sink_tokens=st.integers(0, 60))
def test_attended_pages_match_the_token_reference(num_pages: int, page_tokens: int,
                                                  window_tokens: int, sink_tokens: int) -> None:
    sink_tokens = sink_tokens if window_tokens else 0  # a spec allows sinks only with a window
    got = attended_pages(num_pages, page_tokens, window_tokens, sink_tokens)
    assert got == reference_pages(num_pages, page_tokens, window_tokens, sink_tokens)


@settings(max_examples=400, deadline=None)
@given(present=st.integers(0, 30), page_tokens=st.integers(1, 8), window_tokens=st.integers(0, 60),
       sink_tokens=st.integers(0, 20), data=st.data())
def test_longest_servable_prefix_matches_a_search_of_every_prefix(
        present: int, page_tokens: int, window_tokens: int, sink_tokens: int,
        data: st.DataObject) -> None:
    sink_tokens = sink_tokens if window_tokens else 0
    ready = data.draw(st.sets(st.integers(0, max(0, present - 1)), max_size=present))
    got = longest_servable_prefix(present, ready.__contains__, page_tokens, window_tokens, sink_tokens)
    assert got == reference_servable(present, ready, page_tokens, window_tokens, sink_tokens)


@settings(max_examples=300, deadline=None)
@given(page=st.integers(0, 30), page_tokens=st.integers(1, 8), window_tokens=st.integers(0, 60),
       sink_tokens=st.integers(0, 20))
def test_last_attending_prefix_matches_the_attended_pages(page: int, page_tokens: int,
                                                          window_tokens: int, sink_tokens: int) -> None:
    sink_tokens = sink_tokens if window_tokens else 0
    horizon = page + 2 + window_tokens // page_tokens + 2  # beyond it no window reaches back
    attending = [m for m in range(page + 1, horizon + 1)
                 if page in reference_pages(m, page_tokens, window_tokens, sink_tokens)]
    got = last_attending_prefix(page, page_tokens, window_tokens, sink_tokens)
    if got is None:
        assert attending == list(range(page + 1, horizon + 1))  # every longer prefix attends
    else:
        assert attending == list(range(page + 1, got + 1))
