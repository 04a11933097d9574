"""The CUDA kernels on a GPU against the torch reference (skipped without a GPU and CuPy)."""

from __future__ import annotations

import itertools

import pytest
import torch
from tk_cases import PagedBatch, cu_lens, make_batch, make_queries

import tierd_kernels as tk
from tierd_kernels import cuda, plans, reference, validation
from tierd_kernels.tolerances import attention_tolerance

pytestmark = pytest.mark.cuda

DEVICE = torch.device("cuda")


def _on_gpu(batch: PagedBatch) -> PagedBatch:
    return PagedBatch(batch.arena.to(DEVICE), batch.block_tables.to(DEVICE), batch.seq_lens.to(DEVICE))


def _reference_decode(q: torch.Tensor, batch: PagedBatch, layer: int) -> torch.Tensor:
    return tk.paged_attention_decode(q, batch.arena, batch.block_tables, batch.seq_lens, layer)


def _assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    tol = attention_tolerance(expected.dtype)
    torch.testing.assert_close(got.cpu().float(), expected.float(), atol=tol.atol, rtol=tol.rtol)


@pytest.mark.parametrize(("dtype", "head_dim", "group", "page_tokens"), list(itertools.product(
    [torch.float16, torch.bfloat16, torch.float32], [64, 128, 256], [1, 4, 12], [8, 16, 256])))
@pytest.mark.parametrize("num_splits", [None, 5])
def test_decode_kernel_matches_reference(dtype: torch.dtype, head_dim: int, group: int, page_tokens: int,
                                         num_splits: int | None) -> None:
    lens = [1, page_tokens - 1, 3 * page_tokens + 5, 700]
    batch = make_batch(lens, dtype=dtype, head_dim=head_dim, num_kv_heads=2, page_tokens=page_tokens)
    q = make_queries(len(lens), 2 * group, head_dim, dtype)
    gpu = _on_gpu(batch)
    got = tk.paged_attention_decode(q.to(DEVICE), gpu.arena, gpu.block_tables, gpu.seq_lens, 1,
                                    num_splits=num_splits)
    _assert_close(got, _reference_decode(q, batch, 1))


@pytest.mark.parametrize("batch_size", [1, 64])
def test_decode_long_context_split_k_matches_reference(batch_size: int) -> None:
    lens = [32_768] + [1000 + 37 * i for i in range(batch_size - 1)]
    batch = make_batch(lens, dtype=torch.bfloat16, head_dim=128, num_kv_heads=8, page_tokens=16, num_layers=1)
    q = make_queries(batch_size, 32, 128, torch.bfloat16)
    gpu = _on_gpu(batch)
    got = tk.paged_attention_decode(q.to(DEVICE), gpu.arena, gpu.block_tables, gpu.seq_lens, 0)
    expected = tk.paged_attention_decode(q.to(DEVICE), gpu.arena, gpu.block_tables, gpu.seq_lens, 0,
                                         backend=tk.Backend.REFERENCE)
    _assert_close(got, expected.cpu())


@pytest.mark.parametrize(("dtype", "head_dim", "group", "page_tokens"), list(itertools.product(
    [torch.float16, torch.bfloat16, torch.float32], [64, 128, 256], [1, 3, 8], [8, 32, 256])))
def test_prefill_kernel_matches_reference(dtype: torch.dtype, head_dim: int, group: int, page_tokens: int) -> None:
    seq_lens = [1, 2 * page_tokens + 3, 300, 77]
    q_lens = [1, 2 * page_tokens + 3, 45, 0]
    batch = make_batch(seq_lens, dtype=dtype, head_dim=head_dim, num_kv_heads=2, page_tokens=page_tokens)
    q = make_queries(sum(q_lens), 2 * group, head_dim, dtype)
    cu = cu_lens(q_lens)
    gpu = _on_gpu(batch)
    got = tk.paged_attention_prefill(q.to(DEVICE), cu.to(DEVICE), gpu.arena, gpu.block_tables, gpu.seq_lens, 1)
    expected = tk.paged_attention_prefill(q, cu, batch.arena, batch.block_tables, batch.seq_lens, 1)
    _assert_close(got, expected)


@pytest.mark.parametrize(("dtype", "head_dim", "group", "page_tokens"), list(itertools.product(
    [torch.float16, torch.bfloat16], [64, 128, 256], [1, 3, 8], [8, 16, 256])))
