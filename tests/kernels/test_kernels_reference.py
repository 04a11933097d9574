"""The torch references (the CPU path of the public API) against a naive dense oracle (SDPA)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from tk_cases import UNUSED_TABLE_ENTRY, PagedBatch, cu_lens, make_batch, make_queries, oracle_attention

import tierd_kernels as tk
from tierd_kernels.tolerances import attention_tolerance

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
HEAD_DIMS = [64, 128, 256]
GROUPS = [1, 3, 8]          # q heads per kv head
PAGE_TOKENS = [8, 32, 256]
NUM_KV_HEADS = 2


def _ragged_lens(page_tokens: int) -> list[int]:
    """1, one short of a page, exactly a page, mid-page after several pages."""
    return [1, page_tokens - 1, page_tokens, 2 * page_tokens + 3]


def _assert_matches(got: torch.Tensor, oracle: torch.Tensor) -> None:
    tol = attention_tolerance(got.dtype)
    torch.testing.assert_close(got.double(), oracle, atol=tol.atol, rtol=tol.rtol)


@pytest.mark.parametrize(("dtype", "head_dim", "group", "page_tokens"),
                         list(itertools.product(DTYPES, HEAD_DIMS, GROUPS, PAGE_TOKENS)))
def test_decode_reference_matches_dense_attention(dtype: torch.dtype, head_dim: int, group: int,
                                                  page_tokens: int) -> None:
    lens = _ragged_lens(page_tokens)
    batch = make_batch(lens, dtype=dtype, head_dim=head_dim, num_kv_heads=NUM_KV_HEADS, page_tokens=page_tokens)
    q = make_queries(len(lens), NUM_KV_HEADS * group, head_dim, dtype)
    got = tk.paged_attention_decode(q, batch.arena, batch.block_tables, batch.seq_lens, layer=1)
    assert got.dtype == dtype and got.shape == q.shape
    _assert_matches(got, oracle_attention(q, [1] * len(lens), batch, 1, head_dim ** -0.5))


@pytest.mark.parametrize(("dtype", "head_dim", "group", "page_tokens"),
                         list(itertools.product(DTYPES, HEAD_DIMS, GROUPS, PAGE_TOKENS)))
def test_prefill_reference_matches_dense_causal_attention(dtype: torch.dtype, head_dim: int, group: int,
                                                          page_tokens: int) -> None:
    seq_lens = _ragged_lens(page_tokens)
    q_lens = [1, 3, page_tokens, 5]  # decode-like, extend, a whole first prefill, extend mid-page
    batch = make_batch(seq_lens, dtype=dtype, head_dim=head_dim, num_kv_heads=NUM_KV_HEADS,
                       page_tokens=page_tokens)
    q = make_queries(sum(q_lens), NUM_KV_HEADS * group, head_dim, dtype)
    got = tk.paged_attention_prefill(q, cu_lens(q_lens), batch.arena, batch.block_tables, batch.seq_lens, layer=0)
    _assert_matches(got, oracle_attention(q, q_lens, batch, 0, head_dim ** -0.5))


def test_whole_prompt_prefill_is_standard_causal_attention() -> None:
    batch = make_batch([21], dtype=torch.float32, head_dim=64, num_kv_heads=2, page_tokens=8)
    q = make_queries(21, 4, 64, torch.float32)
    got = tk.paged_attention_prefill(q, cu_lens([21]), batch.arena, batch.block_tables, batch.seq_lens, layer=1)
    pages = batch.arena[batch.block_tables[0, :3].long(), 1]
    k = pages[:, 0].reshape(24, 2, 64)[:21].repeat_interleave(2, dim=1)
    v = pages[:, 1].reshape(24, 2, 64)[:21].repeat_interleave(2, dim=1)
    expected = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                              is_causal=True).transpose(0, 1)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_prefill_of_one_token_equals_decode() -> None:
    batch = make_batch([9, 30], dtype=torch.bfloat16, head_dim=128, num_kv_heads=1, page_tokens=16)
    q = make_queries(2, 4, 128, torch.bfloat16)
    decode = tk.paged_attention_decode(q, batch.arena, batch.block_tables, batch.seq_lens, 0)
    prefill = tk.paged_attention_prefill(q, cu_lens([1, 1]), batch.arena, batch.block_tables, batch.seq_lens, 0)
    torch.testing.assert_close(prefill, decode, atol=0, rtol=0)


def test_empty_sequence_attends_to_nothing() -> None:
    batch = make_batch([0, 5], dtype=torch.float16, head_dim=64, num_kv_heads=1, page_tokens=8)
    q = make_queries(2, 2, 64, torch.float16)
    out = tk.paged_attention_decode(q, batch.arena, batch.block_tables, batch.seq_lens, 0)
    assert not out[0].any() and out[1].abs().sum() > 0


def test_scale_and_out_are_honoured() -> None:
    batch = make_batch([12], dtype=torch.float32, head_dim=64, num_kv_heads=1, page_tokens=8)
    q = make_queries(1, 1, 64, torch.float32)
    out = torch.empty_like(q)
    returned = tk.paged_attention_decode(q, batch.arena, batch.block_tables, batch.seq_lens, 0, scale=0.3, out=out)
    assert returned is out
    _assert_matches(out, oracle_attention(q, [1], batch, 0, 0.3))
    default = tk.paged_attention_decode(q, batch.arena, batch.block_tables, batch.seq_lens, 0)
    assert not torch.allclose(default, out)


def test_pages_past_the_sequence_are_never_read() -> None:
    batch = make_batch([10], dtype=torch.float32, head_dim=64, num_kv_heads=1, page_tokens=8, spare_pages=3)
    assert (batch.block_tables[0, 2:] == UNUSED_TABLE_ENTRY).all()  # invalid slots, ignored
    q = make_queries(1, 1, 64, torch.float32)
    before = tk.paged_attention_decode(q, batch.arena, batch.block_tables, batch.seq_lens, 0)
    arena = batch.arena.clone()
    arena[batch.block_tables[0, 1], 0, :, 2:] = 1e4  # tokens 10.. of page 1 are past seq_len
    after = tk.paged_attention_decode(q, arena, batch.block_tables, batch.seq_lens, 0)
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_store_kv_then_decode_sees_the_new_token() -> None:
    """A decode step as a worker runs it: store the step's K/V in its slot, then attend."""
    batch = make_batch([8, 3], dtype=torch.float16, head_dim=64, num_kv_heads=2, page_tokens=8, spare_pages=1)
    generator = torch.Generator().manual_seed(3)
    k = torch.randn((2, 2, 64), generator=generator).half()
    v = torch.randn((2, 2, 64), generator=generator).half()
    tables = batch.block_tables.clone()
    used = {int(tables[0, 0]), int(tables[1, 0])}
    spare_slot = min(set(range(batch.arena.shape[0])) - used)
    tables[0, 1] = spare_slot  # sequence 0 (a full page) grows into a fresh page
    positions = torch.tensor([spare_slot * 8 + 0, int(tables[1, 0]) * 8 + 3])
    arena = batch.arena.clone()
    tk.store_kv(arena, 1, k, v, positions)
    grown = PagedBatch(arena, tables, torch.tensor([9, 4], dtype=torch.int32))
    q = make_queries(2, 4, 64, torch.float16)
    got = tk.paged_attention_decode(q, grown.arena, grown.block_tables, grown.seq_lens, 1)
    _assert_matches(got, oracle_attention(q, [1, 1], grown, 1, 64 ** -0.5))
    torch.testing.assert_close(arena[spare_slot, 1, 0, 0], k[0], atol=0, rtol=0)
    torch.testing.assert_close(arena[spare_slot, 1, 1, 0], v[0], atol=0, rtol=0)


