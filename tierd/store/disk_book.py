"""The disk tier's bookkeeping: residency, byte budget, reads in progress and deferred deletes.

Owned by the manager and used under its lock only; never touches LMDB. Deletes it decides are
collected here and handed to the disk tier by whoever drains them, outside the lock.
"""

from __future__ import annotations

import itertools
import logging
import time

from tierd.config import StoreConfig, WritePolicy
from tierd.index.chains import DiskChains
from tierd.index.residency import DiskResidency
from tierd.keys import PageKey
from tierd.store.durability import DurabilityTracker
from tierd.store.namespace_book import NamespaceBook
from tierd.store.plans import ON_DISK, Move, Place
from tierd.tier import Tier
from tierd.tiers.page_format import split_disk_key

log = logging.getLogger(__name__)

# Under sustained pressure every page write can be refused: log that at most this often, with a
# count, rather than once per page (the count is also in Stats as disk_writes_refused).
REFUSED_WRITES_LOG_INTERVAL_S = 10.0


class DiskBook:
    """Pages on disk, writes in flight and who waits for them, the budget in force, and what must
    not be evicted right now."""

    def __init__(self, config: StoreConfig, durability: DurabilityTracker,
                 chains: DiskChains | None = None) -> None:
        self._config = config
        self._write_through = config.write_policy is WritePolicy.WRITE_THROUGH
        self.durability = durability
        self._seq = itertools.count(1)  # written into page headers: recency on warm restart
        self.residency = DiskResidency(config.eviction_policy, chains)
        # The configured capacity, lowered when LMDB's map filled before the budget did.
        self.budget_bytes = config.disk.capacity_bytes
        # Disk keys being read: never victims meanwhile (count of readers).
        self.reading: dict[bytes, int] = {}
        # Pages deleted while their write was queued: dropped once it commits.
        self.delete_after_write: set[bytes] = set()
        self.deferred_deletes: list[tuple[int, PageKey]] = []
        self.evictions = 0
        self.evictions_with_children = 0  # of pages with a child on disk
        self.writes_refused = 0
        self._refused_logged_at_s = -REFUSED_WRITES_LOG_INTERVAL_S
        self._refused_since_log = 0

    @property
    def capacity_bytes(self) -> int:
        return self._config.disk.capacity_bytes

    def room(self, num_bytes: int) -> bool:
        """Make the budget hold ``num_bytes`` more, evicting pages if needed."""
        over = self.residency.used_bytes + num_bytes - self.budget_bytes
        if over > 0:
            self.evict(over)
        return self.residency.used_bytes + num_bytes <= self.budget_bytes

    def evict(self, num_bytes: int) -> int:
        """Drop stored pages worth at least ``num_bytes`` (never ones being read); bytes freed."""
        freed = 0
        chains = self.residency.chains
        for dkey in self.residency.victims(num_bytes, exclude=self.reading.keys()):
            freed += self.residency.pages[dkey]
            self.evictions_with_children += chains.children_here(dkey) > 0
            self.drop(dkey)
            self.evictions += 1
        return freed

    def evict_to_watermark(self) -> int:
        """Above the high watermark: evict down to the low one. Pages evicted."""
        disk = self._config.disk
        used = self.residency.used_bytes
        if used <= disk.high_watermark * self.budget_bytes:
            return 0
        before = self.evictions
        self.evict(used - int(disk.low_watermark * self.budget_bytes))
        return self.evictions - before

    def drop(self, dkey: bytes) -> bool:
        """Forget a stored page and queue its removal from LMDB."""
        if not self.residency.remove(dkey):
            return False
        self.deferred_deletes.append(split_disk_key(dkey))
        return True

    def forget(self, dkey: bytes) -> bool:
        """A delete: drop the stored page, or drop it once its queued write commits; whether the
        disk held or was writing it."""
        if self.drop(dkey):
            return True
        if dkey in self.residency.pending:
            self.delete_after_write.add(dkey)
            return True
        return False

    def begin_read(self, dkey: bytes) -> None:
        self.reading[dkey] = self.reading.get(dkey, 0) + 1

    def end_read(self, dkey: bytes, ok: bool) -> None:
        """A read ended; a failed one (corrupt: the disk tier dropped it; missing: the index was
        stale) removes the page from the index."""
        left = self.reading[dkey] - 1
        if left:
            self.reading[dkey] = left
        else:
            del self.reading[dkey]
        if not ok:
            self.residency.remove(dkey)

    def complete_write(self, dkey: bytes, ok: bool) -> None:
        """A queued write committed (``ok``) or failed; a page deleted meanwhile goes again."""
        self.residency.complete_write(dkey, ok)
        if dkey in self.delete_after_write:
            self.delete_after_write.discard(dkey)
            if ok:
                self.drop(dkey)

    def resume_after(self, seq: int) -> None:
        """Pages up to ``seq`` were found on disk: new writes number after them."""
        self._seq = itertools.count(max(seq + 1, next(self._seq)))

    def persist_move(self, book: NamespaceBook, tier: Tier, key: PageKey, slot: int) -> Move | None:
        """Pin ``slot`` and account a disk write of its page; None when the page is on disk or
        queued already, or the budget refused it (counted)."""
        dkey = book.dkey(key)
        if dkey in self.residency.pages or dkey in self.residency.pending:
            return None
        if not self.room(book.stored_bytes):
            self.refuse_write(tier)
            return None
        self.residency.begin_write(dkey, book.stored_bytes)
        book.mem[tier].pin(slot)
        return Move(key, Place(tier, slot), ON_DISK, next(self._seq), book.chains.parent_of(key))

    def eviction_writes(self, book: NamespaceBook, tier: Tier,
                        dirty: list[tuple[PageKey, int]]) -> list[Move]:
        """``persist_move`` of each dirty victim, in order; under ``book.keep_chains`` a page
        whose child's write was refused is not written either (it stays while its child does)."""
        moves: list[Move] = []
        staying: set[PageKey] = set()
        for key, slot in dirty:
            move = None if key in staying else self.persist_move(book, tier, key, slot)
            if move is not None:
                moves.append(move)
            elif book.keep_chains and (parent := book.chains.parent_of(key)) is not None:
                staying.add(parent)
        return moves

    def flush_moves(self, book: NamespaceBook) -> tuple[list[Move], list[bytes], int]:
        """Every page ``book`` holds in memory that is not on disk: ``(moves, queued, refused)``,
        a disk write for each not queued yet (from dram where both tiers hold it), the disk keys
        of all that are queued now, and how many the budget refused."""
        moves: list[Move] = []
        queued: list[bytes] = []
        refused = 0
        for tier in (Tier.DRAM, Tier.HBM):
            res = book.mem.get(tier)
            for key, slot in list(res.slots.items()) if res is not None else ():
                move = self.persist_move(book, tier, key, slot)
                if move is not None:
                    moves.append(move)
                dkey = book.dkey(key)
                if dkey in self.residency.pending:
                    queued.append(dkey)
                elif dkey not in self.residency.pages:
                    refused += 1
        return moves, queued, refused

    def not_on_disk(self, book: NamespaceBook) -> int:
        """Pages ``book`` holds in memory that are not stored on disk (queued ones included):
        what a close now would lose."""
        keys: set[PageKey] = set()
        for res in book.mem.values():
            keys.update(key for key in res.slots if book.dkey(key) not in self.residency.pages)
        return len(keys)

    def committed(self, book: NamespaceBook, tier: Tier, key: PageKey, slot: int,
                  ticket: int | None, persists: list[Move]) -> None:
        """A page is cached in ``tier``: under write_through queue it for disk, ``ticket`` waits."""
        if not self._write_through:
            return
        move = self.persist_move(book, tier, key, slot)
        if move is not None:
            persists.append(move)
        self.watch(book, key, ticket)

    def watch(self, book: NamespaceBook, key: PageKey, ticket: int | None) -> None:
        """Make ``ticket`` wait for ``key``'s disk write; fail it when the page is neither on disk
        nor queued (disk budget full, or another put of the same key not published yet)."""
        if ticket is None:
            return
        dkey = book.dkey(key)
        if dkey in self.residency.pending:
            self.durability.watch(ticket, dkey)
        elif dkey not in self.residency.pages:
            self.durability.fail(ticket)

    def take_deletes(self) -> list[tuple[int, PageKey]]:
        deletes, self.deferred_deletes = self.deferred_deletes, []
        return deletes

    def lower_budget(self) -> None:
        """LMDB's map filled: the budget drops below what is stored so eviction frees map space."""
        lowered = int(self.residency.used_bytes * self._config.disk.map_full_budget_factor)
        if lowered < self.budget_bytes:
            self.budget_bytes = lowered
            log.warning("the LMDB map is full at %d bytes stored: the disk budget is now %d bytes "
                        "(raise disk.map_headroom to use the configured capacity)",
                        self.residency.used_bytes, lowered)

    def refuse_write(self, tier: Tier) -> None:
        """Count a page write the budget refused; warn at most once per interval."""
        self.writes_refused += 1
        self._refused_since_log += 1
        now_s = time.monotonic()
        if now_s - self._refused_logged_at_s >= REFUSED_WRITES_LOG_INTERVAL_S:
            log.warning("disk budget full of pages being written: %d page write(s) refused since the "
                        "last warning (latest from %s; those pages stay in memory only); raise the "
                        "disk capacity or write less at once", self._refused_since_log, tier.label)
            self._refused_logged_at_s = now_s
            self._refused_since_log = 0
