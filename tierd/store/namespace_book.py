"""One namespace's bookkeeping: its residency per memory tier, its chains and its disk key prefix.

Owned by the manager and used under its lock only.
"""

from __future__ import annotations

from collections.abc import Container

from tierd.errors import FailedPrecondition
from tierd.index.chains import ChainIndex
from tierd.index.residency import MemoryResidency
from tierd.keys import PageKey
from tierd.spec import Namespace
from tierd.store.plans import Move, Place
from tierd.tier import MEMORY_TIERS, Tier
from tierd.tiers.cold_pages import stored_payload_bytes
from tierd.tiers.page_format import HEADER_BYTES, disk_key


class NamespaceBook:
    """A namespace, its residency tables (for the memory tiers it has a region in) and its chains.

    ``keep_chains`` (prefix-aware eviction): a demotion never drops a page before the victims
    below it in its chain that stay (no room below, a write queued) or leave later (a copy).
    """

    def __init__(self, ns: Namespace, chains: ChainIndex | None = None,
                 keep_chains: bool = False) -> None:
        self.ns = ns
        self.chains = chains if chains is not None else ChainIndex()
        self.keep_chains = keep_chains
        self.mem: dict[Tier, MemoryResidency] = {}
        self.prefix = disk_key(ns.ns_id, bytes(16))[:-16]
        self.page_bytes = ns.page_bytes
        # What one page takes of the disk budget: a cold format (fp8) stores fewer bytes.
        self.stored_bytes = HEADER_BYTES + stored_payload_bytes(ns.spec)
        # Slots removed from the index (or released) while pinned: the last unpin frees them.
        self.orphans: dict[Tier, set[int]] = {}

    @property
    def ns_id(self) -> int:
        return self.ns.ns_id

    def dkey(self, key: PageKey) -> bytes:
        return self.prefix + key

    def residency(self, tier: Tier) -> MemoryResidency:
        res = self.mem.get(tier)
        if res is None:
            raise FailedPrecondition(f"namespace {self.ns.ns_id} has no {tier.label} region: the "
                                     f"{tier.label} tier is disabled (capacity 0) in this daemon's config")
        return res

    def memory_tier_of(self, key: PageKey) -> Tier | None:
        """The fastest memory tier holding ``key`` (published), or ``None``."""
        for tier in MEMORY_TIERS:
            res = self.mem.get(tier)
            if res is not None and key in res.slots:
                return tier
        return None

    def unpin(self, tier: Tier, slot: int) -> None:
        """Unpin ``slot``; an orphaned slot is freed by its last unpin."""
        res = self.mem[tier]
        res.unpin(slot)
        orphans = self.orphans.get(tier)
        if orphans and slot in orphans and not res.is_pinned(slot):
            orphans.discard(slot)
            res.unreserve([slot])

    def orphan_or_free(self, tier: Tier, slot: int) -> None:
        """Give back a reserved slot nobody publishes: now, or at its last unpin if pinned."""
        res = self.mem[tier]
        if res.is_pinned(slot):
            self.orphans.setdefault(tier, set()).add(slot)
        else:
            res.unreserve([slot])

    def forget(self, key: PageKey) -> bool:
        """A delete: drop ``key`` from every memory tier, cancel its pending stores; whether any
        tier held it or was storing it."""
        found = False
        for tier, res in self.mem.items():
            found |= self.remove_page(tier, key)
            found |= res.cancel_pending(key)
        return found

    def remove_page(self, tier: Tier, key: PageKey) -> bool:
        """Drop ``key`` from a memory tier; a pinned slot is freed by its last unpin."""
        res = self.mem[tier]
        slot = res.slots.get(key)
        if slot is None:
            return False
        res.remove(key)
        if res.is_pinned(slot):
            self.orphans.setdefault(tier, set()).add(slot)
        return True

    def choose_hbm_demotions(self, num_pages: int, on_disk: Container[bytes], fallback: bool = True
                             ) -> tuple[list[tuple[PageKey, int]], list[Move], int]:
        """Victims of hbm, split into ``(drops, moves, short)``: pages dram or the disk holds
        already (drop them), pages to copy into a free dram slot (pinned and reserved here), and
        how many found no dram slot."""
        hbm, dram = self.mem[Tier.HBM], self.mem[Tier.DRAM]
        drops: list[tuple[PageKey, int]] = []
        moves: list[Move] = []
        short = 0
        held = _Held(self.chains, self.keep_chains)
        for key, slot in hbm.victims(num_pages, fallback):
            if held.stays(key):
                continue
            if key in dram.slots or key in dram.pending:
                if held.drop_now(key):
                    drops.append((key, slot))
                continue
            got = dram.reserve(1)
            if got is None:
                if self.dkey(key) in on_disk and held.drop_now(key):
                    drops.append((key, slot))
                elif self.dkey(key) not in on_disk:
                    short += 1
                    held.stay(key)
                continue
            hbm.pin(slot)
            dram.begin_store(key, got[0])
            moves.append(Move(key, Place(Tier.HBM, slot), Place(Tier.DRAM, got[0])))
            held.later(key)
        return drops, moves, short

    def choose_dram_demotions(self, num_pages: int, on_disk: Container[bytes], queued: Container[bytes],
                              keep_dirty: bool, fallback: bool = True
                              ) -> tuple[list[tuple[PageKey, int]], list[tuple[PageKey, int]]]:
        """Victims of dram, split into ``(drops, dirty)``: clean pages (on disk, or in hbm; every
        page when ``keep_dirty`` is False, i.e. there is no disk) and pages to write first. Pages
        whose write is queued already are neither: they can go once it commits."""
        hbm = self.mem.get(Tier.HBM)
        drops: list[tuple[PageKey, int]] = []
        dirty: list[tuple[PageKey, int]] = []
        held = _Held(self.chains, self.keep_chains)
        for key, slot in self.mem[Tier.DRAM].victims(num_pages, fallback):
            dkey = self.dkey(key)
            if held.stays(key):
                continue
            if dkey in on_disk or (hbm is not None and key in hbm.slots) or not keep_dirty:
                if held.drop_now(key):
                    drops.append((key, slot))
            elif dkey not in queued:
                dirty.append((key, slot))
                held.later(key)
            else:
                held.stay(key)
        return drops, dirty


class _Held:
    """Within one demotion, under ``keep_chains``: parents of victims that stay in the tier stay
    too, and parents of victims that leave once a copy or write lands leave no sooner (a copy or
    write of their own, later in the same plan, is fine: a plan completes in order)."""

    def __init__(self, chains: ChainIndex, keep_chains: bool) -> None:
        self._chains = chains
        self._on = keep_chains
        self._staying: set[PageKey] = set()   # a child stays
        self._waiting: set[PageKey] = set()   # a child leaves later

    def stays(self, key: PageKey) -> bool:
        """True (and so does its parent) when a child of ``key`` stays."""
        if key in self._staying:
            self.stay(key)
            return True
        return False

    def drop_now(self, key: PageKey) -> bool:
        """Whether ``key`` may be dropped at once; if not it stays (and so does its parent)."""
        if key in self._waiting:
            self.stay(key)
            return False
        return True

    def stay(self, key: PageKey) -> None:
        parent = self._chains.parent_of(key) if self._on else None
        if parent is not None:
            self._staying.add(parent)

    def later(self, key: PageKey) -> None:
        parent = self._chains.parent_of(key) if self._on else None
        if parent is not None:
            self._waiting.add(parent)
