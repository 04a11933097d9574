"""The interface every eviction policy implements.

An order knows the pages of one tier (of one namespace, or of the whole disk) and which of them
to give up first. It never decides whether a page may go: the manager skips pinned and in-flight
pages while walking ``candidates``. It is made over the residency's dict of the tier's pages
(``make_order(policy, entries)``), whose insertion order is the order pages were cached in; the
residency changes that dict first and then tells the order. Not thread-safe: the manager calls it
under its lock.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Protocol, TypeVar

K = TypeVar("K", bound=Hashable)


class EvictionOrder(Protocol[K]):
    """Pages of one tier in eviction order, by key (a page key, or a disk key)."""

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...

    def insert(self, key: K) -> None:
        """``key`` was just cached (it counts as used now)."""

    def touch(self, key: K) -> None:
        """``key`` was used again; ignored when the order does not hold it."""

    def remove(self, key: K) -> None:
        """``key`` left the tier; ignored when the order does not hold it."""

    def candidates(self) -> Iterator[K]:
        """Every key held, the first to evict first. Do not change the order while iterating."""
