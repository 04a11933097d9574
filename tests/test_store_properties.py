"""Property-based test of the page store over random operation sequences.

Invariants checked after every step (under the store lock, while background maintenance runs):
no slot is ever held twice, used bytes never exceed a tier's capacity, leased pages are never
evicted or overwritten, and every page the index lists reads back, from the tier it names, with
the bytes that were put. With a disk large enough, no page is ever lost (only disk drops pages).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from store_helpers import SPEC, small_config

from tierd.config import WritePolicy
from tierd.errors import ResourceExhausted
from tierd.index.leases import LeaseKind
from tierd.keys import chain_keys
from tierd.store import PageStore
from tierd.tier import MEMORY_TIERS, Tier
from tierd.tiers.disk import ReadStatus

NUM_KEYS = 40


class StoreMachine(RuleBasedStateMachine):
    disk_pages = 256  # holds every page: nothing may be lost

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        policy = WritePolicy.WRITE_THROUGH if self.disk_pages % 2 else WritePolicy.WRITE_BACK
        self.store = PageStore(small_config(Path(self.tmp.name), hbm_pages=6, dram_pages=10,
                                            disk_pages=self.disk_pages, write_policy=policy))
        self.store.open()
        self.ns = self.store.register(SPEC)
        tokens = np.arange(NUM_KEYS * SPEC.page_tokens, dtype=np.uint32)
        self.keys = chain_keys(self.ns.fingerprint, tokens, SPEC.page_tokens)
        rng = np.random.default_rng(7)
        self.data = {k: rng.integers(0, 256, SPEC.page_bytes, dtype=np.uint8).tobytes() for k in self.keys}
        self.cached: set[bytes] = set()   # put or committed, not deleted
        self.maybe: set[bytes] = set()    # in a put that failed part-way: earlier batches stored
        self.leases: dict[int, tuple] = {}

    def teardown(self) -> None:
        self.store.close()
        self.tmp.cleanup()

    # -- operations ------------------------------------------------------------------------------
    @rule(idx=st.lists(st.integers(0, NUM_KEYS - 1), min_size=1, max_size=12),
          tier=st.sampled_from(MEMORY_TIERS))
    def put(self, idx: list[int], tier: Tier) -> None:
        keys = [self.keys[i] for i in idx]
        try:
            self.store.put(self.ns.ns_id, keys, [self.data[k] for k in keys], tier=tier)
        except ResourceExhausted:
            self.maybe.update(keys)  # every slot leased: batches before the failing one are cached
            return
        self.cached.update(keys)

    @rule(start=st.integers(0, NUM_KEYS - 1), n=st.integers(1, 6), tier=st.sampled_from(MEMORY_TIERS))
    def acquire(self, start: int, n: int, tier: Tier) -> None:
        keys = self.keys[start:start + n]
        try:
            lease = self.store.acquire(self.ns.ns_id, keys, tier, timeout_s=10, ttl_s=60)
        except ResourceExhausted:
            return
        assert list(lease.keys) == keys[:len(lease.keys)]
        self.leases[lease.lease_id] = (lease, None)

    @rule(n=st.integers(1, 3), idx=st.lists(st.integers(0, NUM_KEYS - 1), min_size=3, max_size=3))
    def allocate_and_commit(self, n: int, idx: list[int]) -> None:
        try:
            lease = self.store.allocate(self.ns.ns_id, n, ttl_s=60)
        except ResourceExhausted:
            return
        region = self.store.region(self.ns.ns_id, Tier.HBM)
        keys = list(dict.fromkeys(self.keys[i] for i in idx))[:n]
        for key, slot in zip(keys, lease.slots):
            region.write_slot(slot, memoryview(self.data[key]))
        self.store.commit(lease.lease_id, keys, lease.slots[:len(keys)])
        self.cached.update(keys)
        self.store.release(lease.lease_id)

    @precondition(lambda self: self.leases)
    @rule(pick=st.integers(0, 1000))
    def release(self, pick: int) -> None:
        lease_id = sorted(self.leases)[pick % len(self.leases)]
        self.store.release(lease_id)
        del self.leases[lease_id]

    @rule(start=st.integers(0, NUM_KEYS - 1), n=st.integers(1, 8))
    def get(self, start: int, n: int) -> None:
        keys = self.keys[start:start + n]
        for key, page in zip(keys, self.store.get(self.ns.ns_id, keys)):
            assert bytes(page) == self.data[key]

    @rule(idx=st.lists(st.integers(0, NUM_KEYS - 1), min_size=1, max_size=3))
    def delete(self, idx: list[int]) -> None:
        keys = [self.keys[i] for i in idx]
        leased = {k for lease, _ in self.leases.values() for k in lease.keys}
        keys = [k for k in keys if k not in leased]  # leased pages are checked by the invariant
        self.store.delete(self.ns.ns_id, keys)
        self.cached.difference_update(keys)
        self.maybe.difference_update(keys)

    @rule()
    def flush(self) -> None:
        try:
            self.store.flush(timeout_s=30)
        except ResourceExhausted:
            assert self.disk_pages < 256  # only a disk smaller than the cached pages refuses

    @rule()
    def maintenance(self) -> None:
        self.store._maintenance.run_once()

    # -- invariants ------------------------------------------------------------------------------
    @invariant()
    def slots_are_never_shared_and_capacity_holds(self) -> None:
        core = self.store._core
        with core.lock:
            for st_ in core.namespaces.values():
                for tier, res in st_.mem.items():
                    held = list(res.slots.values()) + list(res.pending.values())
                    held += [s for rec in core.leases._leases.values()
                             if rec.ns_id == st_.ns.ns_id and rec.tier is tier for s in rec.open_slots]
                    held += list(core.orphans.get((st_.ns.ns_id, tier), ()))
                    assert len(held) == len(set(held)), f"{tier.label}: a slot is held twice"
                    assert len(held) == res.allocator.num_used, f"{tier.label}: slots leaked"
                    assert all(res.allocator.is_allocated(s) for s in held)
            for tier in Tier:
                assert core.used_bytes_locked(tier) <= self.store.config.tier_capacity_bytes(tier)

    @invariant()
    def leased_pages_stay_put(self) -> None:
        for lease, _ in self.leases.values():
            if lease.kind is not LeaseKind.READ:
                continue
            region = self.store.region(self.ns.ns_id, lease.tier)
            for key, slot in zip(lease.keys, lease.slots):
                assert bytes(region.slot_view(slot)) == self.data[key]

    @invariant()
    def every_listed_page_reads_back_from_its_tier(self) -> None:
        core = self.store._core
        st_ = core.namespaces[self.ns.ns_id]
        with core.lock:
            where = {k: (t, st_.mem[t].slots[k] if t is not Tier.DISK else -1) for k in self.keys
                     for t in (core.fastest_tier_locked(st_, k),) if t is not None}
            for k in where:
                if where[k][0] is not Tier.DISK:
                    st_.mem[where[k][0]].pin(where[k][1])
        try:
            for key, (tier, slot) in where.items():
                if tier is Tier.DISK:
                    out = bytearray(SPEC.page_bytes)
                    status = core.disk.read_into(self.ns.ns_id, key, memoryview(out))
                    # A page evicted from disk between the snapshot and the read is a miss, never wrong bytes.
                    assert status is ReadStatus.OK or self.disk_pages < 256
                    assert status is not ReadStatus.OK or bytes(out) == self.data[key]
                else:
                    assert bytes(st_.regions[tier].slot_view(slot)) == self.data[key]
        finally:
            with core.lock:
                for key, (tier, slot) in where.items():
                    if tier is not Tier.DISK:
                        core.unpin_locked(st_, tier, slot)
        if self.disk_pages >= 256:
            assert self.cached <= set(where), "a page was lost although the disk had room"
            assert set(where) <= self.cached | self.maybe, "a deleted page came back"


class SmallDiskMachine(StoreMachine):
    disk_pages = 13  # odd: write_through; small: disk eviction drops pages


SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
TestStoreProperties = StoreMachine.TestCase
TestStoreProperties.settings = SETTINGS
TestSmallDiskProperties = SmallDiskMachine.TestCase
TestSmallDiskProperties.settings = SETTINGS
