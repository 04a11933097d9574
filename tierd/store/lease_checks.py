"""Checks of lease requests (allocate, acquire, renew) before anything is reserved or pinned.

Each returns the checked values or raises the error the caller gets; nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from tierd.config import StoreConfig
from tierd.errors import InvalidArgument, ResourceExhausted
from tierd.keys import PageKey, check_keys
from tierd.store import windows
from tierd.store.manager import Manager
from tierd.tier import MEMORY_TIERS, Tier


def lease_ttl(config: StoreConfig, ttl_s: float | None) -> float:
    """The lease ttl asked for, or the configured default; ``InvalidArgument`` out of range."""
    if ttl_s is None:
        return config.lease_ttl_s
    if not 0 < ttl_s <= config.max_lease_ttl_s:
        raise InvalidArgument(f"lease ttl must be in (0, {config.max_lease_ttl_s}] s, got {ttl_s}")
    return ttl_s


def check_allocate(config: StoreConfig, manager: Manager, ns_id: int, num_pages: int,
                   ttl_s: float | None, tier: Tier) -> float:
    """The lease ttl of a valid allocate; ``InvalidArgument`` otherwise."""
    ttl = lease_ttl(config, ttl_s)
    if tier not in MEMORY_TIERS:
        raise InvalidArgument(f"allocate leases slots of a memory tier (hbm, dram), not {tier.label}")
    num_slots = manager.num_slots(ns_id, tier)
    if isinstance(num_pages, bool) or not isinstance(num_pages, int) or not 0 < num_pages <= num_slots:
        raise InvalidArgument(f"num_pages must be in 1..{num_slots} (the namespace's "
                              f"{tier.label} slots), got {num_pages!r}")
    return ttl


def check_acquire(config: StoreConfig, manager: Manager, ns_id: int, keys: Sequence[PageKey],
                  target_tier: Tier, ttl_s: float | None) -> tuple[list[PageKey], float]:
    """The checked keys and lease ttl of a valid acquire; the error otherwise."""
    keys = check_keys(keys)
    ttl = lease_ttl(config, ttl_s)
    if target_tier not in MEMORY_TIERS:
        raise InvalidArgument(f"acquire targets hbm or dram, not {target_tier.label}: only pages in "
                              "memory are addressable")
    if len(set(keys)) != len(keys):
        raise InvalidArgument("acquire keys repeat: a chain names each page once; pass each key once")
    num_slots = manager.num_slots(ns_id, target_tier)
    # A windowed namespace leases only the pages a continuation attends to: a long prefix fits.
    most = windows.max_attended(manager.namespace(ns_id).spec, len(keys))
    if most > num_slots:
        raise ResourceExhausted(f"cannot lease {most} pages: namespace {ns_id} has "
                                f"{num_slots} {target_tier.label} slots; acquire fewer at a time")
    return keys, ttl
