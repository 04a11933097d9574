"""The paged worker's pages in the daemon: a second request starts from the first one's pages
(counted hits), full pages are committed as they fill (the partial last one never), a request
gives every slot back when it ends, and a worker killed with SIGKILL loses its slots to the
daemon, which hands them out again."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch
from hf_paged_helpers import OPTIONS, PAGE_TOKENS, assert_close, prompt, sdpa_logits, tiny_models
from server_harness import ServerThread

from tierd.tier import Tier
from tierd_client import ResourceExhaustedError, TierClient
from tierd_client.hf.paged import PagedWorker

HERE = Path(__file__).resolve().parent
WORKER = HERE / "paged_worker_proc.py"
LONG_PROMPT = 300         # 18 full pages and a partial one: 19 of the namespace's 32 hbm slots
SESSION_END_POLLS = 400   # Stats calls waiting for the daemon to end a dead worker's session
POLL_PAUSE_S = 0.05
# Only a guard against a worker that hangs before it reports (it imports torch and transformers).
WORKER_START_GUARD_S = 300.0
FP32 = torch.float32





def hbm_hits(client: TierClient) -> int:
    return client.stats().tiers[Tier.HBM].hits


def test_a_second_request_starts_from_the_first_ones_pages(server: ServerThread) -> None:
    reference, paged = tiny_models(FP32)
    first_prompt = prompt(100, seed=10)  # 6 full pages and 4 tokens of a 7th
    with TierClient(server.address) as client:
        worker = PagedWorker(client, paged, OPTIONS)
        with worker.begin(first_prompt) as first:
            first.greedy(8)  # 108 tokens: the 7th page is still partial
            first_tokens, first_table = list(first.tokens), first.block_table
            assert first.reused_tokens == 0 and first.committed_pages == 6
        keys = worker.ns.keys(first_tokens)
        assert client.lookup(worker.ns, keys) == len(keys) == 6
        # 105 tokens: the same 6 pages, then 9 tokens of a 7th (no page fills, so no commit).
        second_prompt = first_tokens[:100] + prompt(5, seed=11)
        hits = hbm_hits(client)
        with worker.begin(second_prompt) as second:
            assert second.reused_tokens == 96 and second.committed_pages == 0
            assert hbm_hits(client) - hits == 6
            assert second.block_table[:6] == first_table[:6]  # the very slots: nothing was copied
            assert_close(second.prefill_logits, sdpa_logits(reference, second_prompt)[96:])
        with worker.begin(prompt(100, seed=12)) as other:  # other tokens from the first page on
            assert other.reused_tokens == 0


def test_a_prompt_cached_whole_still_computes_its_last_page(server: ServerThread) -> None:
    reference, paged = tiny_models(FP32)
    tokens = prompt(4 * PAGE_TOKENS, seed=13)
    with TierClient(server.address) as client:
        worker = PagedWorker(client, paged, OPTIONS)
        with worker.begin(tokens) as first:
            first_table = first.block_table
        with worker.begin(tokens) as again:
            # Its last token must run to give the next logits: the last page is computed again,
            # and its commit finds the key cached, so the request moves to the cached page.
            assert again.reused_tokens == 3 * PAGE_TOKENS
            assert again.block_table == first_table
            assert_close(again.prefill_logits, sdpa_logits(reference, tokens)[3 * PAGE_TOKENS:])


def test_full_pages_are_committed_as_they_fill_and_the_partial_one_never(server: ServerThread) -> None:
    _, paged = tiny_models(FP32)
    with TierClient(server.address) as client:
        worker = PagedWorker(client, paged, OPTIONS)
        ns = worker.ns
        with worker.begin(prompt(40, seed=20)) as request:  # 2 full pages and 8 tokens
            assert client.lookup(ns, ns.keys(request.tokens)) == request.committed_pages == 2
            request.greedy(PAGE_TOKENS - 8 - 1)             # 47 tokens: the 3rd page one short
            partial = list(request.tokens) + [0]            # its key if the next token were 0
            assert client.lookup(ns, ns.keys(partial)) == 2
            request.greedy(1)                               # 48 tokens: the 3rd page is full
            assert client.lookup(ns, ns.keys(request.tokens)) == request.committed_pages == 3
            # While it runs, another request starts from its pages.
            with worker.begin(list(request.tokens) + [1]) as other:
                assert other.reused_tokens == 3 * PAGE_TOKENS
                assert other.block_table[:3] == request.block_table[:3]


def test_ending_a_request_gives_every_slot_back(server: ServerThread) -> None:
    _, paged = tiny_models(FP32)
    with TierClient(server.address) as client:
        worker = PagedWorker(client, paged, OPTIONS)
        region = worker.ns.region(Tier.HBM)
        assert region is not None
        with worker.begin(prompt(LONG_PROMPT, seed=30)) as request:
            assert len(request.block_table) == -(-LONG_PROMPT // PAGE_TOKENS)
            assert client.stats().leases == request.num_leases > 0
            with pytest.raises(ResourceExhaustedError):  # its pages are pinned, its partial slot leased
                client.allocate(worker.ns, region.num_slots)
        assert client.stats().leases == 0
        with client.allocate(worker.ns, region.num_slots) as lease:  # the cached pages make room
            assert len(lease.slots) == region.num_slots


def _start_worker(address: str, seed: int) -> tuple[subprocess.Popen[str], dict[str, object]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(WORKER), address, str(LONG_PROMPT), str(seed)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        ready = selector.select(WORKER_START_GUARD_S)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the worker did not report its slots:\n{err[-4000:]}")
    report: dict[str, object] = json.loads(line)
    return proc, report


def test_a_killed_workers_slots_come_back(server: ServerThread) -> None:
    _, paged = tiny_models(FP32)
    proc, held = _start_worker(server.address, seed=40)
    try:
        with TierClient(server.address) as client:
            worker = PagedWorker(client, paged, OPTIONS)  # the same namespace as the worker's
            ns = worker.ns
            region = ns.region(Tier.HBM)
            assert region is not None
            assert client.stats().leases == held["leases"]
            with pytest.raises(ResourceExhaustedError):
                client.allocate(ns, region.num_slots)
            proc.kill()
            assert proc.wait() == -9
            for _ in range(SESSION_END_POLLS):
                if client.stats().leases == 0:
                    break
                time.sleep(POLL_PAUSE_S)
            assert client.stats().leases == 0, "the daemon kept the dead worker's leases"
            block_table = held["block_table"]
            assert isinstance(block_table, list) and block_table
            with client.allocate(ns, region.num_slots) as lease:
                assert set(block_table) <= set(lease.slots)
            # What it had committed before it died stays cached for the next worker.
            assert client.lookup(ns, ns.keys(prompt(LONG_PROMPT, seed=40))) == LONG_PROMPT // PAGE_TOKENS
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
