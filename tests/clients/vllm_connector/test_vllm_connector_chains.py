"""The connector's saves name their parents: a prompt saved in pieces (chunked prefill steps, a
request that reused a cached prefix, parts of a small region, two requests sharing a prefix in
one step) is one chain to a prefix-aware daemon, so eviction takes it from its end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import ServerThread, make_server
from vllm_fakes import BLOCK, SPEC, Engine, FakeBlocks, FakeRequest, make_engine, new_req, socket_of, step

from tierd.config import EvictionPolicy, MemoryTierConfig
from tierd_client import Tier, TierClient
from tierd_client.vllm.plan import BlockSave, StepPlan
from tierd_client.vllm.save_chains import unique_saves

# 64 dram slots of 1 KiB: the namespace's region has 32 (a lease takes at most 16), background
# eviction starts above 28 pages and stops at 24.
DRAM_PAGES = 64
REGION_LOW_PAGES = 24
FIRST = list(range(100, 141))   # 41 tokens: 10 full blocks
LONGER = FIRST + list(range(900, 944))  # 85 tokens: 21 full blocks, the first 10 those of FIRST


@pytest.fixture()
def prefix_server(short_tmp: Path) -> Iterator[ServerThread]:
    srv = make_server(short_tmp, dram=MemoryTierConfig(DRAM_PAGES * SPEC.page_bytes),
                      eviction_policy=EvictionPolicy.PREFIX_AWARE)
    yield srv
    srv.stop()


@pytest.fixture()
def saves_seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[bytes], bytes | None]]:
    """``(keys, parent)`` of every put and commit a TierClient makes in the test."""
    seen: list[tuple[list[bytes], bytes | None]] = []
    put, commit = TierClient.put, TierClient.commit

    def spy_put(self: TierClient, ns: Any, keys: Any, pages: object, *args: Any, **kwargs: Any) -> Any:
        seen.append((list(keys), kwargs.get("parent")))
        return put(self, ns, keys, pages, *args, **kwargs)

    def spy_commit(self: TierClient, lease: Any, keys: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((list(keys), kwargs.get("parent")))
        return commit(self, lease, keys, *args, **kwargs)

    monkeypatch.setattr(TierClient, "put", spy_put)
    monkeypatch.setattr(TierClient, "commit", spy_commit)
    return seen


def prompt_keys(engine: Engine, prompt: list[int]) -> list[bytes]:
    keys: list[bytes] | None = engine.scheduler.link.call("keys", lambda _c, ns: ns.keys(prompt))
    assert keys is not None
    return keys


def assert_chained(seen: list[tuple[list[bytes], bytes | None]], chains: list[list[bytes]]) -> None:
    """Each call's keys follow one another in a chain and its parent is the key just before."""
    before: dict[bytes, bytes | None] = {}
    for chain in chains:
        before.update({key: chain[i - 1] if i else None for i, key in enumerate(chain)})
    assert seen
    for keys, parent in seen:
        assert parent == before[keys[0]]
        assert all(before[key] == keys[i] for i, key in enumerate(keys[1:]))


def save_in_pieces(a: Engine, b: Engine) -> None:
    """A prefills FIRST in three steps; B reuses its 10 blocks and saves the 11 blocks after them."""
    sched = a.scheduler
    plan = sched.build_plan(step([new_req("a", FIRST, list(range(11)), 0)], {"a": 10}))
    a.worker.save(plan)  # blocks 0, 1
    a.worker.save(sched.build_plan(step(cached=[("a", None, 10)], scheduled={"a": 12})))  # 2..4
    a.worker.save(sched.build_plan(step(cached=[("a", None, 22)], scheduled={"a": 19})))  # 5..9
    request, blocks = FakeRequest("b", LONGER), list(range(22))
    assert b.scheduler.num_new_matched_tokens(request, 0) == (10 * BLOCK, False)
    b.scheduler.update_state_after_alloc(request, FakeBlocks(blocks), 10 * BLOCK)
    plan_b = b.scheduler.build_plan(step([new_req("b", LONGER, blocks, 10 * BLOCK)], {"b": 45}))
    assert [save.block_ids for save in plan_b.saves] == [tuple(range(10, 21))]
    b.worker.load(plan_b)
    b.worker.save(plan_b)
    assert a.worker.blocks_saved == 10 and b.worker.blocks_saved == 11


def press_on_dram(server: ServerThread, pages: int) -> None:
    """Put ``pages`` pages of another prompt, then wait for background eviction to settle."""
    with TierClient(socket_of(server)) as client:
        ns = client.register(SPEC)
        keys = ns.keys(range(5000, 5000 + pages * BLOCK))
        client.put(ns, keys, [bytes([7]) * SPEC.page_bytes] * pages, tier=Tier.DRAM)
    deadline_s = time.monotonic() + 10.0
    while server.store.stats().tiers[Tier.DRAM].pages > REGION_LOW_PAGES:
        assert time.monotonic() < deadline_s, "background eviction did not reach the low watermark"
        time.sleep(0.01)


