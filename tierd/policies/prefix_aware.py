"""Prefix-aware eviction: leaves first, so a cached chain shrinks from its end.

A lookup stops at the first missing page, so evicting a page in the middle of a cached chain
strands every later page of it. Victims, in order:

1. first victims (pages of broken chains, unreachable anyway), leaves first, LRU among them;
2. leaves (no child in this tier: ``ChainView.children``), LRU among them;
3. only when every leaf is skipped (pinned or in flight) other pages, LRU, so the store never
   wedges.

Taking a page may make its parent a leaf: the parent is then offered next (it was used before
its child, so it is older than every leaf not offered yet), which peels a chain from its end.
Recency is the residency's dict order, as for LRU (``LruOrder``). The walk is linear in the
pages it passes over, not in the victims it finds: fine for regions, bounded by the tier's pages.
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

    def candidates(self, skip: Skip[K] | None = None) -> Iterator[K]:
        return _Walk(self._entries, self._view, skip).victims()


class _Walk(Generic[K]):
    """One walk over the pages: what was taken so far, and how many children each parent lost."""

    def __init__(self, entries: dict[K, object], view: ChainView[K], skip: Skip[K] | None) -> None:
        self._entries = entries
        self._view = view
        self._skip: Skip[K] = skip if skip is not None else _never
        self._taken: set[K] = set()
        self._lost: dict[K, int] = {}  # children taken, by parent

    def victims(self) -> Iterator[K]:
        view = self._view
        if view.any_first_victims():
            yield from self._pass(lambda key: view.first_victim(key) and self._is_leaf(key))
        yield from self._pass(self._is_leaf)
        yield from self._pass(_always)

    def _is_leaf(self, key: K) -> bool:
        return self._view.children(key) <= self._lost.get(key, 0)

    def _pass(self, wanted: Callable[[K], bool]) -> Iterator[K]:
        taken, skip = self._taken, self._skip
        for key in self._entries:
            if key not in taken and not skip(key) and wanted(key):
                yield from self._peel(key)

    def _peel(self, key: K) -> Iterator[K]:
        """``key``, then each ancestor that taking it made a leaf (and that may go)."""
        view, taken = self._view, self._taken
        while True:
            taken.add(key)
            yield key
            parent = view.parent(key) if view.frees_parent(key) else None
            if parent is None:
                return
            self._lost[parent] = self._lost.get(parent, 0) + 1
            if (parent in taken or parent not in self._entries or self._skip(parent)
                    or not self._is_leaf(parent)):
                return
            key = parent


def _never(key: object) -> bool:
    return False


def _always(key: object) -> bool:
    return True
