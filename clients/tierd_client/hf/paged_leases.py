"""The leases one paged request holds on tierd's hbm slots, from its start to its end.

READ leases pin cached pages (the reused prefix, and each page the request committed: once a
FILL slot is committed it belongs to the cache and is pinned again by an Acquire, so that it is
never evicted under the attention). FILL leases hold the slots the request writes and has not
committed yet (its partial last page among them). ``release_all`` ends every one of them; if
the worker dies first, the daemon ends them with its session.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from tierd.tier import Tier
from tierd_client.convert import now_s
from tierd_client.errors import NotFoundError, TierdRpcError
from tierd_client.hf.paged_errors import PagedCacheError, PageLostError
from tierd_client.sync import Lease, TierClient
from tierd_client.types import NamespaceHandle

log = logging.getLogger(__name__)


class RequestLeases:
    """Every lease of one request (not thread-safe: a request runs one step at a time).

    ``ttl_s`` and ``acquire_timeout_s``: what each Allocate / Acquire asks for (``None``: the
    daemon's defaults). Leases are renewed by ``keep_alive`` once half their TTL has passed.
    """

    def __init__(self, client: TierClient, ns: NamespaceHandle, ttl_s: float | None = None,
                 acquire_timeout_s: float | None = None) -> None:
        self._client = client
        self._ns = ns
        self._ttl_s = ttl_s
        self._timeout_s = acquire_timeout_s
        self._held: dict[int, Lease] = {}          # lease id -> lease, while not ended
        self._granted_ttl: dict[int, float] = {}   # lease id -> seconds it was granted for
        self._open: dict[int, set[int]] = {}       # FILL lease id -> its uncommitted slots
        self._fill_of: dict[int, Lease] = {}       # uncommitted slot -> its FILL lease

    @property
    def num_leases(self) -> int:
        return len(self._held)

    @property
    def expires_at_s(self) -> float:
        """When the first lease ends unless renewed (``time.monotonic()``; inf without leases)."""
        return min((lease.expires_at_s for lease in self._held.values()), default=math.inf)

    def _hold(self, lease: Lease) -> None:
        self._held[lease.lease_id] = lease
        self._granted_ttl[lease.lease_id] = max(0.0, lease.expires_at_s - now_s())

    def _forget(self, lease: Lease) -> None:
        self._held.pop(lease.lease_id, None)
        self._granted_ttl.pop(lease.lease_id, None)
        self._open.pop(lease.lease_id, None)

    def pin(self, keys: Sequence[bytes]) -> tuple[int, ...]:
        """READ-lease the longest cached prefix of ``keys`` in hbm (pages elsewhere are moved up);
        returns the hbm slots of those pages, in order (empty when the first is not cached)."""
        if not keys:
            return ()
        lease = self._client.acquire(self._ns, keys, Tier.HBM, timeout_s=self._timeout_s, ttl_s=self._ttl_s)
        if lease.num_pages:
            self._hold(lease)
        else:
            lease.release()  # the daemon made a lease of no page: it pins nothing, but counts
        return lease.slots

    def reserve(self, num_pages: int) -> tuple[int, ...]:
        """FILL-lease ``num_pages`` free hbm slots (the daemon evicts unpinned pages for them)."""
        lease = self._client.allocate(self._ns, num_pages, ttl_s=self._ttl_s, tier=Tier.HBM)
        self._hold(lease)
        self._open[lease.lease_id] = set(lease.slots)
        for slot in lease.slots:
            self._fill_of[slot] = lease
        return lease.slots

    def commit(self, keys: Sequence[bytes], slots: Sequence[int], parent: bytes | None = None) -> tuple[int, ...]:
        """Commit filled slots (``slots[i]`` holds the page of ``keys[i]``, a chain after the page
        ``parent``, ``None`` for a prompt's first page) and pin the pages again; returns the
        slots that hold them now (another one where the key was cached meanwhile). A FILL lease
        whose last open slot is committed ends in the same RPC."""
        runs = self._runs_by_lease(keys, slots)
        for n, (lease, run_keys, run_slots) in enumerate(runs):
            # Each run names the page before it, so the daemon learns one chain across leases.
            run_parent = parent if n == 0 else runs[n - 1][1][-1]
            still_open = self._open[lease.lease_id] - set(run_slots)
            lease.commit(run_keys, run_slots, release=not still_open, parent=run_parent)
            if still_open:
                self._open[lease.lease_id] = still_open
            else:
                self._forget(lease)
        pinned = self.pin(keys)
        if len(pinned) < len(keys):
            raise PageLostError(f"{len(keys) - len(pinned)} of the {len(keys)} pages just committed left hbm before "
                                "they could be pinned again (other workers press on hbm): give the daemon's hbm "
                                "tier more capacity or run fewer requests at once, then start the request again")
        return pinned

    def _runs_by_lease(self, keys: Sequence[bytes], slots: Sequence[int]
                       ) -> list[tuple[Lease, list[bytes], list[int]]]:
        """``keys`` / ``slots`` cut into runs of consecutive pages that share one FILL lease."""
        runs: list[tuple[Lease, list[bytes], list[int]]] = []
        for key, slot in zip(keys, slots, strict=True):
            lease = self._fill_of.pop(slot)
            if not runs or runs[-1][0] is not lease:
                runs.append((lease, [], []))
            runs[-1][1].append(key)
            runs[-1][2].append(slot)
        return runs

    def keep_alive(self) -> None:
        """Renew each lease past half of its granted TTL."""
        now = now_s()
        for lease_id, lease in list(self._held.items()):
            ttl = self._granted_ttl[lease_id]
            if lease.expires_at_s - now >= ttl / 2:
                continue
            try:
                lease.renew(self._ttl_s)
            except NotFoundError as exc:
                self._forget(lease)
                raise PagedCacheError(
                    f"lease {lease_id} of this request had ended ({exc.details}): its TTL ran out between steps "
                    "or the daemon restarted, so its pages may be gone; close the request and begin a new one, "
                    "and give PagedOptions.lease_ttl_s more time or call keep_alive() while idle") from None

    def release_all(self) -> None:
        """End every lease (unfilled slots go back, pins go). A lease that had ended already
        (TTL, session) is skipped; the first other error is raised once all were tried."""
        failure: TierdRpcError | None = None
        for lease in list(self._held.values()):
            try:
                lease.release()
            except NotFoundError as exc:
                log.warning("lease %d had already ended: %s", lease.lease_id, exc.details)
            except TierdRpcError as exc:
                failure = failure or exc
            self._forget(lease)
        self._fill_of.clear()
        if failure is not None:
            raise failure
