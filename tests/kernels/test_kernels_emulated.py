"""The CUDA kernels, run on the CPU emulator through the real launch plans, against the reference.

This is the CPU-side check of the CUDA sources' logic (indexing, GQA tiles, split-K merge, causal
masks, page copies) and of the launchers' argument lists; the emulator also fails any access
outside the buffers or misaligned for a 16-byte load. Timing and races are the GPU tests' job.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tk_cases import PagedBatch, cu_lens, make_batch, make_queries, oracle_attention
from tk_emulator import EmulationError, Emulator

from tierd_kernels import plans, reference, sources, validation
from tierd_kernels.layout import ArenaGeometry
from tierd_kernels.tolerances import attention_tolerance

H100_SMS = 132


@dataclasses.dataclass(frozen=True)
class DecodeCase:
    dtype: torch.dtype
    head_dim: int
    page_tokens: int
    num_heads: int
    num_kv_heads: int
    seq_lens: tuple[int, ...]


DECODE_CASES = [
    DecodeCase(torch.float16, 128, 16, 8, 2, (1, 16, 37, 100)),    # GQA 4, lengths 1, one page, mid-page
    DecodeCase(torch.bfloat16, 64, 8, 12, 1, (0, 5, 64)),          # GQA 12: two head tiles, last partial
    DecodeCase(torch.float32, 256, 32, 3, 3, (33, 2)),             # MHA, fp32, 256-wide heads
    DecodeCase(torch.float16, 64, 256, 4, 2, (300, 7)),            # 256-token pages
]
PREFILL_CASES = [
    # dtype, head_dim, page_tokens, num_heads, num_kv_heads, q_lens, seq_lens
    (torch.float16, 128, 16, 8, 2, (1, 5, 20, 0), (1, 40, 20, 9)),
    (torch.bfloat16, 64, 8, 6, 2, (7, 13), (7, 30)),
    (torch.float32, 256, 32, 2, 1, (9,), (45,)),
]


def _decode_spec(case: DecodeCase) -> sources.KernelSpec:
    heads = sources.decode_heads_per_cta(case.num_heads // case.num_kv_heads)
    return sources.decode_specs(case.dtype, case.head_dim, case.page_tokens, heads)[0]


@pytest.fixture(scope="module")
def built(emulator: Emulator) -> Emulator:
    """Compile every specialisation this module uses at once (in parallel)."""
    specs = [_decode_spec(c) for c in DECODE_CASES]
    specs += [sources.prefill_spec(c[0], c[1], c[2]) for c in PREFILL_CASES]
    specs.append(sources.page_copy_spec("tk_gather_pages"))
    emulator.build(specs)
    return emulator


def _decode_batch(case: DecodeCase) -> tuple[torch.Tensor, PagedBatch]:
    batch = make_batch(list(case.seq_lens), dtype=case.dtype, head_dim=case.head_dim,
                       num_kv_heads=case.num_kv_heads, page_tokens=case.page_tokens)
    return make_queries(len(case.seq_lens), case.num_heads, case.head_dim, case.dtype), batch


def _emulated_decode(emu: Emulator, q: torch.Tensor, batch: PagedBatch, layer: int,
                     **kwargs: int | None) -> torch.Tensor:
    problem = validation.check_decode_inputs(q, batch.arena, batch.block_tables, batch.seq_lens, layer, None, None)
    out = torch.full_like(q, float("nan"))  # a row the kernel forgets stays NaN
    emu.run(plans.plan_decode(problem, q, batch.arena, batch.block_tables, batch.seq_lens, out,
                              num_sms=H100_SMS, **kwargs))
    return out


@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: f"{c.dtype}-d{c.head_dim}-p{c.page_tokens}-"
                         f"h{c.num_heads}kv{c.num_kv_heads}")
@pytest.mark.parametrize("num_splits", [None, 3])
def test_decode_kernel_matches_reference(built: Emulator, case: DecodeCase, num_splits: int | None) -> None:
    q, batch = _decode_batch(case)
    got = _emulated_decode(built, q, batch, layer=1, num_splits=num_splits)
    expected = reference.decode_reference(q, batch.arena, batch.block_tables, batch.seq_lens, 1,
                                          case.head_dim ** -0.5)
    tol = attention_tolerance(case.dtype)
    torch.testing.assert_close(got.float(), expected.float(), atol=tol.atol, rtol=tol.rtol)


def test_decode_split_bound_below_true_length_is_still_exact(built: Emulator) -> None:
    """max_seq_len is a hint: underestimating it must not drop tokens (the last split takes the rest)."""
    case = DECODE_CASES[0]
    q, batch = _decode_batch(case)
    got = _emulated_decode(built, q, batch, layer=0, num_splits=2, max_seq_len=20)
    oracle = oracle_attention(q, [1] * len(case.seq_lens), batch, 0, case.head_dim ** -0.5)
    tol = attention_tolerance(case.dtype)
    torch.testing.assert_close(got.double(), oracle, atol=tol.atol, rtol=tol.rtol)


def test_decode_heuristic_splits_long_contexts_and_matches(built: Emulator) -> None:
    case = DecodeCase(torch.float16, 128, 16, 8, 2, (700, 3))
    q, batch = _decode_batch(case)
    problem = validation.check_decode_inputs(q, batch.arena, batch.block_tables, batch.seq_lens, 0, None, None)
    launches = plans.plan_decode(problem, q, batch.arena, batch.block_tables, batch.seq_lens, torch.empty_like(q),
                                 num_sms=H100_SMS)
    assert launches[0].grid[2] > 1 and len(launches) == 2  # split-K plus reduce
    got = _emulated_decode(built, q, batch, layer=0)
    oracle = oracle_attention(q, [1, 1], batch, 0, case.head_dim ** -0.5)
    tol = attention_tolerance(case.dtype)
    torch.testing.assert_close(got.double(), oracle, atol=tol.atol, rtol=tol.rtol)


def test_decode_with_strided_queries(built: Emulator) -> None:
    """q may be a view (e.g. a slice of a fused qkv projection) as long as head_dim is contiguous."""
    case = DECODE_CASES[0]
    q, batch = _decode_batch(case)
    fused = torch.zeros((q.shape[0], q.shape[1] + 3, q.shape[2]), dtype=q.dtype)
    fused[:, 1:1 + q.shape[1]] = q
    view = fused[:, 1:1 + q.shape[1]]
    got = _emulated_decode(built, view, batch, layer=1)
    torch.testing.assert_close(got, _emulated_decode(built, q, batch, layer=1), atol=0, rtol=0)


def test_decode_bad_indices_stay_inside_the_buffers(built: Emulator) -> None:
    """Out-of-range slots and lengths are the caller's bug, but the kernel must not fault on them."""
    case = DECODE_CASES[0]
    q, batch = _decode_batch(case)
    tables = batch.block_tables.clone()
    tables[2, 1] = batch.arena.shape[0] + 3
    tables[3, 0] = -1
    lens = torch.tensor([1, 10_000, 37, 100], dtype=torch.int32)
    bad = PagedBatch(batch.arena, tables, lens)
    out = _emulated_decode(built, q, bad, layer=0, num_splits=2)
    assert torch.isfinite(out.float()).all()


