"""Acquire's rounds: pin what is in the target tier, move the rest up, lease what arrived.

A namespace without a window takes one round, as it always did: a page that could not be moved
ends the leased prefix. In a windowed namespace a page of the window that could not be moved
leaves a shorter servable prefix whose own window reaches pages the round never moved (a page
that failed its checksum is dropped, so the cached prefix ends before it now); another round
promotes that window, up to ``MAX_WINDOW_ROUNDS`` rounds, all within the one deadline.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Sequence

from tierd.keys import PageKey
from tierd.store.manager import Manager
from tierd.store.promotion import Promoter
from tierd.tier import Tier
from tierd.values import Lease

MAX_WINDOW_ROUNDS = 3


def acquire_rounds(manager: Manager, promoter: Promoter, ns_id: int, keys: Sequence[PageKey],
                   target: Tier, deadline_s: float, ttl_s: float, owner: str | None, wait_s: float,
                   release: Sequence[int] = ()) -> Lease:
    """The READ lease of ``PageStore.acquire`` (the ``release`` leases end in the first round)."""
    rounds_left = MAX_WINDOW_ROUNDS
    while True:
        hold, present, todo = manager.begin_acquire(ns_id, keys, target, release)
        futures = promoter.schedule(ns_id, todo, target, deadline_s, hold)
        _, pending = cf.wait(futures, timeout=max(0.0, deadline_s - time.monotonic()))
        lease = manager.finish_acquire(hold, keys, present, len(pending), ttl_s, owner, wait_s)
        rounds_left -= 1
        if (lease.window is None or lease.prefix_pages == present or rounds_left == 0
                or time.monotonic() >= deadline_s):
            return lease
        manager.release(lease.lease_id)
        release = ()
