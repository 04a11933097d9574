"""Eviction policies: the order in which a tier gives up its pages (one file per policy).

A new policy is a new file with a class satisfying ``EvictionOrder``, a member of
``tierd.config.EvictionPolicy`` and a line in ``make_order``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

from tierd.config import EvictionPolicy
from tierd.policies.base import EvictionOrder
from tierd.policies.lru import LruOrder

__all__ = ["EvictionOrder", "LruOrder", "make_order"]

K = TypeVar("K", bound=Hashable)


def make_order(policy: EvictionPolicy) -> EvictionOrder[K]:
    """A fresh, empty eviction order for one tier of one namespace (or for the disk)."""
    if policy is EvictionPolicy.LRU:
        return LruOrder()
    raise ValueError(f"no eviction order for policy {policy!r}")
