"""Launch planning, specialisation keys and the kernel cache (all pure Python, no GPU)."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tk_cases import cu_lens, make_batch, make_queries

from tierd_kernels import cuda, ops, plans, sources, validation
from tierd_kernels.sources import KernelSource


@given(base_ctas=st.integers(1, 10_000), max_seq_len=st.integers(1, 1 << 20), num_sms=st.integers(1, 200))
def test_split_heuristic_fills_the_gpu_without_tiny_splits(base_ctas: int, max_seq_len: int, num_sms: int) -> None:
    splits = plans.choose_num_splits(base_ctas, max_seq_len, num_sms)
    target = plans.TARGET_CTAS_PER_SM * num_sms
    assert 1 <= splits <= plans.MAX_SPLITS
    if base_ctas >= target:
        assert splits == 1
    if splits > 1:
        assert max_seq_len // splits >= plans.MIN_TOKENS_PER_SPLIT
    if splits * base_ctas < target and splits < plans.MAX_SPLITS:
        # Only the length limit may stop it short of filling the GPU.
        assert splits == max(1, max_seq_len // plans.MIN_TOKENS_PER_SPLIT)


@given(group=st.integers(1, 64))
def test_heads_per_cta_is_a_small_power_of_two_covering_the_group(group: int) -> None:
    heads = sources.decode_heads_per_cta(group)
    assert heads & (heads - 1) == 0
    assert min(group, sources.MAX_DECODE_HEADS_PER_CTA) <= heads <= sources.MAX_DECODE_HEADS_PER_CTA
    assert heads < 2 * min(group, sources.MAX_DECODE_HEADS_PER_CTA)


@settings(max_examples=40, deadline=None)
@given(group=st.sampled_from([1, 2, 3, 8, 12]), lens=st.lists(st.integers(0, 90), min_size=1, max_size=5),
       num_splits=st.one_of(st.none(), st.integers(1, 9)), max_seq_len=st.one_of(st.none(), st.integers(1, 200)))
def test_decode_plan_covers_every_head_and_token(group: int, lens: list[int], num_splits: int | None,
                                                  max_seq_len: int | None) -> None:
    batch = make_batch(lens, dtype=torch.float16, head_dim=64, num_kv_heads=2, page_tokens=8)
    q = make_queries(len(lens), 2 * group, 64, torch.float16)
    problem = validation.check_decode_inputs(q, batch.arena, batch.block_tables, batch.seq_lens, 0, None, None)
    launches = plans.plan_decode(problem, q, batch.arena, batch.block_tables, batch.seq_lens, torch.empty_like(q),
                                 num_sms=132, num_splits=num_splits, max_seq_len=max_seq_len)
    partial = launches[0]
    heads = sources.decode_heads_per_cta(group)
    splits = partial.grid[2]
    assert partial.grid[:2] == (2 * -(-group // heads), len(lens))
    assert dict(partial.kernel.macros)["TK_HEADS_PER_CTA"] == str(heads)
    if num_splits is not None:
        assert splits == num_splits
    tokens_per_split = partial.args[13].value  # the last split also takes any tokens past this bound
    assert tokens_per_split * splits >= min(max_seq_len or 1 << 30, problem.max_pages * 8)
    assert len(launches) == (2 if splits > 1 else 1)
    if splits > 1:
        assert launches[1].grid == (2 * group, len(lens), 1)


def test_prefill_plan_grid_covers_the_longest_sequence() -> None:
    batch = make_batch([40, 9], dtype=torch.bfloat16, head_dim=128, num_kv_heads=2, page_tokens=16)
    q = make_queries(45, 8, 128, torch.bfloat16)
    cu = cu_lens([40, 5])
    problem = validation.check_prefill_inputs(q, cu, batch.arena, batch.block_tables, batch.seq_lens, 1, None, None)
    out = torch.empty_like(q)
    (hinted,) = plans.plan_prefill(problem, q, cu, batch.arena, batch.block_tables, batch.seq_lens, out, max_q_len=40)
    rows = plans.prefill_rows_per_cta(torch.bfloat16, 128)
    assert hinted.grid[1:] == (2, 2)
    assert hinted.grid[0] * rows >= 40 * 4 > (hinted.grid[0] - 1) * rows
    (unhinted,) = plans.plan_prefill(problem, q, cu, batch.arena, batch.block_tables, batch.seq_lens, out)
    assert unhinted.grid[0] * rows >= 45 * 4


@pytest.mark.parametrize(("dtype", "capability", "expected"), [
    (torch.float16, (8, 0), True), (torch.bfloat16, (8, 0), True), (torch.bfloat16, (9, 0), True),
    (torch.float16, (12, 1), True), (torch.float32, (9, 0), False), (torch.float16, (7, 5), False),
    (torch.bfloat16, (7, 5), False), (torch.float16, (6, 1), False),
])
def test_prefill_dispatch_uses_tensor_cores_for_16_bit_types_from_sm80(dtype: torch.dtype,
                                                                       capability: tuple[int, int],
                                                                       expected: bool) -> None:
    assert plans.prefill_uses_tensor_cores(dtype, capability) is expected


PrefillCall = tuple[validation.AttentionProblem, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                    torch.Tensor]


def _prefill_problem(dtype: torch.dtype, q: torch.Tensor | None = None) -> PrefillCall:
    """plan_prefill's positional arguments for a small batch (q optionally given, e.g. as a view)."""
    batch = make_batch([40, 9], dtype=dtype, head_dim=128, num_kv_heads=2, page_tokens=16)
    q = make_queries(45, 8, 128, dtype) if q is None else q
    cu = cu_lens([40, 5])
    problem = validation.check_prefill_inputs(q, cu, batch.arena, batch.block_tables, batch.seq_lens, 1, None, None)
    return problem, q, cu, batch.arena, batch.block_tables, batch.seq_lens, torch.empty(q.shape, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_prefill_plan_with_tensor_cores_launches_the_mma_kernel(dtype: torch.dtype) -> None:
    (plan,) = plans.plan_prefill(*_prefill_problem(dtype), max_q_len=40, tensor_cores=True)
    assert plan.kernel == sources.prefill_mma_spec(dtype, 128, 16)
    assert plan.kernel.source is KernelSource.PREFILL_MMA and plan.kernel.function == "tk_prefill_mma"
    assert plan.block == (plans.PREFILL_MMA_THREADS, 1, 1)
    rows = plans.PREFILL_MMA_ROWS_PER_CTA
    assert plan.grid[1:] == (2, 2) and plan.grid[0] * rows >= 40 * 4 > (plan.grid[0] - 1) * rows
    (plain,) = plans.plan_prefill(*_prefill_problem(dtype), max_q_len=40)
    assert plain.kernel == sources.prefill_spec(dtype, 128, 16)
    assert [a.kind for a in plain.args] == [a.kind for a in plan.args]  # one argument list for both kernels


def test_prefill_plan_falls_back_to_cuda_cores_for_fp32_and_unaligned_queries() -> None:
    def kernel(dtype: torch.dtype, q: torch.Tensor | None = None) -> str:
        (plan,) = plans.plan_prefill(*_prefill_problem(dtype, q), tensor_cores=True)
        return plan.kernel.function

    assert kernel(torch.float32) == "tk_prefill"
    fp16 = torch.float16
    assert kernel(fp16, torch.zeros((45, 10, 128), dtype=fp16)[:, 2:]) == "tk_prefill_mma"  # a fused-qkv view
    assert kernel(fp16, torch.zeros((45, 8, 136), dtype=fp16)[:, :, 4:132]) == "tk_prefill"  # base 8 B off
    assert kernel(fp16, torch.zeros((45, 8, 132), dtype=fp16)[:, :, :128]) == "tk_prefill"  # 264-byte head stride
    with pytest.raises(plans.KernelInputError, match="tensor-core prefill kernel takes dtypes"):
        sources.prefill_mma_spec(torch.float32, 128, 16)


def test_ops_asks_the_device_capability_only_for_16_bit_types(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[torch.device] = []

    def capability(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return (7, 5) if device.index == 1 else (9, 0)

    monkeypatch.setattr(cuda, "compute_capability", capability)
    assert ops._prefill_tensor_cores(torch.device("cuda", 0), torch.bfloat16)
    assert not ops._prefill_tensor_cores(torch.device("cuda", 1), torch.float16)
    assert not ops._prefill_tensor_cores(torch.device("cuda", 0), torch.float32)
    assert asked == [torch.device("cuda", 0), torch.device("cuda", 1)]


def test_cupy_marshalling_matches_the_declared_c_sizes() -> None:
    tensor = torch.zeros(4)
    for arg in (plans.pointer(tensor), plans.pointer(None), plans.i32(-3), plans.i64(1 << 40), plans.f32(0.5)):
        value = cuda.to_cupy_arg(arg)
        assert np.asarray(value).dtype.itemsize == arg.kind.size_bytes
        assert value == arg.value
    with pytest.raises(plans.KernelInputError, match="fit in int32"):
        plans.i32(1 << 31)


def test_pointer_extent_covers_a_strided_view() -> None:
    base = torch.zeros((4, 6, 8), dtype=torch.float16)
    view = base[:, 1:5]
    arg = plans.pointer(view, writable=True)
    last = view[-1, -1, -1].data_ptr() + 2
    assert arg.value == view.data_ptr() and arg.value + arg.extent_bytes == last and arg.writable


def test_expanded_sources_inline_the_header_once() -> None:
    for source in KernelSource:
        text = sources.expand_source(source)
        assert not re.search(r'#\s*include\s+"', text)
        assert text.count("struct RowLayout") == 1
        assert "#include <cuda_fp16.h>" in text


def test_compile_check_specs_touch_every_specialisation_axis() -> None:
    specs = sources.compile_check_specs()
    macros = [dict(s.macros) for s in specs]
    assert {s.source for s in specs} == set(KernelSource)
    assert {m.get("TK_SCALAR_T") for m in macros} >= set(sources.CUDA_SCALAR_TYPES.values())
    assert {m.get("TK_HEAD_DIM") for m in macros} >= {"64", "128", "256"}
    assert {m.get("TK_HEADS_PER_CTA") for m in macros} >= {"1", "2", "4", "8"}
    assert {m.get("TK_PAGE_TOKENS") for m in macros} >= {"8", "256"}
    assert specs[1].define_flags()[0].startswith("-DTK_SCALAR_T=")


def test_kernel_cache_compiles_each_specialisation_once(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[tuple[sources.KernelSource, tuple[tuple[str, str], ...], int]] = []
    lock = threading.Lock()

    class FakeModule:
        def get_function(self, name: str) -> tuple[str, int]:
            return (name, id(self))

    def fake_compile(spec: sources.KernelSpec, device_index: int) -> FakeModule:
        with lock:
            compiled.append((spec.source, spec.macros, device_index))
        return FakeModule()

    monkeypatch.setattr(cuda.KernelCache, "_compile", staticmethod(fake_compile))
    cache = cuda.KernelCache()
    partial, reduce = sources.decode_specs(torch.float16, 128, 16, 4)
    other = sources.prefill_spec(torch.float16, 128, 32)
    threads = [threading.Thread(target=cache.get, args=(spec, 0)) for spec in (partial, reduce, other) * 8]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.get(partial, 0) is cache.get(sources.decode_specs(torch.float16, 128, 16, 4)[0], 0)
    assert cache.get(partial, 0)[1] == cache.get(reduce, 0)[1]  # one module serves both decode kernels
    assert sorted(compiled, key=str) == sorted([(partial.source, partial.macros, 0),
                                                (other.source, other.macros, 0)], key=str)
    cache.get(partial, 1)  # another device is another module
    assert cache.num_modules() == 3


def test_an_empty_batch_launches_nothing() -> None:
    batch = make_batch([3], dtype=torch.float16, head_dim=64, num_kv_heads=1, page_tokens=8)
    q = make_queries(0, 1, 64, torch.float16)
    tables, lens = batch.block_tables[:0], batch.seq_lens[:0]
    problem = validation.check_decode_inputs(q, batch.arena, tables, lens, 0, None, None)
    assert plans.plan_decode(problem, q, batch.arena, tables, lens, torch.empty_like(q), num_sms=132) == ()