@pytest.mark.parametrize("tensor_cores", [False, True], ids=["tk_prefill", "tk_prefill_mma"])
def test_both_prefill_kernels_match_reference(dtype: torch.dtype, head_dim: int, group: int, page_tokens: int,
                                              tensor_cores: bool) -> None:
    """Each prefill path, planned explicitly (the public API picks one by dtype and GPU)."""
    if tensor_cores and not plans.prefill_uses_tensor_cores(dtype, cuda.compute_capability(DEVICE)):
        pytest.skip("the tensor-core prefill kernel needs compute capability 8.0")
    seq_lens = [1, 2 * page_tokens + 3, 300, 77, 1000]
    q_lens = [1, 2 * page_tokens + 3, 45, 0, 700]  # prefills, extends, an empty query, many row and key tiles
    batch = make_batch(seq_lens, dtype=dtype, head_dim=head_dim, num_kv_heads=2, page_tokens=page_tokens)
    q = make_queries(sum(q_lens), 2 * group, head_dim, dtype)
    cu = cu_lens(q_lens)
    gpu, q_gpu, cu_gpu = _on_gpu(batch), q.to(DEVICE), cu.to(DEVICE)
    problem = validation.check_prefill_inputs(q_gpu, cu_gpu, gpu.arena, gpu.block_tables, gpu.seq_lens, 1, None,
                                              None)
    expected = reference.prefill_reference(q, cu, batch.arena, batch.block_tables, batch.seq_lens, 1, head_dim ** -0.5)
    for max_q_len in (None, 8):  # the full grid, and a bound below the true length (CTAs stride)
        out = torch.full_like(q_gpu, float("nan"))
        launches = plans.plan_prefill(problem, q_gpu, cu_gpu, gpu.arena, gpu.block_tables, gpu.seq_lens, out,
                                      max_q_len=max_q_len, tensor_cores=tensor_cores)
        assert launches[0].kernel.function == ("tk_prefill_mma" if tensor_cores else "tk_prefill")
        cuda.launch(launches, DEVICE)
        _assert_close(out, expected)


def test_copy_kernels_are_exact() -> None:
    arena = torch.randn((64, 4, 2, 16, 8, 128), dtype=torch.bfloat16, device=DEVICE)
    slots = torch.tensor([5, 63, 0, 17], device=DEVICE, dtype=torch.int32)
    staging = tk.gather_pages(arena, slots, torch.empty((4, *arena.shape[1:]), dtype=arena.dtype, device=DEVICE))
    torch.testing.assert_close(staging, arena[slots.long()], atol=0, rtol=0)
    target = torch.zeros_like(arena)
    tk.scatter_pages(staging, target, slots)
    torch.testing.assert_close(target[slots.long()], arena[slots.long()], atol=0, rtol=0)
    k = torch.randn((3, 8, 128), dtype=arena.dtype, device=DEVICE)
    v = torch.randn((3, 8, 128), dtype=arena.dtype, device=DEVICE)
    positions = torch.tensor([5 * 16 + 3, -1, 63 * 16 + 15], device=DEVICE)
    expected = target.cpu()
    tk.store_kv(expected, 2, k.cpu(), v.cpu(), positions.cpu())
    tk.store_kv(target, 2, k, v, positions)
    torch.testing.assert_close(target.cpu(), expected, atol=0, rtol=0)


def test_kernels_run_on_the_current_stream_and_compile_once() -> None:
    batch = _on_gpu(make_batch([50, 9], dtype=torch.float16, head_dim=128, num_kv_heads=2, page_tokens=16))
    q = make_queries(2, 8, 128, torch.float16).to(DEVICE)
    first = tk.paged_attention_decode(q, batch.arena, batch.block_tables, batch.seq_lens, 0)
    compiled = cuda.default_cache().num_modules()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        again = tk.paged_attention_decode(q, batch.arena, batch.block_tables, batch.seq_lens, 0)
    side.synchronize()
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    assert cuda.default_cache().num_modules() == compiled


def test_out_of_range_indices_do_not_fault() -> None:
    batch = make_batch([50, 9], dtype=torch.float16, head_dim=64, num_kv_heads=1, page_tokens=8)
    tables = batch.block_tables.clone()
    tables[0, 2] = 10_000
    gpu = PagedBatch(batch.arena.to(DEVICE), tables.to(DEVICE), torch.tensor([50, 1 << 20], dtype=torch.int32,
                                                                             device=DEVICE))
    q = make_queries(2, 2, 64, torch.float16).to(DEVICE)
    out = tk.paged_attention_decode(q, gpu.arena, gpu.block_tables, gpu.seq_lens, 0, num_splits=3)
    torch.cuda.synchronize()
    assert torch.isfinite(out.float()).all()
