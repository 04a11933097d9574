"""Which pages of a cached prefix a continuation can attend to, under a sliding window.

A shared value module (pure functions of integers). For a prefix of ``num_pages`` pages of
``page_tokens`` tokens, a model with a window of ``window_tokens`` tokens and ``sink_tokens``
sink tokens (StreamingLLM) attends, from the first token after the prefix, to the tokens
``[0, sink_tokens)`` and ``[num_pages * page_tokens - window_tokens, num_pages * page_tokens)``:
the pages holding any of them are the ones Acquire and Prefetch move up. A window of 0 tokens
is full attention: every page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def attended_pages(num_pages: int, page_tokens: int, window_tokens: int,
                   sink_tokens: int = 0) -> tuple[int, ...]:
    """Sorted indices of the pages holding the sink tokens or the last ``window_tokens`` tokens
    of a ``num_pages``-page prefix; every page when ``window_tokens`` is 0."""
    if num_pages <= 0:
        return ()
    if window_tokens <= 0:
        return tuple(range(num_pages))
    sink_pages = min(num_pages, -(-sink_tokens // page_tokens))  # ceil: a partial page holds sinks
    first_window_token = max(0, num_pages * page_tokens - window_tokens)
    first_window_page = max(sink_pages, first_window_token // page_tokens)
    return tuple(range(sink_pages)) + tuple(range(first_window_page, num_pages))


def longest_servable_prefix(present_pages: int, ready: Callable[[int], bool], page_tokens: int,
                            window_tokens: int, sink_tokens: int = 0) -> int:
    """The longest prefix ``m <= present_pages`` whose attended pages are all ``ready``.

    A page that is not ready rules out every prefix whose window holds it: the sinks are in the
    window of every longer prefix, and a page ``f`` in the sliding part of prefix ``m``'s window
    is in that of every prefix in ``(f, m]`` too. So the next candidate is the lowest page that
    is not ready, and the search ends (at 0 at the latest: it attends to nothing).
    """
    prefix = present_pages
    while True:
        missing = [page for page in attended_pages(prefix, page_tokens, window_tokens, sink_tokens)
                   if not ready(page)]
        if not missing:
            return prefix
        prefix = missing[0]


def last_attending_prefix(page: int, page_tokens: int, window_tokens: int,
                          sink_tokens: int = 0) -> int | None:
    """The longest prefix (in pages) whose continuation still attends to ``page``; ``None`` when
    every longer prefix does (a sink page, or full attention). A page all of whose cached
    continuations are longer than this can never again be inside a window (for eviction)."""
    if window_tokens <= 0 or page * page_tokens < sink_tokens:
        return None
    # Prefix m attends to the page while m * page_tokens - window_tokens <= its last token.
    return page + 1 + (window_tokens - 1) // page_tokens


@dataclass(frozen=True)
class WindowRule:
    """A window as eviction sees it, in pages: a page all of whose cached continuations run at
    least ``reach_pages`` pages past it is inside no window again (``last_attending_prefix``:
    prefix ``p + 1 + (window_tokens - 1) // page_tokens`` is the last to attend to page ``p``),
    unless it is one of its chain's first ``sink_pages`` pages (they hold sink tokens)."""

    reach_pages: int
    sink_pages: int

    @classmethod
    def of(cls, page_tokens: int, window_tokens: int, sink_tokens: int = 0) -> WindowRule | None:
        """The rule of a windowed namespace; ``None`` for full attention (every page is attended)."""
        if window_tokens <= 0:
            return None
        return cls((window_tokens - 1) // page_tokens + 1, -(-sink_tokens // page_tokens))
