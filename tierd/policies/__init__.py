"""Eviction policies: the order in which a tier gives up its pages (one file per policy).

A new policy is a new file with a class satisfying ``EvictionOrder``, a member of
``tierd.config.EvictionPolicy`` and a line in ``make_order``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, TypeVar

from tierd.config import EvictionPolicy
from tierd.policies.base import EvictionOrder
from tierd.policies.lru import LruOrder

__all__ = ["EvictionOrder", "LruOrder", "make_order"]

K = TypeVar("K", bound=Hashable)


def make_order(policy: EvictionPolicy, entries: dict[K, Any]) -> EvictionOrder[K]:
    """The eviction order of one tier of one namespace (or of the disk), over ``entries``: the
    residency's dict of that tier's pages."""
    if policy is EvictionPolicy.LRU:
        return LruOrder(entries)
    raise ValueError(f"no eviction order for policy {policy!r}")