def test_store_kv_skips_padding_and_touches_only_its_rows() -> None:
    arena = torch.zeros((3, 2, 2, 8, 2, 64), dtype=torch.bfloat16)
    k = torch.ones((3, 2, 64), dtype=torch.bfloat16)
    v = torch.full((3, 2, 64), 2.0, dtype=torch.bfloat16)
    tk.store_kv(arena, 0, k, v, torch.tensor([5, -1, 17]))
    expected = torch.zeros_like(arena)
    expected[0, 0, 0, 5], expected[0, 0, 1, 5] = 1.0, 2.0
    expected[2, 0, 0, 1], expected[2, 0, 1, 1] = 1.0, 2.0
    torch.testing.assert_close(arena, expected, atol=0, rtol=0)


@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_gather_then_scatter_round_trips_pages(slot_dtype: torch.dtype) -> None:
    arena = torch.randn((6, 2, 2, 8, 1, 64))
    slots = torch.tensor([4, 1, 5], dtype=slot_dtype)
    staging = tk.gather_pages(arena, slots, torch.empty((3, 2, 2, 8, 1, 64)))
    for i, slot in enumerate(slots.tolist()):
        torch.testing.assert_close(staging[i], arena[slot], atol=0, rtol=0)
    restored = torch.zeros_like(arena)
    tk.scatter_pages(staging, restored, slots)
    torch.testing.assert_close(restored[slots.long()], arena[slots.long()], atol=0, rtol=0)
    untouched = [s for s in range(6) if s not in slots.tolist()]
    assert not restored[untouched].any()
