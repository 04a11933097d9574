"""What the paged worker's tests share: a tiny Llama-shaped random-weight model (fixed seed, no
hub) built twice with the same weights (transformers' sdpa, and the paged attention), an
in-process daemon sized in pages of that model, prompts, and sdpa's logits to compare with."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import torch
from server_harness import ServerThread, make_server, serving_settings
from transformers import LlamaConfig, LlamaForCausalLM

from tierd.config import DiskConfig, MemoryTierConfig
from tierd_client.hf.model_spec import cache_argument
from tierd_client.hf.paged import PagedOptions, register_paged_attention
from tierd_kernels import attention_tolerance

SEED = 0
PAGE_TOKENS = 16
REVISION = "tiny-llama-seed0"
VOCAB = 256
# head_dim 64: the smallest the kernels take; 4 query heads over 2 kv heads (GQA).
CONFIG = {"vocab_size": VOCAB, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 1024}
OPTIONS = PagedOptions(page_tokens=PAGE_TOKENS, revision=REVISION)
# The namespace gets half of each tier (region_share 0.5): 32 hbm and 64 dram slots.
HBM_PAGES = 64
DRAM_PAGES = 128
LIMITS = {"chunk_bytes": 1 << 20, "max_message_bytes": 16 << 20, "max_put_bytes": 16 << 20,
          "max_get_bytes": 16 << 20}


def page_bytes(dtype: torch.dtype) -> int:
    return (CONFIG["num_hidden_layers"] * 2 * PAGE_TOKENS * CONFIG["num_key_value_heads"] * CONFIG["head_dim"]
            * dtype.itemsize)


def tiny_models(dtype: torch.dtype) -> tuple[Any, Any]:
    """``(sdpa_model, paged_model)``: the same seeded weights, in ``dtype``, in eval mode."""
    register_paged_attention()
    torch.manual_seed(SEED)
    reference = LlamaForCausalLM(LlamaConfig(**CONFIG, attn_implementation="sdpa")).to(dtype).eval()
    # A config of its own: switching the implementation must not switch the reference's.
    paged_config = copy.deepcopy(reference.config)
    paged_config._attn_implementation = "tierd_paged"
    paged = LlamaForCausalLM(paged_config).to(dtype).eval()
    paged.load_state_dict(reference.state_dict())
    assert reference.config._attn_implementation == "sdpa"
    assert paged.config._attn_implementation == "tierd_paged"
    return reference, paged


def start_server(tmp: Path, dtype: torch.dtype = torch.float32, hbm_pages: int = HBM_PAGES) -> ServerThread:
    """An in-process daemon whose first namespace gets ``hbm_pages // 2`` hbm slots of ``dtype`` pages."""
    size = page_bytes(dtype)
    return make_server(tmp, serving_settings(**LIMITS), hbm=MemoryTierConfig(hbm_pages * size),
                       dram=MemoryTierConfig(DRAM_PAGES * size), disk=DiskConfig(64 << 20))


def prompt(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(VOCAB) for _ in range(length)]


def sdpa_logits(model: Any, tokens: list[int]) -> torch.Tensor:
    """transformers' own logits ``[len(tokens), vocab]`` of ``tokens`` in one causal pass."""
    with torch.no_grad():
        logits: torch.Tensor = model(torch.tensor([tokens]), use_cache=False).logits[0]
    return logits


def sdpa_decode_logits(model: Any, prefix: list[int], steps: list[int]) -> torch.Tensor:
    """transformers' own decode path (sdpa over a ``DynamicCache``): ``prefix`` prefilled, then
    each of ``steps`` run alone; the logits of the steps ``[len(steps), vocab]``."""
    from transformers import DynamicCache

    cache = {cache_argument(model): DynamicCache(config=model.config)}
    rows = []
    with torch.no_grad():
        model(torch.tensor([prefix]), use_cache=True, **cache)
        for token in steps:
            rows.append(model(torch.tensor([[token]]), use_cache=True, **cache).logits[0, -1])
    return torch.stack(rows)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
    """Within the kernels' attention tolerance of ``dtype``."""
    tol = attention_tolerance(dtype)
    torch.testing.assert_close(actual, expected, atol=tol.atol, rtol=tol.rtol)
