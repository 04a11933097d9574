"""``tiered_generation`` over a real daemon: a multi-turn conversation restores what earlier turns
saved and generates what a full recompute generates."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("transformers")

import torch
from e2e.e2e_daemon import TierdProcess
from hf_models import DTYPES, PAGE_TOKENS, REVISION, prompt_ids, require_dtype, tiny_model

from tierd.tier import Tier
from tierd_client import FailedPreconditionError, TierClient
from tierd_client.hf import TieredGeneration, UnsupportedGenerationError, tiered_generation

STEPS = 32
# Greedy logits of restored-prefix generation vs a full recompute, as max |difference| over all
# steps and the vocabulary. A restored page of an answer holds the KV its decode steps computed
# one token at a time, where the recompute computes it in one prefill: the sums run in another
# order, so logits (about 0.15 in size here) differ in the last places of the dtype. Seen on CPU
# (torch 2.13, transformers 5.24): 1.2e-7 fp32, 4.9e-4 fp16, 2.0e-3 bf16; the bounds are ~8x that.
LOGIT_ATOL = {"float32": 1e-6, "float16": 4e-3, "bfloat16": 1.6e-2}
GREEDY = {"max_new_tokens": STEPS, "do_sample": False, "return_dict_in_generate": True,
          "output_logits": True}


def _recompute(model: torch.nn.Module, ids: torch.Tensor) -> Any:
    return model.generate(ids, attention_mask=torch.ones_like(ids), **GREEDY)


def _turn(gen: TieredGeneration, model: torch.nn.Module, ids: torch.Tensor, dtype: str) -> torch.Tensor:
    """One turn through tierd, checked against a full recompute; the turn's sequence."""
    got = gen.generate(ids, **GREEDY)
    want = _recompute(model, ids)
    assert torch.equal(got.sequences, want.sequences)
    assert len(got.logits) == len(want.logits) == STEPS
    diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(got.logits, want.logits))
    assert diff <= LOGIT_ATOL[dtype], f"max |logit difference| {diff} over {STEPS} steps"
    return got.sequences


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_a_conversation_restores_earlier_turns_and_matches_a_recompute(daemon: TierdProcess, dtype: str) -> None:
    model = tiny_model(require_dtype(dtype))
    first = prompt_ids(70, seed=11)
    with TierClient(daemon.socket_path) as client, \
            tiered_generation(client, model, page_tokens=PAGE_TOKENS, revision=REVISION) as gen:
        turn_1 = _turn(gen, model, first, dtype)
        assert gen.last_restore is not None and gen.last_restore.tokens == 0
        # The cache held the prompt and all but the last answer token: 70 + 31 = 101 tokens.
        assert gen.last_save is not None and gen.last_save.pages_stored == 101 // PAGE_TOKENS
        second = torch.cat([turn_1, prompt_ids(20, seed=12)], dim=1)  # 102 + 20 tokens
        turn_2 = _turn(gen, model, second, dtype)
        restored = gen.last_restore
        assert restored.tokens == 96 and restored.computed_tokens == 122 - 96
        assert restored.pages_by_tier == {Tier.DRAM: 6}
        assert gen.last_save.pages_stored == (122 + STEPS - 1) // PAGE_TOKENS - 6
        third = torch.cat([turn_2, prompt_ids(5, seed=13)], dim=1)
        _turn(gen, model, third, dtype)
        assert gen.last_restore.tokens == (third.shape[1] - 1) // PAGE_TOKENS * PAGE_TOKENS


def test_arguments_it_cannot_serve_are_refused(daemon: TierdProcess) -> None:
    model = tiny_model()
    ids = prompt_ids(40, seed=14)
    with TierClient(daemon.socket_path) as client:
        with tiered_generation(client, model, revision=REVISION, save=False) as gen:
            with pytest.raises(UnsupportedGenerationError, match="num_beams=2"):
                gen.generate(ids, num_beams=2, max_new_tokens=2)
            padded = torch.ones_like(ids)
            padded[0, 0] = 0
            with pytest.raises(UnsupportedGenerationError, match="pads"):
                gen.generate(ids, attention_mask=padded, max_new_tokens=2)
            with pytest.raises(UnsupportedGenerationError, match="brings its own cache"):
                gen.generate(ids, cache=object(), max_new_tokens=2)
            out = gen.generate(ids, max_new_tokens=2, do_sample=False)
            assert out.shape == (1, 42) and gen.last_save is None  # save=False: nothing stored
            assert client.lookup(gen.ns, gen.ns.keys(ids[0].numpy())) == 0
        with pytest.raises(FailedPreconditionError, match="has ended"):
            gen.generate(ids, max_new_tokens=2)
