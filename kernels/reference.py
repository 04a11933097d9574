"""Pure-torch references of every kernel: the specification the CUDA kernels are tested against,
and the fallback on a machine without CUDA.

Inputs are as the public wrappers (tierd_kernels.ops) check them. Attention is computed in fp32
from the stored K/V and rounded once to q's dtype; a sequence with no visible key gets zeros.
"""

from __future__ import annotations

import torch

from tierd_kernels.layout import ArenaGeometry


def gather_sequence_kv(arena: torch.Tensor, layer: int, block_table: torch.Tensor,
                       seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of one sequence's first ``seq_len`` tokens: two ``[seq_len, num_kv_heads, head_dim]``."""
    page_tokens = arena.shape[3]
    num_pages = (seq_len + page_tokens - 1) // page_tokens
    pages = arena[block_table[:num_pages].to(torch.int64), layer]  # [num_pages, 2, P, Hkv, D]
    k = pages[:, 0].reshape(num_pages * page_tokens, *arena.shape[4:])[:seq_len]
    v = pages[:, 1].reshape(num_pages * page_tokens, *arena.shape[4:])[:seq_len]
    return k, v


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor, scale: float) -> torch.Tensor:
    """Masked attention in fp32. q ``[n, Hq, D]``, k/v ``[t, Hkv, D]``, visible bool ``[n, t]`` -> ``[n, Hq, D]``."""
    n, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    qg = q.float().reshape(n, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = torch.einsum("nkgd,tkd->nkgt", qg, k.float()) * scale
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    # A row that sees no key has all -inf scores and NaN weights: it attends to nothing.
    weights = torch.nan_to_num(weights, nan=0.0)
    out = torch.einsum("nkgt,tkd->nkgd", weights, v.float())
    return out.reshape(n, num_heads, head_dim)


def decode_reference(q: torch.Tensor, arena: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor,
                     layer: int, scale: float) -> torch.Tensor:
    """Decode attention: q ``[num_seqs, num_heads, head_dim]`` -> out of the same shape and dtype."""
    out = torch.empty_like(q)
    for seq, seq_len in enumerate(seq_lens.tolist()):
        k, v = gather_sequence_kv(arena, layer, block_tables[seq], seq_len)
        visible = torch.ones((1, seq_len), dtype=torch.bool, device=q.device)
        out[seq] = _attend(q[seq:seq + 1], k, v, visible, scale)[0].to(q.dtype)
    return out


def prefill_reference(q: torch.Tensor, cu_q_lens: torch.Tensor, arena: torch.Tensor, block_tables: torch.Tensor,
                      seq_lens: torch.Tensor, layer: int, scale: float) -> torch.Tensor:
    """Causal prefill: query j of a sequence sits at ``seq_len - q_len + j`` and sees kv positions up to it."""
    out = torch.empty_like(q)
    cu = cu_q_lens.tolist()
    for seq, seq_len in enumerate(seq_lens.tolist()):
        q_begin, q_end = cu[seq], cu[seq + 1]
        q_len = q_end - q_begin
        if q_len == 0:
            continue
        k, v = gather_sequence_kv(arena, layer, block_tables[seq], seq_len)
        positions = seq_len - q_len + torch.arange(q_len, device=q.device)
        visible = torch.arange(seq_len, device=q.device)[None, :] <= positions[:, None]
        out[q_begin:q_end] = _attend(q[q_begin:q_end], k, v, visible, scale).to(q.dtype)
    return out


def store_kv_reference(arena: torch.Tensor, layer: int, k: torch.Tensor, v: torch.Tensor,
                       slot_mapping: torch.Tensor) -> None:
    """Write token i's K/V rows at flat position ``slot_mapping[i]``; negative positions are skipped."""
    page_tokens = ArenaGeometry.of(arena).page_tokens
    keep = slot_mapping >= 0
    flat = slot_mapping[keep]
    slots, offsets = flat // page_tokens, flat % page_tokens
    arena[slots, layer, 0, offsets] = k[keep]
    arena[slots, layer, 1, offsets] = v[keep]


def gather_pages_reference(arena: torch.Tensor, slots: torch.Tensor, out: torch.Tensor) -> None:
    """``out[i] = arena[slots[i]]`` for whole pages."""
    torch.index_select(arena, 0, slots.to(torch.int64), out=out)


def scatter_pages_reference(src: torch.Tensor, arena: torch.Tensor, slots: torch.Tensor) -> None:
    """``arena[slots[i]] = src[i]`` for whole pages."""
    arena.index_copy_(0, slots.to(torch.int64), src)
