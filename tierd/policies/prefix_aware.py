"""Prefix-aware eviction: leaves first, so a cached chain shrinks from its end.

A lookup stops at the first missing page, so evicting a page in the middle of a cached chain
strands every later page of it. Victims, in order:

0. in a memory tier, pages of a sliding-window namespace outside every window their cached
   chains can still need (``ChainView.outside_windows``), LRU: they go down, chains stay whole;
1. first victims (pages of broken chains, unreachable anyway), leaves first, LRU among them;
2. leaves (``ChainView.children`` is 0: no child in this tier; for the disk, in any tier), LRU;
3. tier-local leaves (no child in this tier: differs from 2 on disk only), LRU;
4. only when every such leaf is skipped (pinned, in flight, being read) other pages, LRU, so the
   store never wedges; not for ``fallback=False`` (background eviction, and a put's first try:
   a leaf whose write is in flight can go once it lands, which is worth waiting for).

Victims are chosen as if each left before the next is chosen: taking a page may make its parent a
leaf, which is then offered at once when it is older than the page (the walk passed it already:
a lookup touches a parent before its child, so a chain peels from its end), else when the walk
reaches it. Recency is the residency's dict order, as for LRU (``LruOrder``). The walk is linear
in the pages it passes over, not in the victims it finds: bounded by the tier's pages.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

from tierd.policies.base import ChainView, Skip
from tierd.policies.lru import LruOrder

K = TypeVar("K", bound=Hashable)


class PrefixAwareOrder(LruOrder[K]):
    """``EvictionOrder`` by chain position, then recency, over ``entries`` (the residency's dict
    of pages), reading the chains through ``view``."""

    def __init__(self, entries: dict[K, object], view: ChainView[K]) -> None:
        super().__init__(entries)
        self._view = view

    def candidates(self, skip: Skip[K] | None = None, fallback: bool = True) -> Iterator[K]:
        return _Walk(self._entries, self._view, skip).victims(fallback)


class _Walk(Generic[K]):
    """One walk over the pages: what was taken so far, and how many children each parent lost
    (from its ``children`` count, and from its ``children_here`` count)."""

    def __init__(self, entries: dict[K, object], view: ChainView[K], skip: Skip[K] | None) -> None:
        self._entries = entries
        self._view = view
        self._skip: Skip[K] = skip if skip is not None else _never
        self._taken: set[K] = set()
        self._passed: set[K] = set()  # by the current pass: older than where it is
        self._lost: dict[K, int] = {}
        self._lost_here: dict[K, int] = {}

    def victims(self, fallback: bool) -> Iterator[K]:
        view, leaf = self._view, self._is_leaf
        if view.any_outside_windows():
            # Never peels: a parent of such a page is outside too (then it comes in its turn) or
            # inside a window (a sink page, or the page before a short branch), and then stays.
            yield from self._pass(view.outside_windows, _never)
        if view.any_first_victims():
            yield from self._pass(lambda key: view.first_victim(key) and leaf(key), leaf)
        yield from self._pass(leaf, leaf)
        yield from self._pass(self._is_local_leaf, self._is_local_leaf)
        if fallback:
            yield from self._pass(_always, self._is_local_leaf)

    def _is_leaf(self, key: K) -> bool:
        return self._view.children(key) <= self._lost.get(key, 0)

    def _is_local_leaf(self, key: K) -> bool:
        return self._view.children_here(key) <= self._lost_here.get(key, 0)

    def _pass(self, wanted: Callable[[K], bool], peels: Callable[[K], bool]) -> Iterator[K]:
        taken, skip = self._taken, self._skip
        passed = self._passed = set()
        for key in self._entries:
            passed.add(key)
            if key not in taken and not skip(key) and wanted(key):
                yield from self._peel(key, peels)

    def _peel(self, key: K, peels: Callable[[K], bool]) -> Iterator[K]:
        """``key``, then each older ancestor that taking it made a leaf (``peels``) and that may
        go (a younger one waits for the walk to reach it)."""
        view, taken = self._view, self._taken
        while True:
            taken.add(key)
            yield key
            parent = view.parent(key)
            if parent is None:
                return
            self._lost_here[parent] = self._lost_here.get(parent, 0) + 1
            if view.frees_parent(key):
                self._lost[parent] = self._lost.get(parent, 0) + 1
            if (parent in taken or parent not in self._passed or self._skip(parent)
                    or not peels(parent)):
                return
            key = parent


def _never(key: object) -> bool:
    return False


def _always(key: object) -> bool:
    return True