@pytest.mark.parametrize("local", [True, False], ids=["mapped", "byte-path"])
def test_each_piece_of_a_prompt_names_the_page_before_it(
        prefix_server: ServerThread, saves_seen: list[tuple[list[bytes], bytes | None]], local: bool) -> None:
    a = make_engine(socket_of(prefix_server), seed=1, local=local)
    b = make_engine(socket_of(prefix_server), seed=2, local=local)
    try:
        save_in_pieces(a, b)
        keys = prompt_keys(a, LONGER)[:21]
        assert_chained(saves_seen, [keys])
        assert [parent for _, parent in saves_seen] == [None, keys[1], keys[4], keys[9]]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("local", [True, False], ids=["mapped", "byte-path"])
def test_a_prompt_saved_in_pieces_is_evicted_from_its_end(prefix_server: ServerThread, local: bool) -> None:
    a = make_engine(socket_of(prefix_server), seed=1, local=local)
    b = make_engine(socket_of(prefix_server), seed=2, local=local)
    try:
        save_in_pieces(a, b)
        keys = prompt_keys(a, LONGER)[:21]
    finally:
        a.close()
        b.close()  # its hit pins go
    press_on_dram(prefix_server, 14)  # 35 pages in a region of 32: 11 go down to disk
    with TierClient(socket_of(prefix_server)) as client:
        ns = client.register(SPEC)
        tiers = client.lookup_result(ns, keys).tiers
        stats = client.stats()
    # Every page still reachable, the prefix in dram and the end on disk (without parents the
    # end of an earlier piece, a leaf then, goes first: the prompt's later pieces are stranded).
    assert list(tiers) == [Tier.DRAM] * 10 + [Tier.DISK] * 11
    assert stats.eviction_policy == "prefix_aware" and stats.evictions_with_children == 0


def test_saves_in_parts_of_a_small_region_name_the_part_before(
        short_tmp: Path, saves_seen: list[tuple[list[bytes], bytes | None]]) -> None:
    # 16 dram slots, 8 the namespace's: a lease takes 4 pages, so 10 blocks go in 3 commits.
    server = make_server(short_tmp, dram=MemoryTierConfig(16 * SPEC.page_bytes))
    a = make_engine(socket_of(server), seed=3)
    try:
        plan = a.scheduler.build_plan(step([new_req("a", FIRST, list(range(11)), 0)], {"a": 41}))
        a.worker.save(plan)
        keys = prompt_keys(a, FIRST)
        assert [(len(k), parent) for k, parent in saves_seen] == [(4, None), (4, keys[3]), (2, keys[7])]
        assert_chained(saves_seen, [keys])
    finally:
        a.close()
        server.stop()


def test_two_prompts_in_one_step_are_two_chains(
        prefix_server: ServerThread, saves_seen: list[tuple[list[bytes], bytes | None]]) -> None:
    a = make_engine(socket_of(prefix_server), seed=4)
    try:
        other = FIRST[:20] + list(range(3000, 3021))  # the first 5 blocks of FIRST, then its own 5
        plan = a.scheduler.build_plan(step([new_req("x", FIRST, list(range(11)), 0),
                                            new_req("y", other, list(range(11, 22)), 0)], {"x": 41, "y": 41}))
        a.worker.save(plan)
        first, second = prompt_keys(a, FIRST), prompt_keys(a, other)
        # x's 10 pages, then y's own 5 after the 5 it shares with x (saved once, by x).
        assert [(k, parent) for k, parent in saves_seen] == [(first, None), (second[5:], first[4])]
        assert a.worker.blocks_saved == 15
    finally:
        a.close()


def test_the_parent_of_each_run_is_the_page_before_it() -> None:
    keys = [bytes([i]) * 16 for i in range(8)]
    saves = [BlockSave("a", (0, 1, 2), tuple(keys[2:5]), keys[1]),   # after a reused prefix
             BlockSave("b", (3, 4), tuple(keys[3:5])),                # a prefix A saves: nothing new
             BlockSave("c", (5, 6), (keys[6], keys[7]))]             # another prompt's first pages
    step_saves = unique_saves(StepPlan(saves=saves).saves)
    assert step_saves.block_ids == [0, 1, 2, 5, 6]
    assert step_saves.pieces(0, 5) == [(0, 3, keys[1]), (3, 5, None)]
    assert step_saves.pieces(1, 4) == [(1, 3, keys[2]), (3, 4, None)]  # a part names the page before it
    assert step_saves.pieces(2, 2) == []
