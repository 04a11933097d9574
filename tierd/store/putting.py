"""Putting pages into a memory tier: batches of a chain, room made by eviction, copies run.

Used by ``PageStore.put`` and by the remote tier's fills (pages found remotely continue the local
prefix in dram). ``config`` bounds a batch and how long a put waits for room.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from tierd.config import StoreConfig
from tierd.errors import ResourceExhausted, TierdError, Unavailable
from tierd.keys import PageKey
from tierd.store.assembly import Parts
from tierd.store.flushing import disk_failure_note
from tierd.store.remote_link import fill_from_remote
from tierd.tier import Tier

log = logging.getLogger(__name__)


def store_pages(parts: Parts, config: StoreConfig, ns_id: int, tier: Tier, keys: list[PageKey],
                views: Sequence[memoryview], ticket: int | None,
                parent: PageKey | None = None) -> tuple[int, int]:
    """Copy pages (a chain after ``parent``) into ``tier`` in batches; ``(stored, skipped)``."""
    stored = skipped = 0
    # A batch never needs more free slots than the region has.
    batch = min(config.put_batch_pages, parts.manager.num_slots(ns_id, tier))
    deadline_s = time.monotonic() + config.acquire_timeout_s
    for start in range(0, len(keys), batch):
        done, dup = _put_batch(parts, ns_id, tier, keys[start:start + batch],
                               list(views[start:start + batch]), ticket, deadline_s,
                               keys[start - 1] if start else parent)
        stored += done
        skipped += dup
    return stored, skipped


def fill_dram_from_remote(parts: Parts, config: StoreConfig, ns_id: int,
                          keys: Sequence[PageKey]) -> None:
    """Put the remote tier's pages of the keys after the local cached prefix into dram
    (best effort: a miss, a failure or no room leaves the prefix as it is)."""
    if parts.remote is None:
        return
    present = parts.manager.cached_prefix(ns_id, keys)
    found, pages = fill_from_remote(parts.remote, parts.manager, ns_id, keys, present)
    if not found:
        return
    try:
        # The remote's pages continue the local prefix: its last page is their parent.
        store_pages(parts, config, ns_id, Tier.DRAM, found, pages, None,
                    keys[present - 1] if present else None)
    except TierdError as exc:
        log.warning("%d page(s) read from the remote tier found no room in dram: %s",
                    len(found), exc)


def _put_batch(parts: Parts, ns_id: int, tier: Tier, keys: list[PageKey],
               views: list[memoryview], ticket: int | None, deadline_s: float,
               parent: PageKey | None) -> tuple[int, int]:
    by_key = dict(zip(keys, views))
    while True:
        plan, skipped, needed, persist = parts.manager.plan_store(ns_id, tier, keys, ticket, parent)
        parts.runner.start_all([persist])
        if not needed:
            break
        if not parts.evictor.make_room(ns_id, tier, needed, deadline_s):
            raise ResourceExhausted(
                f"namespace {ns_id} cannot make {needed} {tier.label} slots free: its "
                f"{parts.manager.num_slots(ns_id, tier)} slots are leased or in flight; release "
                "leases or put fewer pages" + disk_failure_note(parts.disk))
    if plan is None:
        return 0, skipped
    outcomes = parts.runner.run(plan, [by_key[move.key] for move in plan.moves])
    if not all(outcomes):
        raise Unavailable(f"{outcomes.count(False)} of {len(plan)} pages could not be copied into "
                          f"{tier.label} (the store is closing, or see the log)")
    return len(plan), skipped