def _emulated_prefill(emu: Emulator, q: torch.Tensor, q_lens: list[int], batch: PagedBatch, layer: int,
                      max_q_len: int | None = None) -> torch.Tensor:
    cu = cu_lens(q_lens)
    problem = validation.check_prefill_inputs(q, cu, batch.arena, batch.block_tables, batch.seq_lens, layer,
                                              None, None)
    out = torch.full_like(q, float("nan"))
    emu.run(plans.plan_prefill(problem, q, cu, batch.arena, batch.block_tables, batch.seq_lens, out,
                               max_q_len=max_q_len))
    return out


@pytest.mark.parametrize("case", PREFILL_CASES, ids=lambda c: f"{c[0]}-d{c[1]}-p{c[2]}-h{c[3]}kv{c[4]}")
@pytest.mark.parametrize("max_q_len", [None, 1])
def test_prefill_kernel_matches_oracle(built: Emulator, case: tuple, max_q_len: int | None) -> None:
    dtype, head_dim, page_tokens, num_heads, num_kv_heads, q_lens, seq_lens = case
    batch = make_batch(list(seq_lens), dtype=dtype, head_dim=head_dim, num_kv_heads=num_kv_heads,
                       page_tokens=page_tokens)
    q = make_queries(sum(q_lens), num_heads, head_dim, dtype)
    got = _emulated_prefill(built, q, list(q_lens), batch, layer=1, max_q_len=max_q_len)
    oracle = oracle_attention(q, list(q_lens), batch, 1, head_dim ** -0.5)
    tol = attention_tolerance(dtype)
    torch.testing.assert_close(got.double(), oracle, atol=tol.atol, rtol=tol.rtol)


