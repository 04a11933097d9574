"""The ``tierd_paged`` attention implementation: transformers' attention call answered by
``tierd_kernels`` paged attention over the sequence's pages in tierd's hbm arena.

Register it once (``register_paged_attention``), build or switch the model to it
(``attn_implementation="tierd_paged"`` or ``model.set_attn_implementation("tierd_paged")``) and
run it with a ``PagedKVCache``. The new tokens' K/V are in the pages already (the cache's
``update`` ran first): a one-token step runs ``paged_attention_decode``, longer steps
``paged_attention_prefill`` (causal). CPU tensors run the kernels' torch references, CUDA
tensors the CUDA kernels (``tierd_kernels.ops``).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface

from tierd_client.hf.paged_cache import CACHE_KWARG, PagedKVCache
from tierd_client.hf.paged_errors import PagedCacheError
from tierd_kernels import paged_attention_decode, paged_attention_prefill

ATTENTION_NAME = "tierd_paged"


def _paged_cache(kwargs: dict[str, Any]) -> PagedKVCache:
    cache = kwargs.get(CACHE_KWARG)
    if not isinstance(cache, PagedKVCache):
        raise PagedCacheError(
            f"attention {ATTENTION_NAME!r} reads K/V from tierd's pages and needs a PagedKVCache: pass it as "
            f"the model's cache and as {CACHE_KWARG}=cache to forward (PagedWorker does both); got "
            f"{type(cache).__name__}")
    return cache


def _check_call(module: torch.nn.Module, query: torch.Tensor, attention_mask: torch.Tensor | None,
                dropout: float) -> int:
    layer_idx = getattr(module, "layer_idx", None)
    if not isinstance(layer_idx, int):
        raise PagedCacheError(f"{type(module).__name__} has no integer layer_idx: the paged attention needs "
                              "it to find the layer's K/V in the pages")
    if query.shape[0] != 1:
        raise PagedCacheError(f"the paged attention runs one sequence at a time; got a batch of {query.shape[0]}")
    if attention_mask is not None:
        raise PagedCacheError("the paged attention is causal over the pages and takes no attention mask "
                              "(no padding, no custom masks); pass none")
    if dropout:
        raise PagedCacheError(f"the paged attention is for inference; got dropout {dropout} (call model.eval())")
    return layer_idx


def paged_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                            value: torch.Tensor, attention_mask: torch.Tensor | None,
                            scaling: float | None = None, dropout: float = 0.0,
                            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention of ``query`` ``[1, num_heads, q_len, head_dim]`` over the layer's pages.

    ``key`` / ``value`` (the new tokens, already stored by the cache) are not read. Returns
    ``([1, q_len, num_heads, head_dim], None)`` as transformers' attention functions do.
    """
    layer_idx = _check_call(module, query, attention_mask, dropout)
    cache = _paged_cache(kwargs)
    q_len = query.shape[2]
    q = query[0].transpose(0, 1)  # [q_len, num_heads, head_dim], head_dim contiguous
    block_tables, seq_lens = cache.page_tables(layer_idx)
    if q_len == 1:
        out = paged_attention_decode(q, cache.arena, block_tables, seq_lens, layer_idx, scaling)
    else:
        cu_q_lens = torch.tensor([0, q_len], dtype=torch.int32, device=q.device)
        out = paged_attention_prefill(q, cu_q_lens, cache.arena, block_tables, seq_lens, layer_idx, scaling,
                                      max_q_len=q_len)
    return out.unsqueeze(0), None


def register_paged_attention(name: str = ATTENTION_NAME) -> str:
    """Register the paged attention with transformers under ``name`` (idempotent); returns it."""
    AttentionInterface.register(name, paged_attention_forward)
    return name
