"""The page store's read side: Lookup, Get (bytes out) and Prefetch (background promotion)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from tierd.errors import InvalidArgument
from tierd.keys import PageKey, check_keys
from tierd.store_core import NamespaceState, StoreCore
from tierd.store_types import LookupResult
from tierd.tier import MEMORY_TIERS, Tier
from tierd.tiers.disk import ReadStatus


ALL_TIERS: tuple[Tier, ...] = tuple(Tier)


class StoreReads:
    """Mixed into ``PageStore``; relies on its ``_require``, ``_ready_state`` and ``_promoter``."""

    def lookup(self, ns_id: int, keys: Sequence[PageKey]) -> LookupResult:
        """Length of the longest cached prefix of ``keys`` and the fastest tier of each hit.

        Touches the hits for eviction; moves nothing. This is the per-request hot path, so the
        loop works on the residency dicts directly (pop + re-insert = move to the MRU end).
        """
        core: StoreCore = self._require()  # type: ignore[attr-defined]
        st = core.state(ns_id)
        keys = check_keys(keys)
        tiers: list[Tier] = []
        append = tiers.append
        with core.lock:
            memory = [(tier, st.mem[tier].slots) for tier in MEMORY_TIERS if tier in st.mem]
            on_disk, prefix = core.disk_res.pages, st.prefix
            for key in keys:
                for tier, slots in memory:
                    slot = slots.pop(key, None)
                    if slot is not None:
                        slots[key] = slot
                        append(tier)
                        break
                else:
                    dkey = prefix + key
                    size = on_disk.pop(dkey, None)
                    if size is None:
                        break
                    on_disk[dkey] = size
                    append(Tier.DISK)
            self._count_locked(core, tiers, missed=len(tiers) < len(keys))
        return LookupResult(len(tiers), tuple(tiers))

    @staticmethod
    def _count_locked(core: StoreCore, tiers: list[Tier], missed: bool) -> None:
        """A hit counts in the tier that served it and a miss in each faster tier it passed;
        the first key not cached counts a miss in every tier."""
        served = {tier: tiers.count(tier) for tier in ALL_TIERS}
        passed = 0  # hits served below the tier being counted
        for tier in reversed(ALL_TIERS):
            core.counters[tier].hits += served[tier]
            core.counters[tier].misses += passed + int(missed)
            passed += served[tier]

    def get(self, ns_id: int, keys: Sequence[PageKey]) -> list[bytearray]:
        """Copies of the pages of the longest cached prefix of ``keys``, in order."""
        st: NamespaceState = self._require().state(ns_id)  # type: ignore[attr-defined]
        outs = [bytearray(st.page_bytes) for _ in range(len(keys))]
        got = self.get_into(ns_id, keys, [memoryview(out) for out in outs])
        return outs[:got]

    def get_into(self, ns_id: int, keys: Sequence[PageKey], outs: Sequence[memoryview]) -> int:
        """Copy the longest cached prefix of ``keys`` into ``outs``; returns how many were copied.

        ``outs[i]`` must be a writable buffer of ``page_bytes``. Pages are read from their fastest
        tier without being promoted. A disk page failing its checksum ends the prefix.
        """
        core: StoreCore = self._require()  # type: ignore[attr-defined]
        st = core.state(ns_id)
        keys = check_keys(keys)
        if len(outs) < len(keys):
            raise InvalidArgument(f"got {len(keys)} keys but only {len(outs)} output buffers")
        views = [_writable(out, st.page_bytes, i) for i, out in enumerate(outs[:len(keys)])]
        plan = self._pin_prefix(core, st, keys)
        read_ok: list[bool] = []
        try:
            read_ok = self._copy_out(core, st, plan, views)
        finally:
            copied = read_ok.index(False) if False in read_ok else len(read_ok)
            self._unpin_plan(core, st, plan, read_ok, copied)
        return copied

    def _copy_out(self, core: StoreCore, st: NamespaceState,
                  plan: list[tuple[Tier, int, PageKey]], views: list[memoryview]) -> list[bool]:
        """Copy every planned page; disk pages on the reader pool when there are several (the
        checksum holds the GIL, the copy does not, so two readers overlap)."""
        ok = [True] * len(plan)
        disk_reads = [i for i, (tier, _, _) in enumerate(plan) if tier is Tier.DISK]
        for i, (tier, slot, _) in enumerate(plan):
            if tier is not Tier.DISK:
                st.regions[tier].read_slot(slot, views[i])

        def read(indices: list[int]) -> list[bool]:
            return [core.disk.read_into(st.ns.ns_id, plan[i][2], views[i]) is ReadStatus.OK
                    for i in indices]

        # One interleaved share per reader thread: a future per page costs more than it overlaps.
        num_shares = min(len(disk_reads), self.config.disk.reader_threads)  # type: ignore[attr-defined]
        shares = [disk_reads[k::num_shares] for k in range(num_shares)] if num_shares > 1 else [disk_reads]
        pool = self._readers  # type: ignore[attr-defined]
        results = pool.map(read, shares) if len(shares) > 1 else map(read, shares)
        for share, share_ok in zip(shares, results):
            for i, good in zip(share, share_ok):
                ok[i] = good
        return ok

    def _pin_prefix(self, core: StoreCore, st: NamespaceState,
                    keys: list[PageKey]) -> list[tuple[Tier, int, PageKey]]:
        plan: list[tuple[Tier, int, PageKey]] = []
        with core.lock:
            for key in keys:
                tier = core.fastest_tier_locked(st, key)
                if tier is None:
                    break
                core.touch_locked(st, tier, key)
                if tier is Tier.DISK:
                    core.begin_disk_read_locked(st.dkey(key))
                    plan.append((tier, -1, key))
                else:
                    slot = st.mem[tier].slots[key]
                    st.mem[tier].pin(slot)
                    plan.append((tier, slot, key))
            self._count_locked(core, [tier for tier, _, _ in plan], missed=len(plan) < len(keys))
        return plan

    def _unpin_plan(self, core: StoreCore, st: NamespaceState, plan: list[tuple[Tier, int, PageKey]],
                    read_ok: list[bool], copied: int) -> None:
        """Release the plan's pins; a disk read that failed drops that page from the index."""
        with core.lock:
            for i, (tier, slot, key) in enumerate(plan):
                if i < copied:
                    core.counters[tier].bytes_out += st.page_bytes
                if tier is Tier.DISK:
                    core.end_disk_read_locked(st.dkey(key), ok=read_ok[i] if i < len(read_ok) else True)
                else:
                    core.unpin_locked(st, tier, slot)

    def prefetch(self, ns_id: int, keys: Sequence[PageKey], target_tier: Tier) -> int:
        """Start moving the cached prefix of ``keys`` up into ``target_tier``; returns at once
        with the number of pages that will move."""
        st = self._ready_state(ns_id)  # type: ignore[attr-defined]
        keys = check_keys(keys)
        if target_tier is Tier.DISK:
            raise InvalidArgument("prefetch moves pages up into hbm or dram, not disk")
        st.residency(target_tier)
        deadline_s = time.monotonic() + self.config.acquire_timeout_s  # type: ignore[attr-defined]
        _, futures = self._promoter.schedule(st, keys, target_tier, deadline_s)  # type: ignore[attr-defined]
        return len(futures)


def _writable(out: object, page_bytes: int, index: int) -> memoryview:
    view = memoryview(out) if not isinstance(out, np.ndarray) else memoryview(out.reshape(-1).view(np.uint8))
    if view.readonly:
        raise InvalidArgument(f"outs[{index}] is read-only; give writable buffers")
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    if view.nbytes != page_bytes:
        raise InvalidArgument(f"outs[{index}] holds {view.nbytes} bytes; pages are {page_bytes} bytes")
    return view
