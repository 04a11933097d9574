"""Test data for the kernel tests: random arenas and page tables, and a naive dense oracle.

The oracle gathers K/V per token with plain indexing (independently of the reference) and calls
torch.nn.functional.scaled_dot_product_attention in float64, independently of the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Written into block-table entries past a sequence's last page: nothing may read them.
UNUSED_TABLE_ENTRY = -7


@dataclass(frozen=True)
class PagedBatch:
    """An arena and the page tables of a batch of sequences over it."""

    arena: torch.Tensor          # [num_slots, num_layers, 2, page_tokens, num_kv_heads, head_dim]
    block_tables: torch.Tensor   # int32 [num_seqs, max_pages]
    seq_lens: torch.Tensor       # int32 [num_seqs]

    @property
    def page_tokens(self) -> int:
        return self.arena.shape[3]


def make_batch(seq_lens: list[int], *, dtype: torch.dtype, head_dim: int, num_kv_heads: int, page_tokens: int,
               num_layers: int = 2, spare_pages: int = 1, seed: int = 0) -> PagedBatch:
    """Sequences on distinct, shuffled slots (plus spare unused pages and one slot of padding)."""
    generator = torch.Generator().manual_seed(seed)
    pages_per_seq = [(n + page_tokens - 1) // page_tokens for n in seq_lens]
    max_pages = max(max(pages_per_seq) + spare_pages, 1)
    num_slots = sum(pages_per_seq) + 2
    arena = torch.randn((num_slots, num_layers, 2, page_tokens, num_kv_heads, head_dim), generator=generator)
    order = torch.randperm(num_slots, generator=generator)
    tables = torch.full((len(seq_lens), max_pages), UNUSED_TABLE_ENTRY, dtype=torch.int32)
    used = 0
    for seq, pages in enumerate(pages_per_seq):
        tables[seq, :pages] = order[used:used + pages].to(torch.int32)
        used += pages
    return PagedBatch(arena.to(dtype), tables, torch.tensor(seq_lens, dtype=torch.int32))


def make_queries(num_tokens: int, num_heads: int, head_dim: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((num_tokens, num_heads, head_dim), generator=generator).to(dtype)


def cu_lens(q_lens: list[int]) -> torch.Tensor:
    out = [0]
    for n in q_lens:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32)


def _sequence_kv(batch: PagedBatch, seq: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token t of the sequence is row t % page_tokens of slot block_tables[seq, t // page_tokens]."""
    positions = torch.arange(int(batch.seq_lens[seq]))
    slots = batch.block_tables[seq, positions // batch.page_tokens].long()
    rows = positions % batch.page_tokens
    return batch.arena[slots, layer, 0, rows], batch.arena[slots, layer, 1, rows]


def oracle_attention(q: torch.Tensor, q_lens: list[int], batch: PagedBatch, layer: int, scale: float) -> torch.Tensor:
    """Dense causal attention per sequence; query j of a sequence sits at seq_len - q_len + j."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    first = 0
    for seq, q_len in enumerate(q_lens):
        seq_len = int(batch.seq_lens[seq])
        if q_len == 0 or seq_len == 0:
            first += q_len
            continue
        k, v = _sequence_kv(batch, seq, layer)
        group = q.shape[1] // k.shape[1]
        qs = q[first:first + q_len].double().transpose(0, 1)           # [Hq, q_len, D]
        ks = k.double().repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, seq_len, D]
        vs = v.double().repeat_interleave(group, dim=1).transpose(0, 1)
        positions = seq_len - q_len + torch.arange(q_len)
        mask = torch.arange(seq_len)[None, :] <= positions[:, None]
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale)
        out[first:first + q_len] = torch.nan_to_num(o.transpose(0, 1), nan=0.0)
        first += q_len
    return out
