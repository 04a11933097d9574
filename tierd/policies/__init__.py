"""Eviction policies: the order in which a tier gives up its pages (one file per policy).

A new policy is a new file with a class satisfying ``EvictionOrder``, a member of
``tierd.config.EvictionPolicy`` and a line in ``make_order``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from tierd.config import EvictionPolicy
from tierd.policies.base import ChainView, EvictionOrder
from tierd.policies.lru import LruOrder
from tierd.policies.prefix_aware import PrefixAwareOrder

__all__ = ["ChainView", "EvictionOrder", "LruOrder", "NoChains", "PrefixAwareOrder", "make_order"]

K = TypeVar("K", bound=Hashable)


class NoChains(Generic[K]):
    """A ``ChainView`` of pages that know no chains: every page is a root and a leaf."""

    def children(self, key: K) -> int:
        return 0

    def children_here(self, key: K) -> int:
        return 0

    def parent(self, key: K) -> K | None:
        return None

    def first_victim(self, key: K) -> bool:
        return False

    def any_first_victims(self) -> bool:
        return False

    def outside_windows(self, key: K) -> bool:
        return False

    def any_outside_windows(self) -> bool:
        return False

    def frees_parent(self, key: K) -> bool:
        return False


def make_order(policy: EvictionPolicy, entries: dict[K, Any],
               chains: ChainView[K] | None = None) -> EvictionOrder[K]:
    """The eviction order of one tier of one namespace (or of the disk), over ``entries``: the
    residency's dict of that tier's pages; ``chains``: what the tier knows of their chains."""
    if policy is EvictionPolicy.LRU:
        return LruOrder(entries)
    if policy is EvictionPolicy.PREFIX_AWARE:
        return PrefixAwareOrder(entries, chains if chains is not None else NoChains())
    raise ValueError(f"no eviction order for policy {policy!r}")
