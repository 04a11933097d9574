"""Tiny Llama-shaped decoders with random weights (fixed seeds, no model hub) for the hf tests,
and the forward passes they make: what the worker subprocess and the tests both build."""

from __future__ import annotations

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from tierd_client.hf import cache_argument

VOCAB = 256
REVISION = "seed0"
PAGE_TOKENS = 16
# 2 layers x 2 (K,V) x 16 tokens x 2 KV heads x 16 dims x 4 bytes: 8 KiB fp32 pages.
SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 1024}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def require_dtype(name: str) -> torch.dtype:
    """``DTYPES[name]``, or skip the test where this CPU's torch cannot run a matmul in it (fp16
    on CPU needs torch >= 2.1; then bf16 still covers the 2-byte case)."""
    import pytest

    dtype = DTYPES[name]
    try:
        torch.nn.functional.linear(torch.ones(1, 4, dtype=dtype), torch.ones(4, 4, dtype=dtype))
    except RuntimeError as exc:
        pytest.skip(f"torch {torch.__version__} cannot run {name} on this CPU: {exc}")
    return dtype


def tiny_config(layers: int = 2) -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB, num_hidden_layers=layers, **SHAPE)


def tiny_model(dtype: torch.dtype = torch.float32, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    """The same weights for the same (layers, seed) in every process (initialised in fp32 and
    then cast, so every dtype rounds the same values)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(layers))
    return model.to(dtype).eval()


def prompt_ids(length: int, seed: int) -> torch.Tensor:
    """``[1, length]`` token ids drawn from ``seed``."""
    return torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


def forward(model: LlamaForCausalLM, ids: torch.Tensor, cache: DynamicCache | None = None
            ) -> tuple[torch.Tensor, DynamicCache]:
    """Logits ``[batch, len(ids), vocab]`` of ``ids`` after ``cache`` (a new one if None), and the
    cache, which now holds ``ids`` too."""
    cache = DynamicCache(config=model.config) if cache is None else cache
    with torch.no_grad():
        out = model(ids, use_cache=True, **{cache_argument(model): cache})
    return out.logits, cache


def prefix_copy(cache: DynamicCache, tokens: int) -> DynamicCache:
    """A new cache holding clones of ``cache``'s first ``tokens`` tokens (the original untouched)."""
    return DynamicCache([(layer.keys[:, :, :tokens].clone(), layer.values[:, :, :tokens].clone())
                         for layer in cache.layers])
