"""A hypothesis state machine of prefix-aware eviction over the bookkeeping manager.

Chained pages (a chain, a branch off it, another chain) are put in pieces that name their parent,
looked up, promoted, demoted, flushed, evicted from disk and deleted; every plan completes at once
and nothing is pinned. After every step the daemon's ``evictions_with_children`` (checked at each
eviction: the page had a child in the tier it left) is still 0, and after a step that only evicts
(demotions, disk eviction), the tiers' contents agree: no page left a tier by eviction while a
child of it stayed there. (A step that also writes, such as a flush, may evict a page after its
child and then write the child again.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from store_helpers import SPEC, small_config

from tierd.config import EvictionPolicy, WritePolicy
from tierd.keys import chain_keys, namespace_fingerprint
from tierd.spec import Namespace
from tierd.store.manager import Manager
from tierd.store.plans import Plan
from tierd.store.types import IndexSnapshot
from tierd.tier import MEMORY_TIERS, Tier

HBM_SLOTS, DRAM_SLOTS, DISK_PAGES = 4, 6, 8
NS = Namespace(1, "default", SPEC, namespace_fingerprint(SPEC, b"default"))


def _segment(length: int, first_token: int, parent: bytes | None = None) -> list[bytes]:
    tokens = np.arange(first_token, first_token + length * SPEC.page_tokens, dtype=np.uint32)
    return chain_keys(NS.fingerprint, tokens, SPEC.page_tokens, parent=parent)


TRUNK = _segment(8, 0)
BRANCH = _segment(5, 10_000, parent=TRUNK[2])   # continues TRUNK[:3]
OTHER = _segment(6, 20_000)
SEGMENTS = (TRUNK, BRANCH, OTHER)
# A segment's pages, with the parent of its first: the pages of a prefix, in order.
FIRST_PARENT: dict[int, bytes | None] = {0: None, 1: TRUNK[2], 2: None}
PARENT: dict[bytes, bytes | None] = {}
for number, segment in enumerate(SEGMENTS):
    for i, key in enumerate(segment):
        PARENT[key] = segment[i - 1] if i else FIRST_PARENT[number]
CHILDREN: dict[bytes, list[bytes]] = {}
for key, parent in PARENT.items():
    if parent is not None:
        CHILDREN.setdefault(parent, []).append(key)

segments = st.integers(0, len(SEGMENTS) - 1)


def tier_contents(index: IndexSnapshot) -> dict[Tier, set[bytes]]:
    out = {tier: set(index.regions[(NS.ns_id, tier)].pages) for tier in MEMORY_TIERS}
    out[Tier.DISK] = set(index.disk_pages.get(NS.ns_id, frozenset()))
    return out


class ChainMachine(RuleBasedStateMachine):
    write_policy = WritePolicy.WRITE_BACK

    def __init__(self) -> None:
        super().__init__()
        config = small_config(Path("/nonexistent"), hbm_pages=HBM_SLOTS, dram_pages=DRAM_SLOTS,
                              disk_pages=DISK_PAGES, write_policy=self.write_policy,
                              eviction_policy=EvictionPolicy.PREFIX_AWARE)
        self.manager = Manager(config)
        self.manager.add_namespace(NS)
        self.manager.add_region(NS.ns_id, Tier.HBM, HBM_SLOTS)
        self.manager.add_region(NS.ns_id, Tier.DRAM, DRAM_SLOTS)
        self.before = tier_contents(self.manager.inspect())
        self.only_evicts = False          # the current step only moved pages down or out

    # -- helpers -----------------------------------------------------------------------------------
    def _run(self, plan: Plan | None) -> None:
        """Complete a plan at once, every move arriving; then what it asks for next."""
        while plan is not None:
            plan = self.manager.complete(plan, [True] * len(plan))

    def _make_room(self, tier: Tier, num_pages: int) -> None:
        """What the evictor does for a put: demote until ``num_pages`` slots are free."""
        for _ in range(4):
            if tier is Tier.HBM:
                _dropped, plan, short = self.manager.plan_hbm_demotion(NS.ns_id, num_pages)
                self._run(plan)
                if short:
                    self._run(self.manager.plan_dram_demotion(NS.ns_id, short)[1])
            else:
                self._run(self.manager.plan_dram_demotion(NS.ns_id, num_pages)[1])
            if self.manager.free_slots(NS.ns_id, tier) >= num_pages:
                return

    # -- rules -------------------------------------------------------------------------------------
    @rule(number=segments, start=st.integers(0, 7), length=st.integers(1, 4),
          tier=st.sampled_from(MEMORY_TIERS))
    def put(self, number: int, start: int, length: int, tier: Tier) -> None:
        segment = SEGMENTS[number]
        keys = segment[start:start + length]
        if not keys:
            return
        parent = segment[start - 1] if start else FIRST_PARENT[number]
        for _ in range(2):
            ticket = self.manager.durability.new_ticket(NS.ns_id)
            plan, _skipped, needed, persist = self.manager.plan_store(NS.ns_id, tier, keys, ticket,
                                                                      parent)
            self.manager.durability.seal(ticket)
            self._run(persist)
            if not needed:
                self._run(plan)
                return
            self._make_room(tier, needed)

    @rule(number=segments, length=st.integers(1, 8))
    def lookup(self, number: int, length: int) -> None:
        segment = SEGMENTS[number]
        prefix = TRUNK[:3] + segment if number == 1 else segment
        self.manager.lookup(NS.ns_id, prefix[:length])

    @rule(number=segments, i=st.integers(0, 7), hop=st.sampled_from(
        [(Tier.DISK, Tier.DRAM), (Tier.DRAM, Tier.HBM)]))
    def promote(self, number: int, i: int, hop: tuple[Tier, Tier]) -> None:
        segment = SEGMENTS[number]
        decision = self.manager.plan_hop(NS.ns_id, segment[i % len(segment)], *hop)
        if isinstance(decision, Plan):
            self._run(decision)

    @rule(n=st.integers(1, HBM_SLOTS))
    def demote_hbm(self, n: int) -> None:
        self._make_room(Tier.HBM, n)
        self.only_evicts = True

    @rule(n=st.integers(1, DRAM_SLOTS))
    def demote_dram(self, n: int) -> None:
        self._run(self.manager.plan_dram_demotion(NS.ns_id, n)[1])
        self.only_evicts = True

    @rule()
    def flush(self) -> None:
        plans, _ticket, _dirty, _refused = self.manager.plan_flush()
        for plan in plans:
            self._run(plan)

    @rule()
    def evict_disk(self) -> None:
        self.manager.evict_disk_to_watermark()
        self.manager.take_disk_deletes()
        self.only_evicts = True

    @rule(number=segments, i=st.integers(0, 7))
    def delete(self, number: int, i: int) -> None:
        segment = SEGMENTS[number]
        key = segment[i % len(segment)]
        self.manager.delete(NS.ns_id, [key])
        self.manager.take_disk_deletes()

    # -- invariants --------------------------------------------------------------------------------
    @invariant()
    def no_page_left_a_tier_before_a_child_of_it(self) -> None:
        after = tier_contents(self.manager.inspect())
        for tier, pages in self.before.items() if self.only_evicts else ():
            for key in pages - after[tier]:
                stayed = [c for c in CHILDREN.get(key, ()) if c in pages and c in after[tier]]
                assert not stayed, f"{tier.label}: a page was evicted while its child stayed"
        self.before = after
        self.only_evicts = False

    @invariant()
    def no_eviction_had_children(self) -> None:
        assert self.manager.totals()[4] == 0


class WriteThroughChainMachine(ChainMachine):
    write_policy = WritePolicy.WRITE_THROUGH


SETTINGS = settings(max_examples=100, stateful_step_count=50, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
TestChainProperties = ChainMachine.TestCase
TestChainProperties.settings = SETTINGS
TestWriteThroughChainProperties = WriteThroughChainMachine.TestCase
TestWriteThroughChainProperties.settings = SETTINGS
