"""Least recently used first.

Recency is the insertion order of a plain ``dict`` (oldest first): a touch is pop + re-insert,
which keeps an entry at about 100 bytes instead of an object per page.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class LruOrder(Generic[K]):
    """``EvictionOrder`` by recency of use."""

    def __init__(self) -> None:
        self._keys: dict[K, None] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def insert(self, key: K) -> None:
        self._keys.pop(key, None)
        self._keys[key] = None

    def touch(self, key: K) -> None:
        if key in self._keys:
            del self._keys[key]
            self._keys[key] = None

    def remove(self, key: K) -> None:
        self._keys.pop(key, None)

    def candidates(self) -> Iterator[K]:
        return iter(self._keys)
