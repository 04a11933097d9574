"""The connector's bookkeeping with vLLM absent: fake requests and scheduler outputs, a real
served store. Engine A saves a prompt's full blocks; engine B finds them, pins and loads them
bit-exact; never the whole prompt; local prefix hits; pins given back; pages gone; tierd down."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from server_harness import ServerThread, make_server
from vllm_fakes import (
    BLOCK,
    SPEC,
    Engine,
    FakeBlocks,
    FakeRequest,
    make_engine,
    new_req,
    socket_of,
    step,
)

from tierd.config import MemoryTierConfig
from tierd_client import TierClient
from tierd_client.vllm.plan import BlockLoad, StepPlan
from tierd_client.vllm.scheduler import LEASE_STEPS

PROMPT = list(range(100, 118))  # 18 tokens: 4 full blocks, 2 tokens more


def save_prompt(engine: Engine, prompt: list[int], block_ids: list[int], req_id: str = "a") -> StepPlan:
    """Engine A prefills ``prompt`` in one step and saves its full blocks."""
    assert engine.scheduler.num_new_matched_tokens(FakeRequest(req_id, prompt), 0) == (0, False)
    plan = engine.scheduler.build_plan(step([new_req(req_id, prompt, block_ids, 0)], {req_id: len(prompt)}))
    engine.worker.save(plan)
    return plan


def blocks_of(engine: Engine, block_ids: list[int]) -> list[torch.Tensor]:
    return [layer[block_ids].clone() for _, layer in sorted(engine.kv.items())]


def test_a_saves_full_blocks_and_b_loads_them_bit_exact(server: ServerThread) -> None:
    a, b = make_engine(socket_of(server), seed=1), make_engine(socket_of(server), seed=None)
    try:
        plan = save_prompt(a, PROMPT, [5, 6, 7, 8, 9])
        assert plan.num_save_blocks == 4 and a.worker.blocks_saved == 4
        with TierClient(socket_of(server)) as client:  # the page is block after block, by layer
            ns = client.register(SPEC)
            keys = ns.keys(PROMPT)
            assert client.lookup(ns, keys) == 4
            page = torch.frombuffer(bytearray(client.get(ns, keys[:1])[0]), dtype=torch.float32)
            assert torch.equal(page, torch.cat([t[0].flatten() for t in blocks_of(a, [5])]))
        request = FakeRequest("b", PROMPT)
        assert b.scheduler.num_new_matched_tokens(request, 0) == (16, False)
        b.scheduler.update_state_after_alloc(request, FakeBlocks([20, 3, 11, 0, 30]), 16)
        plan_b = b.scheduler.build_plan(step([new_req("b", PROMPT, [20, 3, 11, 0, 30], 16)], {"b": 2}))
        assert [(load.block_ids, len(load.slots)) for load in plan_b.loads] == [((20, 3, 11, 0), 4)]
        assert plan_b.saves == []  # B's blocks came from tierd: nothing new to save
        assert b.scheduler.hit_sources("b") == {"host": 16, "disk": 0}  # tierd had them in memory
        b.worker.load(plan_b)
        assert b.worker.load_errors() == set() and b.worker.blocks_loaded == 4
        for got, want in zip(blocks_of(b, [20, 3, 11, 0]), blocks_of(a, [5, 6, 7, 8])):
            assert torch.equal(got, want)
        assert blocks_of(b, [30])[0].abs().sum() == 0  # the tail block is vLLM's to compute
    finally:
        a.close()
        b.close()


def test_never_the_whole_prompt_and_local_hits_are_not_loaded_again(server: ServerThread) -> None:
    a, b = make_engine(socket_of(server), seed=2), make_engine(socket_of(server), seed=None)
    try:
        exact = list(range(300, 316))  # 16 tokens, exactly 4 blocks: at most 3 may be cached
        save_prompt(a, exact, [1, 2, 3, 4])
        assert b.scheduler.num_new_matched_tokens(FakeRequest("x", exact), 0) == (12, False)
        save_prompt(a, PROMPT, [5, 6, 7, 8, 9], req_id="a2")
        request = FakeRequest("y", PROMPT)
        assert b.scheduler.num_new_matched_tokens(request, 8) == (8, False)  # 2 blocks vLLM has
        assert b.scheduler.num_new_matched_tokens(request, 8) == (8, False)  # asked again: same
        b.scheduler.update_state_after_alloc(request, FakeBlocks([10, 11, 12, 13, 14]), 8)
        plan = b.scheduler.build_plan(step([new_req("y", PROMPT, [10, 11, 12, 13, 14], 16)], {"y": 2}))
        assert [(load.block_ids, load.keys[0]) for load in plan.loads] == [
            ((12, 13), b.scheduler.link.call("keys", lambda _c, ns: ns.keys(PROMPT))[2])]
        assert b.scheduler.num_new_matched_tokens(FakeRequest("z", PROMPT), 16) == (0, False)
    finally:
        a.close()
        b.close()


def test_hit_pins_are_given_back_after_their_load(server: ServerThread) -> None:
    a, b = make_engine(socket_of(server), seed=3), make_engine(socket_of(server), seed=None)
    try:
        save_prompt(a, PROMPT, [5, 6, 7, 8, 9])
        base = server.store.stats().leases
        request = FakeRequest("b", PROMPT)
        b.scheduler.num_new_matched_tokens(request, 0)
        assert server.store.stats().leases == base + 1
        b.scheduler.update_state_after_alloc(request, FakeBlocks([0, 1, 2, 3, 4]), 16)
        b.scheduler.build_plan(step([new_req("b", PROMPT, [0, 1, 2, 3, 4], 16)], {"b": 2}))
        for _ in range(LEASE_STEPS - 1):
            b.scheduler.build_plan(step(cached=[("b", None, 18)], scheduled={"b": 1}))
            assert server.store.stats().leases == base + 1  # the step's forward may still run
        b.scheduler.build_plan(step(cached=[("b", None, 19)], scheduled={"b": 1}))
        assert server.store.stats().leases == base
        other = FakeRequest("c", PROMPT)  # a hit vLLM did not take (no blocks, then finished)
        b.scheduler.num_new_matched_tokens(other, 0)
        b.scheduler.request_finished(other)
        assert server.store.stats().leases == base
    finally:
        a.close()
        b.close()


def test_saves_follow_chunks_and_resumed_block_tables(server: ServerThread) -> None:
    a = make_engine(socket_of(server), seed=4)
    try:
        prompt = list(range(500, 526))  # 26 tokens: 6 full blocks
        sched = a.scheduler
        first = sched.build_plan(step([new_req("r", prompt, [0, 1, 2], 0)], {"r": 10}))
        assert [s.block_ids for s in first.saves] == [(0, 1)]  # tokens 0..9: blocks 0 and 1
        second = sched.build_plan(step(cached=[("r", [3, 4], 10)], scheduled={"r": 10}))
        assert [s.block_ids for s in second.saves] == [(2, 3, 4)]  # tokens ..19: blocks 2 to 4
        resumed = sched.build_plan(step(cached=[("r", [9, 8, 7, 6, 5, 4, 3], 20)], scheduled={"r": 6},
                                        resumed={"r"}))
        assert [s.block_ids for s in resumed.saves] == [(4,)]  # block 5, in the new table
        keys = sched.link.call("keys", lambda _c, ns: ns.keys(prompt))
        assert [s.keys for s in first.saves + second.saves + resumed.saves] == [
            tuple(keys[0:2]), tuple(keys[2:5]), tuple(keys[5:6])]
    finally:
        a.close()


def test_pages_that_cannot_be_loaded_are_reported_for_recompute(server: ServerThread) -> None:
    a, b = make_engine(socket_of(server), seed=5), make_engine(socket_of(server), seed=None)
    try:
        save_prompt(a, PROMPT, [5, 6, 7, 8, 9])
        keys = b.scheduler.link.call("keys", lambda _c, ns: ns.keys(PROMPT))
        missing = [bytes(16), bytes(range(16))]
        # Slots of another region (the daemon restarted since the lookup): read by key instead;
        # the two keys tierd does not have fail, and so does every block after the first gap.
        plan = StepPlan(loads=[BlockLoad("b", (1, 2, 3, 4), (*keys[:2], *missing), (0, 1, 2, 3), "gone")])
        b.worker.load(plan)
        assert b.worker.load_errors() == {3, 4}
        assert b.worker.load_errors() == set()  # reported once
        for got, want in zip(blocks_of(b, [1, 2]), blocks_of(a, [5, 6])):
            assert torch.equal(got, want)
    finally:
        a.close()
        b.close()


def test_the_byte_path_saves_and_loads_the_same_pages(server: ServerThread) -> None:
    a = make_engine(socket_of(server), seed=6, local=False)
    b = make_engine(socket_of(server), seed=None, local=False)
    try:
        save_prompt(a, PROMPT, [5, 6, 7, 8, 9])
        request = FakeRequest("b", PROMPT)
        assert b.scheduler.num_new_matched_tokens(request, 0) == (16, False)
        b.scheduler.update_state_after_alloc(request, FakeBlocks([1, 2, 3, 4, 0]), 16)
        plan = b.scheduler.build_plan(step([new_req("b", PROMPT, [1, 2, 3, 4, 0], 16)], {"b": 2}))
        b.worker.load(plan)
        assert b.worker.load_errors() == set()
        for got, want in zip(blocks_of(b, [1, 2, 3, 4]), blocks_of(a, [5, 6, 7, 8])):
            assert torch.equal(got, want)
    finally:
        a.close()
        b.close()


def test_tierd_down_is_a_miss_and_it_is_used_again_once_back(
        short_tmp: Path, server_at: Callable[[Path], ServerThread]) -> None:
    socket = str(short_tmp / "s.sock")
    engine = make_engine(socket, seed=7)
    try:
        request = FakeRequest("a", PROMPT)
        assert engine.scheduler.num_new_matched_tokens(request, 0) == (0, False)
        plan = engine.scheduler.build_plan(step([new_req("a", PROMPT, [0, 1, 2, 3, 4], 0)], {"a": 18}))
        assert plan.saves == []  # no keys without tierd: nothing to save
        engine.worker.load(StepPlan(loads=[BlockLoad("a", (1, 2), (bytes(16), bytes(16)))]))
        assert engine.worker.load_errors() == {1, 2}
        failures = engine.scheduler.link.failures
        server = server_at(short_tmp)
        assert engine.scheduler.num_new_matched_tokens(FakeRequest("b", PROMPT), 0) == (0, False)
        assert engine.scheduler.link.failures == failures  # within retry_after_s: not even tried
        engine.clock.now += 10.0
        save_prompt(engine, PROMPT, [5, 6, 7, 8, 9], req_id="c")
        assert engine.worker.blocks_saved == 4
        assert engine.scheduler.num_new_matched_tokens(FakeRequest("d", PROMPT), 0) == (16, False)
        server.stop()
        engine.clock.now += 10.0
        assert engine.scheduler.num_new_matched_tokens(FakeRequest("e", PROMPT), 0) == (0, False)
    finally:
        engine.close()


def test_a_block_is_one_page_of_the_spec() -> None:
    assert SPEC.page_tokens == BLOCK
    assert SPEC.page_bytes == SPEC.num_layers * SPEC.num_kv_heads * BLOCK * 2 * SPEC.head_dim * 4
    assert SPEC.layout == "vllm-0.32.0/cpu_attn-vec/float32/b4"


def test_a_small_region_takes_saves_in_parts_and_cuts_long_hits(short_tmp: Path) -> None:
    # 16 dram slots of 1 KiB, half of them the namespace's: a lease may take 4 pages.
    server = make_server(short_tmp, dram=MemoryTierConfig(16 * SPEC.page_bytes))
    a, b = make_engine(socket_of(server), seed=8), make_engine(socket_of(server), seed=None)
    try:
        prompt = list(range(700, 741))  # 41 tokens: 10 full blocks
        save_prompt(a, prompt, list(range(11)))
        assert a.worker.blocks_saved == 10 and a.worker.link.failures == 0
        request = FakeRequest("b", prompt)
        assert b.scheduler.num_new_matched_tokens(request, 0) == (4 * BLOCK, False)
        b.scheduler.update_state_after_alloc(request, FakeBlocks(list(range(20, 31))), 4 * BLOCK)
        plan = b.scheduler.build_plan(step([new_req("b", prompt, list(range(20, 31)), 16)], {"b": 25}))
        b.worker.load(plan)
        assert b.worker.load_errors() == set()
        for got, want in zip(blocks_of(b, [20, 21, 22, 23]), blocks_of(a, [0, 1, 2, 3])):
            assert torch.equal(got, want)
    finally:
        a.close()
        b.close()
        server.stop()
