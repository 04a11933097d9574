"""Copies between vLLM's per-layer KV caches and pages, whole blocks at a time.

``layers[l]`` is layer ``l``'s cache ``[num_blocks, num_kv_heads, block_size, 2 * head_dim]``; a
page is ``[num_layers, num_kv_heads, block_size, 2 * head_dim]`` of the same dtype (the arena's
slots viewed so). The caches are vLLM's; pages and arenas belong to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tierd.spec import PageSpec

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def block_shape(spec: PageSpec) -> tuple[int, int, int]:
    """One layer of one block: ``(num_kv_heads, block_size, 2 * head_dim)``."""
    return (spec.num_kv_heads, spec.page_tokens, 2 * spec.head_dim)


def pages_view(raw: np.ndarray | torch.Tensor, spec: PageSpec) -> torch.Tensor:
    """``uint8 [n, page_bytes]`` (an arena's ``bytes()``, a staging buffer) as
    ``[n, num_layers, num_kv_heads, block_size, 2 * head_dim]`` of the spec's dtype, sharing memory."""
    tensor = torch.from_numpy(raw) if isinstance(raw, np.ndarray) else raw
    return tensor.view(TORCH_DTYPES[spec.dtype]).view(tensor.shape[0], spec.num_layers, *block_shape(spec))


def _index(values: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.long, device=device)


def pages_to_blocks(pages: torch.Tensor, rows: Sequence[int], layers: Sequence[torch.Tensor],
                    block_ids: Sequence[int]) -> None:
    """Page ``pages[rows[i]]`` into block ``block_ids[i]`` of every layer."""
    if not block_ids:
        return
    src = _index(rows, pages.device)
    for index, layer in enumerate(layers):
        layer[_index(block_ids, layer.device)] = pages[src, index].to(layer.device)


def blocks_to_pages(layers: Sequence[torch.Tensor], block_ids: Sequence[int], pages: torch.Tensor,
                    rows: Sequence[int]) -> None:
    """Block ``block_ids[i]`` of every layer into page ``pages[rows[i]]``."""
    if not block_ids:
        return
    dst = _index(rows, pages.device)
    for index, layer in enumerate(layers):
        pages[dst, index] = layer[_index(block_ids, layer.device)].to(pages.device)
