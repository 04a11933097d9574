"""Property-based test of the page store over random operation sequences, on each engine.

Invariants checked after every step (through the store's public inspection surfaces, while
background maintenance runs): no slot is ever held twice, used bytes never exceed a tier's
capacity, leased pages are never evicted or overwritten, and every page the index lists reads
back with the bytes that were put. With a disk large enough, no page is ever lost (only disk
drops pages).
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
from tierd.keys import chain_keys
from tierd.store import PageStore
from tierd.tier import LOCAL_TIERS, MEMORY_TIERS, Tier
from tierd.values import LeaseKind

NUM_KEYS = 40


class StoreMachine(RuleBasedStateMachine):
    disk_pages = 256  # holds every page: nothing may be lost
    device = "cpu"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        policy = WritePolicy.WRITE_THROUGH if self.disk_pages % 2 else WritePolicy.WRITE_BACK
        self.store = PageStore(small_config(Path(self.tmp.name), hbm_pages=6, dram_pages=10,
                                            disk_pages=self.disk_pages, write_policy=policy,
                                            device=self.device))
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
        keys = list(dict.fromkeys(self.keys[i] for i in idx))[:n]
        self.store.write_slots(lease.lease_id, lease.slots[:len(keys)], [self.data[k] for k in keys])
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
        self.store.run_maintenance()

    # -- invariants ------------------------------------------------------------------------------
    @invariant()
    def slots_are_never_shared_and_capacity_holds(self) -> None:
        index = self.store.inspect()
        for (_ns_id, tier), region in index.regions.items():
            held = [*region.pages.values(), *region.pending.values(), *region.fill_slots,
                    *region.orphan_slots]
            assert len(held) == len(set(held)), f"{tier.label}: a slot is held twice"
            assert len(held) == region.used_slots, f"{tier.label}: slots leaked"
            assert all(0 <= slot < region.num_slots for slot in held)
            assert set(region.pins) <= set(held), f"{tier.label}: a free slot is pinned"
        for tier in LOCAL_TIERS:
            assert index.used_bytes[tier] <= self.store.config.tier_capacity_bytes(tier)

    @invariant()
    def leased_pages_stay_put(self) -> None:
        for lease, _ in self.leases.values():
            if lease.kind is LeaseKind.READ:
                assert self.store.read_slots(lease.lease_id) == [self.data[k] for k in lease.keys]

    @invariant()
    def every_listed_page_reads_back(self) -> None:
        index = self.store.inspect()
        ns_id = self.ns.ns_id
        listed = set(index.disk_pages.get(ns_id, ()))
        for tier in MEMORY_TIERS:
            region = index.regions.get((ns_id, tier))
            listed |= set(region.pages) if region is not None else set()
        keys = [k for k in self.keys if k in listed]
        for key, found in zip(keys, self.store.peek(ns_id, keys)):
            # A page evicted from a small disk since the snapshot is a miss, never wrong bytes.
            assert found is not None or self.disk_pages < 256, "a listed page did not read back"
            assert found is None or found.data == self.data[key]
        if self.disk_pages >= 256:
            assert self.cached <= listed, "a page was lost although the disk had room"
            assert listed <= self.cached | self.maybe, "a deleted page came back"


class SmallDiskMachine(StoreMachine):
    disk_pages = 13  # odd: write_through; small: disk eviction drops pages


class FakeDeviceMachine(StoreMachine):
    device = "fake"


class FakeDeviceSmallDiskMachine(SmallDiskMachine):
    device = "fake"


SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
TestStoreProperties = StoreMachine.TestCase
TestStoreProperties.settings = SETTINGS
TestSmallDiskProperties = SmallDiskMachine.TestCase
TestSmallDiskProperties.settings = SETTINGS
TestFakeDeviceProperties = FakeDeviceMachine.TestCase
TestFakeDeviceProperties.settings = SETTINGS
TestFakeDeviceSmallDiskProperties = FakeDeviceSmallDiskMachine.TestCase
TestFakeDeviceSmallDiskProperties.settings = SETTINGS
