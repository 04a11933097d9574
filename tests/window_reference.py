"""The token-by-token reference of which pages a continuation attends to (tests only)."""

from __future__ import annotations


def reference_pages(num_pages: int, page_tokens: int, window_tokens: int,
                    sink_tokens: int = 0) -> tuple[int, ...]:
    """A token of the prefix is attended if it is a sink or among the last ``window_tokens``
    (every token without a window); the pages holding attended tokens, sorted."""
    end = num_pages * page_tokens
    return tuple(sorted({token // page_tokens for token in range(end)
                         if window_tokens == 0 or token < sink_tokens or token >= end - window_tokens}))