def _copy_batch(dtype: torch.dtype = torch.float16, page_shape: tuple[int, ...] = (2, 2, 8, 2, 64)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    return torch.randn((9, *page_shape), generator=generator).to(dtype)


@pytest.mark.parametrize(("slot_dtype", "page_shape"), [
    (torch.int32, (2, 2, 8, 2, 64)),      # 8 KiB pages: one CTA per page
    (torch.int64, (3, 2, 16, 2, 128)),    # 48 KiB pages: three chunks per page, the last partial
])
def test_gather_and_scatter_pages_match_reference(built: Emulator, slot_dtype: torch.dtype,
                                                  page_shape: tuple[int, ...]) -> None:
    arena = _copy_batch(page_shape=page_shape)
    geometry = ArenaGeometry.of(arena)
    slots = torch.tensor([7, 0, 3, 8], dtype=slot_dtype)
    staging = torch.full((4, *arena.shape[1:]), float("nan"), dtype=arena.dtype)
    built.run(plans.plan_gather_pages(geometry, arena, slots, staging))
    torch.testing.assert_close(staging, arena[slots.long()], atol=0, rtol=0)

    target = torch.zeros_like(arena)
    built.run(plans.plan_scatter_pages(geometry, staging, target, slots))
    expected = torch.zeros_like(arena)
    reference.scatter_pages_reference(staging, expected, slots)
    torch.testing.assert_close(target, expected, atol=0, rtol=0)


def test_gather_skips_out_of_range_slots_without_faulting(built: Emulator) -> None:
    arena = _copy_batch()
    staging = torch.zeros((3, *arena.shape[1:]), dtype=arena.dtype)
    slots = torch.tensor([1, 99, -2])
    built.run(plans.plan_gather_pages(ArenaGeometry.of(arena), arena, slots, staging))
    torch.testing.assert_close(staging[0], arena[1], atol=0, rtol=0)
    assert not staging[1:].any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_store_kv_matches_reference(built: Emulator, dtype: torch.dtype) -> None:
    arena = _copy_batch(dtype)
    geometry = ArenaGeometry.of(arena)
    num_tokens, row = 5, geometry.row_elems
    generator = torch.Generator().manual_seed(9)
    # k and v as views into one fused [tokens, q | k | v] projection: token stride != row size.
    fused = torch.randn((num_tokens, 4 * row), generator=generator).to(dtype)
    k = fused[:, 2 * row:3 * row].view(num_tokens, geometry.num_kv_heads, geometry.head_dim)
    v = fused[:, 3 * row:].view(num_tokens, geometry.num_kv_heads, geometry.head_dim)
    slot_mapping = torch.tensor([0, 17, -1, 71, 8 * 8 + 3], dtype=torch.int64)  # -1 is padding
    got = arena.clone()
    built.run(plans.plan_store_kv(geometry, 1, got, k, v, slot_mapping))
    expected = arena.clone()
    reference.store_kv_reference(expected, 1, k, v, slot_mapping)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert not torch.equal(got, arena)


def test_emulator_rejects_a_plan_that_disagrees_with_the_kernel_signature(built: Emulator) -> None:
    arena = _copy_batch()
    slots = torch.tensor([1])
    out = torch.empty((1, *arena.shape[1:]), dtype=arena.dtype)
    plan = plans.plan_gather_pages(ArenaGeometry.of(arena), arena, slots, out)[0]
    with pytest.raises(EmulationError, match="parameters"):
        built.run([dataclasses.replace(plan, args=plan.args[:-1])])
    narrowed = (plan.args[0], plans.i32(0), *plan.args[2:])
    with pytest.raises(EmulationError, match="sizes"):
        built.run([dataclasses.replace(plan, args=narrowed)])


def test_emulator_reports_reads_outside_the_buffers(built: Emulator) -> None:
    arena = _copy_batch()
    slots = torch.tensor([8])
    out = torch.empty((1, *arena.shape[1:]), dtype=arena.dtype)
    plan = plans.plan_gather_pages(ArenaGeometry.of(arena), arena, slots, out)[0]
    shrunk = dataclasses.replace(plan.args[0], extent_bytes=plan.args[0].extent_bytes // 2)
    with pytest.raises(EmulationError, match="outside every buffer"):
        built.run([dataclasses.replace(plan, args=(shrunk, *plan.args[1:]))])
