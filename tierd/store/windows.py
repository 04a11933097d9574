"""A namespace's attention window applied to requests: which keys of a cached prefix Acquire
and Prefetch move up, and which of them a READ lease covers.

For a namespace without a window these are the whole prefix, as before windows existed; with
one, only the pages a continuation attends to (``tierd.attention_window``), so the rest of the
prefix stays where it is. Pure functions: the manager calls them under its lock.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from tierd.attention_window import WindowRule, attended_pages, longest_servable_prefix
from tierd.keys import PageKey
from tierd.spec import PageSpec
from tierd.values import LeaseWindow


def eviction_rule(spec: PageSpec) -> WindowRule | None:
    """What eviction needs of the namespace's window (``None``: full attention)."""
    return WindowRule.of(spec.page_tokens, spec.window_tokens, spec.sink_tokens)


def attended_keys(spec: PageSpec, keys: Sequence[PageKey], present: int) -> list[PageKey]:
    """The keys of the pages of the ``present``-page cached prefix of ``keys`` that a
    continuation attends to, in order (all of them without a window)."""
    if not spec.windowed:
        return list(keys[:present])
    return [keys[i] for i in attended_pages(present, spec.page_tokens, spec.window_tokens,
                                            spec.sink_tokens)]


def max_attended(spec: PageSpec, num_keys: int) -> int:
    """The most pages an Acquire of ``num_keys`` keys can lease (the count grows with the prefix,
    so the whole request's is the bound)."""
    if not spec.windowed:
        return num_keys
    return len(attended_pages(num_keys, spec.page_tokens, spec.window_tokens, spec.sink_tokens))


def servable_window(spec: PageSpec, keys: Sequence[PageKey], present: int,
                    pinned: Container[PageKey]) -> tuple[LeaseWindow, list[PageKey]]:
    """The longest prefix of ``keys`` (at most ``present`` pages) whose attended pages are all
    ``pinned``, as a lease window, and the keys of those pages. Without a window that is the
    leading keys that are pinned: a page that could not be moved ends the prefix."""
    prefix = longest_servable_prefix(present, lambda i: keys[i] in pinned, spec.page_tokens,
                                     spec.window_tokens, spec.sink_tokens)
    indices = attended_pages(prefix, spec.page_tokens, spec.window_tokens, spec.sink_tokens)
    return LeaseWindow(prefix, indices), [keys[i] for i in indices]
