"""Least recently used first.

Recency is the insertion order of the residency's own ``dict`` of pages (oldest first): caching a
page appends it, a touch is pop + re-insert, so LRU costs no memory beyond that dict.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

from tierd.policies.base import Skip

K = TypeVar("K", bound=Hashable)

_ABSENT = object()


class LruOrder(Generic[K]):
    """``EvictionOrder`` by recency of use, over ``entries`` (the residency's dict of pages)."""

    def __init__(self, entries: dict[K, object]) -> None:
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def insert(self, key: K) -> None:
        """Nothing to do: the residency added ``key`` at the end of its dict (the MRU end)."""

    def touch(self, key: K) -> None:
        value = self._entries.pop(key, _ABSENT)
        if value is not _ABSENT:
            self._entries[key] = value

    def remove(self, key: K) -> None:
        """Nothing to do: the residency removed ``key`` from its dict."""

    def candidates(self, skip: Skip[K] | None = None, fallback: bool = True) -> Iterator[K]:
        if skip is None:
            return iter(self._entries)
        return (key for key in self._entries if not skip(key))
