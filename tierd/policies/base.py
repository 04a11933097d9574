"""The interface every eviction policy implements.

An order knows the pages of one tier (of one namespace, or of the whole disk) and which of them
to give up first. It never decides whether a page may go: ``candidates`` leaves out the pages the
caller's ``skip`` names (pinned and in-flight ones), so an order that peels chains (a parent may
go once its children went) never counts a child that stays. It is made over the residency's dict
of the tier's pages (``make_order(policy, entries, chains)``), whose insertion order is the order
pages were cached in; the residency changes that dict first and then tells the order. A
chain-aware order reads the chains through a ``ChainView``. Not thread-safe: the manager calls it
under its lock.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Protocol, TypeVar

K = TypeVar("K", bound=Hashable)

# Whether a page may not be a victim now (pinned, in flight, being read).
Skip = Callable[[K], bool]


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

    def candidates(self, skip: Skip[K] | None = None, fallback: bool = True) -> Iterator[K]:
        """Every key held that ``skip`` does not name, the first to evict first; each key the
        caller asks past counts as taken. ``fallback=False``: only keys an order that keeps
        chains whole may give up now (background eviction waits rather than strand a chain).
        Do not change the order while iterating."""


class ChainView(Protocol[K]):
    """What a chain-aware order reads of the chains of its tier's pages (``tierd.index.chains``)."""

    def children(self, key: K) -> int:
        """Children that keep ``key`` from being a leaf in this tier (for the disk: cached in
        any tier, as a drop from disk is final)."""

    def children_here(self, key: K) -> int:
        """Children resident in this tier (the fallback's leaves have none)."""

    def parent(self, key: K) -> K | None: ...

    def first_victim(self, key: K) -> bool:
        """Pages that go before every other: broken chains (a view may add other pages no lookup
        can use, such as pages outside every attention window)."""

    def any_first_victims(self) -> bool: ...

    def outside_windows(self, key: K) -> bool:
        """Pages of a sliding-window namespace that no continuation of their cached chains
        attends to: they go down before every other page of a memory tier, children or not
        (they stay cached below, so chains stay whole); never on disk, where a drop is final."""

    def any_outside_windows(self) -> bool: ...

    def frees_parent(self, key: K) -> bool:
        """Whether taking ``key`` out of this tier takes a child from its parent's count."""
