"""A hypothesis state machine over the bookkeeping manager alone (no bytes, no engine, no disk).

Random interleavings of plans (store, read, hop, demotions, flush, lease slots), completions that
succeed or fail move by move, leases (allocate, commit, acquire, release) and deletes. After every
step: no slot is held twice and none leaks; nothing in an open plan was evicted (its sources stay
pinned, its destinations pending); a failed move leaves its source where it was and frees its
destination; a move that arrived is published where the plan said. Puts and commits name
parents (any key, so chains may even loop); every machine runs under both eviction policies.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from store_helpers import SPEC, small_config

from tierd.config import EvictionPolicy, WritePolicy
from tierd.errors import FailedPrecondition, InvalidArgument, NotFound
from tierd.keys import chain_keys, namespace_fingerprint
from tierd.spec import Namespace
from tierd.store.manager import Manager
from tierd.store.plans import Plan, PlanKind
from tierd.store.types import IndexSnapshot
from tierd.tier import MEMORY_TIERS, Tier
from tierd.values import Lease, LeaseKind

NUM_KEYS = 24
HBM_SLOTS, DRAM_SLOTS = 4, 6
NS = Namespace(1, "default", SPEC, namespace_fingerprint(SPEC, b"default"))
KEYS = chain_keys(NS.fingerprint, list(range(NUM_KEYS * SPEC.page_tokens)), SPEC.page_tokens)
key_indices = st.lists(st.integers(0, NUM_KEYS - 1), min_size=1, max_size=6, unique=True)
parents = st.none() | st.integers(0, NUM_KEYS - 1).map(lambda i: KEYS[i])


@dataclass
class OpenPlan:
    plan: Plan
    deleted: set[bytes] = field(default_factory=set)  # keys deleted while the plan was open


def held_slots(index: IndexSnapshot, tier: Tier) -> list[int]:
    region = index.regions[(NS.ns_id, tier)]
    return [*region.pages.values(), *region.pending.values(), *region.fill_slots,
            *region.orphan_slots]


class ManagerMachine(RuleBasedStateMachine):
    write_policy = WritePolicy.WRITE_BACK
    eviction_policy = EvictionPolicy.LRU

    def __init__(self) -> None:
        super().__init__()
        config = small_config(Path("/nonexistent"), hbm_pages=HBM_SLOTS, dram_pages=DRAM_SLOTS,
                              disk_pages=10, write_policy=self.write_policy,
                              eviction_policy=self.eviction_policy)
        self.manager = Manager(config)
        self.manager.add_namespace(NS)
        self.manager.add_region(NS.ns_id, Tier.HBM, HBM_SLOTS)
        self.manager.add_region(NS.ns_id, Tier.DRAM, DRAM_SLOTS)
        self.open: dict[int, OpenPlan] = {}
        self.leases: dict[int, Lease] = {}

    def _opened(self, plan: Plan | None) -> None:
        if plan is not None:
            self.open[plan.plan_id] = OpenPlan(plan)

    # -- plans ------------------------------------------------------------------------------------
    @rule(idx=key_indices, tier=st.sampled_from(MEMORY_TIERS), parent=parents)
    def store(self, idx: list[int], tier: Tier, parent: bytes | None) -> None:
        ticket = self.manager.durability.new_ticket(NS.ns_id)
        plan, _skipped, needed, persist = self.manager.plan_store(NS.ns_id, tier, [KEYS[i] for i in idx],
                                                                  ticket, parent)
        assert (plan is None) or needed == 0
        self._opened(plan)
        self._opened(persist)
        self.manager.durability.seal(ticket)

    @rule(idx=key_indices)
    def read(self, idx: list[int]) -> None:
        self._opened(self.manager.plan_read(NS.ns_id, [KEYS[i] for i in idx]))

    @rule(i=st.integers(0, NUM_KEYS - 1), hop=st.sampled_from(
        [(Tier.DISK, Tier.DRAM), (Tier.DRAM, Tier.HBM), (Tier.HBM, Tier.DRAM)]))
    def hop(self, i: int, hop: tuple[Tier, Tier]) -> None:
        decision = self.manager.plan_hop(NS.ns_id, KEYS[i], *hop)
        if isinstance(decision, Plan):
            self._opened(decision)

    @rule(n=st.integers(1, HBM_SLOTS))
    def demote_hbm(self, n: int) -> None:
        self._opened(self.manager.plan_hbm_demotion(NS.ns_id, n)[1])

    @rule(n=st.integers(1, DRAM_SLOTS))
    def demote_dram(self, n: int) -> None:
        self._opened(self.manager.plan_dram_demotion(NS.ns_id, n)[1])

    @rule()
    def flush(self) -> None:
        plans, _ticket, _dirty, _refused = self.manager.plan_flush()
        for plan in plans:
            self._opened(plan)

    @rule()
    def evict_disk(self) -> None:
        self.manager.evict_disk_to_watermark()
        self.manager.take_disk_deletes()

    @precondition(lambda self: self.open)
    @rule(pick=st.integers(0, 1000), outcomes=st.lists(st.booleans(), min_size=8, max_size=8))
    def complete(self, pick: int, outcomes: list[bool]) -> None:
        entry = self.open.pop(sorted(self.open)[pick % len(self.open)])
        plan = entry.plan
        results = [outcomes[i % len(outcomes)] for i in range(len(plan.moves))]
        followup = self.manager.complete(plan, results)
        self._opened(followup)
        self._check_completed(entry, results)

    def _check_completed(self, entry: OpenPlan, results: list[bool]) -> None:
        index = self.manager.inspect()
        plan = entry.plan
        for move, ok in zip(plan.moves, results):
            gone = move.key in entry.deleted
            if move.dst is not None and not move.dst.on_disk:
                region = index.regions[(NS.ns_id, move.dst.tier)]
                if plan.kind is PlanKind.SLOTS:
                    continue
                if ok and not gone:
                    assert region.pages.get(move.key) == move.dst.slot, f"{plan.kind}: arrived, not published"
                elif not ok:
                    assert move.key not in region.pending and region.pages.get(move.key) != move.dst.slot
            if move.src is not None and not move.src.on_disk and not gone:
                region = index.regions[(NS.ns_id, move.src.tier)]
                evicted = ok and (plan.kind is PlanKind.DEMOTE or plan.evict)
                if not evicted and plan.kind is not PlanKind.SLOTS:
                    assert region.pages.get(move.key) == move.src.slot, f"{plan.kind}: the source moved"
            if move.dst is not None and move.dst.on_disk and not ok:
                assert move.key not in index.disk_pages.get(NS.ns_id, frozenset())
            if plan.kind is PlanKind.READ and move.src is not None and move.src.on_disk and not ok:
                assert move.key not in index.disk_pages.get(NS.ns_id, frozenset())

    # -- leases and deletes -----------------------------------------------------------------------
    @rule(n=st.integers(1, HBM_SLOTS))
    def allocate(self, n: int) -> None:
        lease = self.manager.allocate(NS.ns_id, n, 60.0, None)
        if lease is not None:
            self.leases[lease.lease_id] = lease

    @precondition(lambda self: any(le.kind is LeaseKind.FILL for le in self.leases.values()))
    @rule(pick=st.integers(0, 1000), idx=key_indices, write_first=st.booleans(), parent=parents)
    def commit(self, pick: int, idx: list[int], write_first: bool, parent: bytes | None) -> None:
        # Lease ids are random: pick by the order leases were made, so examples replay.
        fills = [lid for lid, le in self.leases.items() if le.kind is LeaseKind.FILL]
        lease = self.leases[fills[pick % len(fills)]]
        slots = list(lease.slots[:len(idx)])
        keys = [KEYS[i] for i in idx][:len(slots)]
        try:
            if write_first:
                self._opened(self.manager.plan_lease_slots(lease.lease_id, slots[:len(keys)], write=True))
            _bound, persist = self.manager.commit(lease.lease_id, keys, slots[:len(keys)], None,
                                                  parent=parent)
        except InvalidArgument:
            return  # slots committed before: refused, nothing changed
        self._opened(persist)

    @rule(idx=key_indices, tier=st.sampled_from(MEMORY_TIERS), read=st.booleans())
    def acquire_resident(self, idx: list[int], tier: Tier, read: bool) -> None:
        keys = [KEYS[i] for i in idx]
        hold, present, todo = self.manager.begin_acquire(NS.ns_id, keys, tier)
        if todo:
            self.manager.release_hold(hold)
            return
        lease = self.manager.finish_acquire(hold, keys, present, 0, 60.0, None, 1.0)
        self.leases[lease.lease_id] = lease
        if read and lease.slots:
            self._opened(self.manager.plan_lease_slots(lease.lease_id, None, write=False))

    @precondition(lambda self: self.leases)
    @rule(pick=st.integers(0, 1000))
    def release(self, pick: int) -> None:
        lease_id = list(self.leases)[pick % len(self.leases)]
        self.manager.release(self.leases.pop(lease_id).lease_id)

    @rule(idx=key_indices)
    def delete(self, idx: list[int]) -> None:
        keys = [KEYS[i] for i in idx]
        self.manager.delete(NS.ns_id, keys)
        self.manager.take_disk_deletes()
        for entry in self.open.values():
            entry.deleted.update(keys)

    @rule()
    def refused_calls_change_nothing(self) -> None:
        before = self.manager.inspect()
        for call in (lambda: self.manager.commit(1, KEYS[:1], [0], None),
                     lambda: self.manager.release(1),
                     lambda: self.manager.plan_lease_slots(1, [0], write=True)):
            with contextlib.suppress(NotFound, InvalidArgument, FailedPrecondition):
                call()
        assert self.manager.inspect() == before

    # -- invariants -------------------------------------------------------------------------------
    @invariant()
    def no_slot_is_held_twice_and_none_leaks(self) -> None:
        index = self.manager.inspect()
        for tier in MEMORY_TIERS:
            region = index.regions[(NS.ns_id, tier)]
            held = held_slots(index, tier)
            assert len(held) == len(set(held)), f"{tier.label}: a slot is held twice"
            assert len(held) == region.used_slots, f"{tier.label}: slots leaked"
            assert set(region.pins) <= set(held), f"{tier.label}: a free slot is pinned"
        assert index.open_plans == len(self.open)

    @invariant()
    def every_pin_belongs_to_an_open_plan_or_a_read_lease(self) -> None:
        index = self.manager.inspect()
        expected: dict[tuple[Tier, int], int] = {}
        for entry in self.open.values():
            for move in entry.plan.moves:
                pinned = move.src if move.src is not None and not move.src.on_disk else None
                if entry.plan.kind is PlanKind.SLOTS and pinned is None:
                    pinned = move.dst
                if pinned is not None:
                    expected[(pinned.tier, pinned.slot)] = expected.get((pinned.tier, pinned.slot), 0) + 1
        for lease in self.leases.values():
            if lease.kind is LeaseKind.READ:
                for slot in lease.slots:
                    expected[(lease.tier, slot)] = expected.get((lease.tier, slot), 0) + 1
        actual = {(tier, slot): count for tier in MEMORY_TIERS
                  for slot, count in index.regions[(NS.ns_id, tier)].pins.items()}
        assert actual == expected, "a pin leaked or went missing"

    @invariant()
    def nothing_in_an_open_plan_is_a_victim(self) -> None:
        index = self.manager.inspect()
        for entry in self.open.values():
            plan = entry.plan
            for move in plan.moves:
                src, dst = move.src, move.dst
                if src is not None and not src.on_disk:
                    region = index.regions[(NS.ns_id, src.tier)]
                    assert region.pins.get(src.slot, 0) >= 1, f"{plan.kind}: source unpinned"
                    if move.key not in entry.deleted and plan.kind is not PlanKind.SLOTS:
                        assert region.pages.get(move.key) == src.slot, f"{plan.kind}: source evicted"
                if dst is not None and not dst.on_disk and plan.kind is not PlanKind.SLOTS:
                    region = index.regions[(NS.ns_id, dst.tier)]
                    assert region.pending.get(move.key) == dst.slot, f"{plan.kind}: destination lost"
                if dst is not None and dst.on_disk:
                    assert move.key in index.disk_pending.get(NS.ns_id, frozenset())
                if src is not None and src.on_disk and move.key not in entry.deleted:
                    assert move.key in index.disk_pages.get(NS.ns_id, frozenset()), "disk source evicted"


class WriteThroughManagerMachine(ManagerMachine):
    write_policy = WritePolicy.WRITE_THROUGH


class PrefixAwareManagerMachine(ManagerMachine):
    eviction_policy = EvictionPolicy.PREFIX_AWARE


class PrefixAwareWriteThroughManagerMachine(WriteThroughManagerMachine):
    eviction_policy = EvictionPolicy.PREFIX_AWARE


SETTINGS = settings(max_examples=150, stateful_step_count=50, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
TestManagerProperties = ManagerMachine.TestCase
TestManagerProperties.settings = SETTINGS
TestWriteThroughManagerProperties = WriteThroughManagerMachine.TestCase
TestWriteThroughManagerProperties.settings = SETTINGS
TestPrefixAwareManagerProperties = PrefixAwareManagerMachine.TestCase
TestPrefixAwareManagerProperties.settings = SETTINGS
TestPrefixAwareWriteThroughManagerProperties = PrefixAwareWriteThroughManagerMachine.TestCase
TestPrefixAwareWriteThroughManagerProperties.settings = SETTINGS
