"""What the paged worker refuses and how it keeps a request sound: block tables, the spec (prefix
reuse's ``spec_for``; another revision pages apart), models and calls it cannot serve, a step
that failed half-way, a page lost before it was pinned again, and lease renewal between steps."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

pytest.importorskip("transformers")

import torch
from hf_paged_helpers import CONFIG, OPTIONS, PAGE_TOKENS, REVISION, prompt, tiny_models
from server_harness import ServerThread
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import tierd_client.hf.paged_leases as paged_leases
import tierd_client.hf.paged_worker as paged_worker
from tierd.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from tierd_client import TierClient
from tierd_client.hf.errors import ModelIdentityError
from tierd_client.hf.model_spec import cache_argument, spec_for
from tierd_client.hf.paged import (
    BlockTable,
    PagedCacheError,
    PagedKVCache,
    PagedModelError,
    PagedOptions,
    PagedWorker,
    PageLostError,
    register_paged_attention,
)
from tierd_client.sync import Lease

FP32 = torch.float32




def test_a_block_table_maps_positions_to_slots() -> None:
    table = BlockTable(8, [5, 2])
    assert table.capacity == 16 and table.pages_for(16) == 0 and table.pages_for(17) == 1
    assert table.slot_mapping(6, 5, torch.device("cpu")).tolist() == [46, 47, 16, 17, 18]
    table.replace(1, 9)
    table.append([3])
    assert table.slot_mapping(15, 2, torch.device("cpu")).tolist() == [79, 24]
    assert table.tensor(torch.device("cpu")).tolist() == [[5, 9, 3]]
    assert BlockTable(8).tensor(torch.device("cpu")).tolist() == [[0]]  # the kernels want one column
    with pytest.raises(PagedCacheError, match="need 4 pages but the table has 3"):
        table.slot_mapping(20, 5, torch.device("cpu"))


def test_the_worker_pages_under_the_spec_prefix_reuse_derives(server: ServerThread) -> None:
    _, paged = tiny_models(FP32)
    with TierClient(server.address) as client:
        worker = PagedWorker(client, paged, OPTIONS)
        assert worker.spec == spec_for(paged, page_tokens=PAGE_TOKENS, revision=REVISION)
        assert worker.spec.model == f"llama@{REVISION}" and worker.spec.dtype == "float32"
        with pytest.raises(ModelIdentityError, match="pass revision="):
            PagedWorker(client, paged, PagedOptions(page_tokens=PAGE_TOKENS))
        with pytest.raises(PagedModelError, match="page_tokens"):  # the kernels' page sizes: powers of two
            PagedWorker(client, paged, PagedOptions(page_tokens=12, revision=REVISION))
    assert issubclass(PagedModelError, InvalidArgument)


def test_another_revision_reuses_nothing(server: ServerThread) -> None:
    _, paged = tiny_models(FP32)
    tokens = prompt(64, seed=50)
    with TierClient(server.address) as client:
        PagedWorker(client, paged, OPTIONS).generate(tokens, 1)
        other = PagedWorker(client, paged, PagedOptions(page_tokens=PAGE_TOKENS, revision="other-weights"))
        with other.begin(tokens) as request:
            assert request.reused_tokens == 0
        with PagedWorker(client, paged, OPTIONS).begin(tokens) as request:
            assert request.reused_tokens == 48


def test_models_the_worker_cannot_run_are_refused(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    reference, paged = tiny_models(FP32)
    register_paged_attention()
    small_heads = LlamaForCausalLM(LlamaConfig(**{**CONFIG, "head_dim": 32},
                                               attn_implementation="tierd_paged")).eval()
    with TierClient(server.address) as client:
        with pytest.raises(PagedModelError, match="register_paged_attention"):
            PagedWorker(client, reference, OPTIONS)  # sdpa
        with pytest.raises(PagedModelError, match="head_dim"):
            PagedWorker(client, small_heads, OPTIONS)
        # Pages in an engine's own byte order are not the kernels' page-first ones.
        spec = replace(spec_for(paged, page_tokens=PAGE_TOKENS, revision=REVISION), layout="vllm-0.32.0/cpu/b32")
        monkeypatch.setattr(paged_worker, "spec_for", lambda *args, **kwargs: spec)
        with pytest.raises(PagedModelError, match="'page_first' pages only"):
            PagedWorker(client, paged, OPTIONS)


def test_calls_the_paged_attention_cannot_serve_are_refused() -> None:
    _, paged = tiny_models(FP32)
    ids = torch.tensor([prompt(8, seed=60)])
    with torch.no_grad(), pytest.raises(PagedCacheError, match="needs a PagedKVCache"):
        paged(ids, **{cache_argument(paged): DynamicCache(config=paged.config)}, use_cache=True)
    arena = torch.zeros(4, 2, 2, PAGE_TOKENS, 2, 64)
    cache = PagedKVCache(arena, BlockTable(PAGE_TOKENS, [0, 1]), 2)
    with torch.no_grad(), pytest.raises(PagedCacheError, match="one sequence"):
        paged(ids.repeat(2, 1), **{cache_argument(paged): cache}, tierd_cache=cache, use_cache=True)
    with pytest.raises(PagedCacheError, match="hold 2 layers, the model has 3"):
        PagedKVCache(arena, BlockTable(PAGE_TOKENS), 3)


def test_a_request_refuses_steps_it_cannot_take(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    _, paged = tiny_models(FP32)
    with TierClient(server.address) as client:
        worker = PagedWorker(client, paged, OPTIONS)
        with pytest.raises(PagedCacheError, match="at least one prompt token"):
            worker.begin([])
        request = worker.begin(prompt(20, seed=61))
        with pytest.raises(PagedCacheError, match="at least one token"):
            request.extend([])
        # A step that fails after the first layer stored its K/V leaves the layers apart.
        calls = {"n": 0}

        def failing_mlp(x: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            raise RuntimeError("injected failure in layer 1")

        monkeypatch.setattr(paged.model.layers[1].mlp, "forward", failing_mlp)
        with pytest.raises(RuntimeError, match="injected"):
            request.extend([1])
        monkeypatch.undo()
        with pytest.raises(PagedCacheError, match="failed half-way"):
            request.extend([1])
        request.close()
        assert client.stats().leases == 0 and calls["n"] == 1
        with pytest.raises(PagedCacheError, match="closed"):
            request.extend([1])
        assert issubclass(PagedCacheError, FailedPrecondition)


def test_a_page_lost_before_it_is_pinned_again_ends_the_request(server: ServerThread,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _, paged = tiny_models(FP32)
    with TierClient(server.address) as client:
        worker = PagedWorker(client, paged, OPTIONS)
        acquire = client.acquire

        def acquire_all_but_the_last(ns: Any, keys: Any, *args: Any, **kwargs: Any) -> Lease:
            # As if the daemon had evicted the last page between its Commit and this Acquire.
            return acquire(ns, list(keys)[:-1], *args, **kwargs)

        monkeypatch.setattr(client, "acquire", acquire_all_but_the_last)
        with pytest.raises(PageLostError, match="left hbm before they could be pinned again"):
            worker.begin(prompt(2 * PAGE_TOKENS + 1, seed=62))
        assert client.stats().leases == 0  # the failed start gave back what it held
        assert issubclass(PageLostError, ResourceExhausted)


def test_leases_are_renewed_past_half_their_ttl(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    _, paged = tiny_models(FP32)
    ttl_s = 8.0
    renewed: list[int] = []
    renew = Lease.renew

    def counting_renew(lease: Lease, ttl: float | None = None) -> None:
        renewed.append(lease.lease_id)
        renew(lease, ttl)

    monkeypatch.setattr(Lease, "renew", counting_renew)
    with TierClient(server.address) as client:
        worker = PagedWorker(client, paged, PagedOptions(page_tokens=PAGE_TOKENS, revision=REVISION,
                                                         lease_ttl_s=ttl_s))
        with worker.begin(prompt(40, seed=63)) as request:
            request.extend([1])
            assert renewed == []  # well within their TTL
            clock = paged_leases.now_s
            monkeypatch.setattr(paged_leases, "now_s", lambda: clock() + 0.6 * ttl_s)
            request.extend([2])
            assert len(renewed) == request.num_leases > 0
            before = request.expires_at_s
            monkeypatch.setattr(paged_leases, "now_s", clock)
            request.keep_alive()  # renewed just now: nothing to do
            assert len(renewed) == request.num_leases and request.expires_at_s == before
