"""The paged worker's logits against transformers' own sdpa attention with the same weights,
within the kernels' attention tolerances: prefill, decode, and a multi-turn conversation whose
later turns start from the earlier turns' pages. On CPU the kernels' torch references run."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("transformers")

import torch
import transformers
from hf_paged_helpers import (
    CONFIG,
    OPTIONS,
    PAGE_TOKENS,
    assert_close,
    prompt,
    sdpa_decode_logits,
    sdpa_logits,
    tiny_models,
)
from packaging.version import Version
from server_harness import ServerThread

from tierd_client import TierClient
from tierd_client.hf.model_spec import cache_argument
from tierd_client.hf.paged import CACHE_KWARG, BlockTable, PagedKVCache, PagedWorker

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
PROMPT_TOKENS = 45     # 2 full pages and a partial one
DECODE_STEPS = 24      # crosses two page boundaries (48, 64): pages committed and pinned mid-decode
ARENA_SLOTS = 12
TABLE = [9, 2, 7, 4, 11]  # out of order, not from 0: a wrong slot reads NaN
# transformers that hand Cache.update the attention's keywords (the cache puts itself there).
UPDATE_GETS_KWARGS = Version(transformers.__version__) >= Version("5.24")





def run_paged(model: Any, cache: PagedKVCache, tokens: list[int], explicit: bool) -> torch.Tensor:
    name = cache_argument(model)
    extra = {CACHE_KWARG: cache} if explicit else {}
    with torch.no_grad():
        out = model(torch.tensor([tokens]), use_cache=True, **{name: cache}, **extra)
    logits: torch.Tensor = out.logits[0]
    return logits


@pytest.mark.parametrize("explicit", [True, False], ids=["cache-kwarg", "via-update"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_paged_cache_and_attention_match_sdpa_over_scattered_slots(dtype: torch.dtype, explicit: bool) -> None:
    if not explicit and not UPDATE_GETS_KWARGS:
        pytest.skip(f"transformers {transformers.__version__} does not hand Cache.update the attention's keywords")
    reference, paged = tiny_models(dtype)
    shape = (CONFIG["num_hidden_layers"], 2, PAGE_TOKENS, CONFIG["num_key_value_heads"], CONFIG["head_dim"])
    arena = torch.full((ARENA_SLOTS, *shape), float("nan"), dtype=dtype)
    cache = PagedKVCache(arena, BlockTable(PAGE_TOKENS, TABLE), CONFIG["num_hidden_layers"])
    tokens = prompt(PROMPT_TOKENS + DECODE_STEPS, seed=1)
    prefill = run_paged(paged, cache, tokens[:PROMPT_TOKENS], explicit)
    steps = torch.stack([run_paged(paged, cache, [t], explicit)[0] for t in tokens[PROMPT_TOKENS:]])
    assert_close(prefill, sdpa_logits(reference, tokens[:PROMPT_TOKENS]), dtype)
    assert_close(steps, sdpa_decode_logits(reference, tokens[:PROMPT_TOKENS], tokens[PROMPT_TOKENS:]), dtype)
    assert cache.get_seq_length() == len(tokens)
    # The K/V are in the table's slots only, and nowhere else: no layer keeps a tensor of them.
    untouched = [s for s in range(ARENA_SLOTS) if s not in TABLE]
    assert torch.isnan(arena[untouched]).all()
    written = arena[TABLE].permute(1, 2, 0, 3, 4, 5).reshape(*shape[:2], len(TABLE) * PAGE_TOKENS, *shape[3:])
    assert torch.isfinite(written[:, :, :len(tokens)]).all()
    assert all(layer.keys is None and layer.values is None for layer in cache.layers)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_workers_prefill_and_decode_match_sdpa(server: ServerThread, dtype: torch.dtype) -> None:
    reference, paged = tiny_models(dtype)
    tokens = prompt(PROMPT_TOKENS, seed=2)
    with TierClient(server.address) as client:
        worker = PagedWorker(client, paged, OPTIONS)
        with worker.begin(tokens) as request:
            assert request.reused_tokens == 0
            assert_close(request.prefill_logits, sdpa_logits(reference, tokens), dtype)
            steps: list[int] = []
            logits = []
            for _ in range(DECODE_STEPS):
                steps.append(int(request.last_logits.argmax()))
                logits.append(request.extend(steps[-1:])[0])
            assert request.committed_pages == (PROMPT_TOKENS + DECODE_STEPS) // PAGE_TOKENS
    assert_close(torch.stack(logits), sdpa_decode_logits(reference, tokens, steps), dtype)
    if dtype == torch.float32:  # bf16 logits may tie at the top; fp32 ones do not here
        with torch.no_grad():
            generated = reference.generate(torch.tensor([tokens]), max_new_tokens=DECODE_STEPS, do_sample=False,
                                           attention_mask=torch.ones(1, len(tokens), dtype=torch.long))
        assert generated[0, len(tokens):].tolist() == steps


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_conversation_reuses_the_earlier_turns_pages_and_matches_sdpa(server: ServerThread,
                                                                       dtype: torch.dtype) -> None:
    reference, paged = tiny_models(dtype)
    user_turns = [prompt(40, seed=3), prompt(21, seed=4), prompt(9, seed=5)]
    reply_tokens = 12
    conversation: list[int] = []
    with TierClient(server.address) as client:
        worker = PagedWorker(client, paged, OPTIONS)
        for user in user_turns:
            before = len(conversation)
            conversation += user
            with worker.begin(conversation) as request:
                # Every full page of the conversation so far came from the cache, the rest ran.
                assert request.reused_tokens == before // PAGE_TOKENS * PAGE_TOKENS
                expected = sdpa_logits(reference, conversation)
                assert_close(request.prefill_logits, expected[request.reused_tokens:], dtype)
                reply = request.greedy(reply_tokens)
                conversation = list(request.tokens)
                assert conversation[-reply_tokens:] == reply
                assert_close(request.last_logits, sdpa_logits(reference, conversation)[-1], dtype)
    assert len(conversation) == sum(map(len, user_turns)) + len(user_turns) * reply_tokens
