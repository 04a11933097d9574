"""Input checks: every wrong input is refused with a message saying what was expected and given."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tk_cases import PagedBatch, cu_lens, make_batch, make_queries

import tierd_kernels as tk
from tierd_kernels import cuda, plans


@pytest.fixture
def batch() -> PagedBatch:
    return make_batch([5, 12], dtype=torch.float16, head_dim=64, num_kv_heads=2, page_tokens=8)


@pytest.fixture
def q() -> torch.Tensor:
    return make_queries(2, 4, 64, torch.float16)


def _decode(q: torch.Tensor, b: PagedBatch, **overrides: object) -> torch.Tensor:
    args = {"arena": b.arena, "block_tables": b.block_tables, "seq_lens": b.seq_lens, "layer": 1} | overrides
    return tk.paged_attention_decode(q, **args)


@pytest.mark.parametrize(("arena", "message"), [
    (torch.zeros((4, 2, 2, 8, 64)), r"shape \[num_slots, num_layers, 2, page_tokens"),
    (torch.zeros((4, 2, 3, 8, 2, 64)), "K and V on axis 2"),
    (torch.zeros((4, 2, 2, 8, 2, 64)).transpose(0, 1), "contiguous"),
    (torch.zeros((4, 2, 2, 8, 2, 96)), r"head_dim .* must be one of \(64, 128, 256\); got 96"),
    (torch.zeros((4, 2, 2, 12, 2, 64)), "power of two in 8..256; got 12"),
    (torch.zeros((4, 2, 2, 512, 2, 64)), "power of two in 8..256; got 512"),
    (torch.zeros((4, 2, 2, 8, 2, 64), dtype=torch.int8), "dtype must be one of"),
])
def test_unsupported_arenas_are_refused(q: torch.Tensor, batch: PagedBatch, arena: torch.Tensor,
                                         message: str) -> None:
    with pytest.raises(tk.KernelInputError, match=message):
        _decode(q.to(arena.dtype) if arena.is_floating_point() else q, batch, arena=arena)


def test_queries_must_match_the_arena(q: torch.Tensor, batch: PagedBatch) -> None:
    with pytest.raises(tk.KernelInputError, match="q must have dtype torch.float16; got shape"):
        _decode(q.float(), batch)
    with pytest.raises(tk.KernelInputError, match="last axis must be head_dim = 64"):
        _decode(torch.zeros((2, 4, 128), dtype=torch.float16), batch)
    with pytest.raises(tk.KernelInputError, match="multiple of num_kv_heads = 2"):
        _decode(torch.zeros((2, 3, 64), dtype=torch.float16), batch)
    with pytest.raises(tk.KernelInputError, match="head_dim axis must be contiguous"):
        _decode(torch.zeros((2, 64, 4), dtype=torch.float16).transpose(1, 2), batch)
    with pytest.raises(tk.KernelInputError, match="must be on the arena's device"):
        _decode(q.to("meta"), batch)


def test_page_tables_and_layer_are_checked(q: torch.Tensor, batch: PagedBatch) -> None:
    with pytest.raises(tk.KernelInputError, match="block_tables must have dtype torch.int32"):
        _decode(q, batch, block_tables=batch.block_tables.long())
    with pytest.raises(tk.KernelInputError, match=r"block_tables must have shape \[num_seqs = 2"):
        _decode(q, batch, block_tables=batch.block_tables[:1])
    with pytest.raises(tk.KernelInputError, match=r"seq_lens must have shape \[num_seqs\] = \(2,\)"):
        _decode(q, batch, seq_lens=batch.seq_lens[:1])
    with pytest.raises(tk.KernelInputError, match=r"layer must be in 0..1 \(arena axis 1\); got 2"):
        _decode(q, batch, layer=2)
    with pytest.raises(tk.KernelInputError, match="layer must be an int"):
        _decode(q, batch, layer=True)
    with pytest.raises(tk.KernelInputError, match="scale must be a finite number"):
        _decode(q, batch, scale=float("nan"))


def test_index_values_are_checked_on_the_reference_path(q: torch.Tensor, batch: PagedBatch) -> None:
    with pytest.raises(tk.KernelInputError, match=r"seq_lens\[1\] must be in 0..24 .*got 25"):
        _decode(q, batch, seq_lens=torch.tensor([5, 25], dtype=torch.int32))
    tables = batch.block_tables.clone()
    tables[1, 1] = 99
    with pytest.raises(tk.KernelInputError, match=r"block_tables\[1, 1\] must be a slot in 0..4 .*got 99"):
        _decode(q, batch, block_tables=tables)


def test_prefill_query_lengths_are_checked(batch: PagedBatch) -> None:
    q = make_queries(6, 4, 64, torch.float16)
    with pytest.raises(tk.KernelInputError, match="must start at 0 and end at total_q_tokens = 6"):
        tk.paged_attention_prefill(q, cu_lens([1, 4]), batch.arena, batch.block_tables, batch.seq_lens, 0)
    long_q = make_queries(7, 4, 64, torch.float16)
    with pytest.raises(tk.KernelInputError, match="sequence 0 must have 0 <= q_len <= seq_len.*q_len 6, seq_len 5"):
        tk.paged_attention_prefill(long_q, cu_lens([6, 1]), batch.arena, batch.block_tables, batch.seq_lens, 0)
    with pytest.raises(tk.KernelInputError, match=r"cu_q_lens must have shape \[num_seqs \+ 1\]"):
        tk.paged_attention_prefill(q, torch.tensor([0], dtype=torch.int32), batch.arena, batch.block_tables,
                                   batch.seq_lens, 0)


def test_store_kv_inputs_are_checked(batch: PagedBatch) -> None:
    k = torch.zeros((3, 2, 64), dtype=torch.float16)
    positions = torch.tensor([0, 1, 2])
    with pytest.raises(tk.KernelInputError, match="slot_mapping must have dtype torch.int64"):
        tk.store_kv(batch.arena, 0, k, k, positions.int())
    with pytest.raises(tk.KernelInputError, match=r"v must have shape \[num_tokens, num_kv_heads, head_dim\]"):
        tk.store_kv(batch.arena, 0, k, k[:2], positions)
    with pytest.raises(tk.KernelInputError, match="block must be contiguous"):
        tk.store_kv(batch.arena, 0, torch.zeros((3, 64, 2), dtype=torch.float16).transpose(1, 2), k, positions)
    with pytest.raises(tk.KernelInputError, match=r"slot_mapping\[2\] must be < num_slots \* page_tokens = 40"):
        tk.store_kv(batch.arena, 0, k, k, torch.tensor([0, 1, 40]))


def test_store_kv_takes_one_kv_head_whatever_its_stride() -> None:
    """A ``[n, 1, d]`` view (e.g. of ``[n, d]``) has an arbitrary stride on its size-1 axis."""
    one_head = make_batch([5], dtype=torch.float32, head_dim=64, num_kv_heads=1, page_tokens=16)
    k = torch.randn((3, 64)).unsqueeze(1).as_strided((3, 1, 64), (64, 512, 1))
    v = torch.randn((3, 64)).unsqueeze(1)
    slots = torch.tensor([0, 1, 2])
    expected = one_head.arena.clone()
    tk.reference.store_kv_reference(expected, 1, k.contiguous(), v.contiguous(), slots)
    tk.store_kv(one_head.arena, 1, k, v, slots)
    assert torch.equal(one_head.arena, expected)
    assert not torch.equal(one_head.arena, make_batch([5], dtype=torch.float32, head_dim=64, num_kv_heads=1,
                                                      page_tokens=16).arena)  # it did store


def test_page_copy_inputs_are_checked(batch: PagedBatch) -> None:
    staging = torch.zeros((2, *batch.arena.shape[1:]), dtype=torch.float16)
    with pytest.raises(tk.KernelInputError, match="slots must be int32 or int64"):
        tk.gather_pages(batch.arena, torch.tensor([0.0, 1.0]), staging)
    with pytest.raises(tk.KernelInputError, match=r"out must have shape \[len\(slots\)"):
        tk.gather_pages(batch.arena, torch.tensor([0, 1, 2]), staging)
    with pytest.raises(tk.KernelInputError, match=r"slots\[1\] must be in 0..4; got 6"):
        tk.gather_pages(batch.arena, torch.tensor([0, 6]), staging)
    with pytest.raises(tk.KernelInputError, match="must be distinct"):
        tk.scatter_pages(staging, batch.arena, torch.tensor([3, 3]))


def test_cuda_backend_needs_cuda_tensors(q: torch.Tensor, batch: PagedBatch) -> None:
    with pytest.raises(tk.KernelInputError, match="needs tensors on a CUDA device; got cpu"):
        _decode(q, batch, backend=tk.Backend.CUDA)
    with pytest.raises(tk.KernelInputError, match="backend must be a tierd_kernels.Backend"):
        _decode(q, batch, backend="cuda")


def test_misaligned_views_are_refused_before_a_launch(batch: PagedBatch) -> None:
    flat = torch.zeros(batch.arena.numel() + 1, dtype=batch.arena.dtype)
    shifted = flat[1:].view(batch.arena.shape)
    with pytest.raises(tk.KernelInputError, match="16-byte boundary"):
        plans.check_aligned("arena", shifted)


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_missing_cupy_is_reported_with_the_fix() -> None:
    with pytest.raises(tk.KernelUnavailableError, match=r"pip install 'tierd\[cuda\]'.*Backend.REFERENCE"):
        cuda.import_cupy()


def test_importing_the_package_loads_no_cuda_library() -> None:
    code = ("import sys, tierd, tierd_kernels; "
            "print(sorted(m for m in sys.modules if m == 'tierd_kernels.cuda' or m.split('.')[0] == 'cupy'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "[]"
