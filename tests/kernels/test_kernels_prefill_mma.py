"""The tensor-core prefill kernel (tk_prefill_mma, wmma) on the CPU emulator, against the reference.

The emulator runs the real prefill_mma.cu with an emulated nvcuda::wmma (emu/wmma_emu.h), so these
tests check the kernel's tiling, masks, online softmax and GQA rows, the launch plan's argument list,
every global access (bounds, 16-byte alignment) and every wmma pointer / ldm (32-byte alignment,
multiples of 16 bytes, the same in all lanes of a warp). The cases are the full product of dtype x
head_dim x page_tokens x GQA group with small ragged batches (sized for the slow emulator), plus a few
hand-picked shapes; the GPU test in test_kernels_cuda.py runs larger ones.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tk_cases import PagedBatch, cu_lens, make_batch, make_queries
from tk_emulator import EmulationError, Emulator

from tierd_kernels import plans, reference, sources, validation
from tierd_kernels.tolerances import attention_tolerance

ROWS = plans.PREFILL_MMA_ROWS_PER_CTA


@dataclasses.dataclass(frozen=True)
class MmaCase:
    dtype: torch.dtype
    head_dim: int
    page_tokens: int
    num_heads: int
    num_kv_heads: int
    q_lens: tuple[int, ...]
    seq_lens: tuple[int, ...]

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    def spec(self) -> sources.KernelSpec:
        return sources.prefill_mma_spec(self.dtype, self.head_dim, self.page_tokens)


DTYPES = (torch.float16, torch.bfloat16)
HEAD_DIMS = (64, 128, 256)
PAGE_TOKENS = (8, 16, 256)
GROUPS = (1, 3, 8)
# Keys per staged tile (mirrors MmaTile in prefill_mma.cu); a CTA owns ROWS (token, head) rows.
KEY_TILE = {64: 64, 128: 32, 256: 16}


def _product_case(dtype: torch.dtype, head_dim: int, page_tokens: int, group: int) -> MmaCase:
    """Ragged lengths: a single token; an extend whose q_len spans two row tiles (ROWS // group + 3
    tokens) over more than a key tile of context; a full prefill ending mid-page; an empty query; and
    a short extend over two pages and a bit."""
    long_q = ROWS // group + 3
    long_len = long_q + KEY_TILE[head_dim] + 5
    if long_len % 8 == 0:  # end mid-page for every page size
        long_len += 1
    return MmaCase(dtype, head_dim, page_tokens, group * (1 if group == 8 else 2), 1 if group == 8 else 2,
                   (1, long_q, 13, 0, 2), (1, long_len, 13, 9, 2 * page_tokens + 3))


# The full product: 18 specialisations (compiled in parallel, about 1.5 s each on one core) and 54
# emulated launches of well under a second each.
PRODUCT_CASES = [_product_case(dtype, d, p, g)
                 for dtype in DTYPES for d in HEAD_DIMS for p in PAGE_TOKENS for g in GROUPS]
# Hand-picked shapes (the key tiles are 64 / 32 / 16 keys for head_dim 64 / 128 / 256).
CASES = [
    # MHA; q_len 70 spans two row tiles and two key tiles; 90 and 12 end mid-page; an empty sequence.
    MmaCase(torch.float16, 64, 8, 2, 2, (1, 70, 5, 0), (1, 90, 12, 7)),
    # GQA 3: 30 tokens = 90 rows (two row tiles, the last partial); 47 keys end mid-page.
    MmaCase(torch.bfloat16, 128, 16, 6, 2, (3, 30, 1), (3, 47, 20)),
    # GQA 8 on 256-token pages; head_dim 256 (K and V share one buffer); 9 tokens = 72 rows.
    MmaCase(torch.float16, 256, 256, 8, 1, (9, 2), (40, 2)),
    # GQA 8, a sequence over two 256-token pages extended by one token, and a full prefill.
    MmaCase(torch.bfloat16, 64, 256, 8, 1, (1, 12), (300, 12)),
]


def _case_id(case: MmaCase) -> str:
    dtype = str(case.dtype).removeprefix("torch.")
    return f"{dtype}-d{case.head_dim}-p{case.page_tokens}-g{case.group}"


@pytest.fixture(scope="module")
def built(emulator: Emulator) -> Emulator:
    """Compile every specialisation this module uses at once (in parallel)."""
    emulator.build([case.spec() for case in PRODUCT_CASES + CASES])
    return emulator


def _inputs(case: MmaCase, seed: int = 0) -> tuple[torch.Tensor, PagedBatch]:
    batch = make_batch(list(case.seq_lens), dtype=case.dtype, head_dim=case.head_dim,
                       num_kv_heads=case.num_kv_heads, page_tokens=case.page_tokens, seed=seed)
    return make_queries(sum(case.q_lens), case.num_heads, case.head_dim, case.dtype, seed=seed + 1), batch


def _plan(q: torch.Tensor, cu: torch.Tensor, batch: PagedBatch, layer: int, out: torch.Tensor,
          max_q_len: int | None = None) -> tuple[plans.LaunchPlan, ...]:
    problem = validation.check_prefill_inputs(q, cu, batch.arena, batch.block_tables, batch.seq_lens, layer,
                                              None, None)
    launches = plans.plan_prefill(problem, q, cu, batch.arena, batch.block_tables, batch.seq_lens, out,
                                  max_q_len=max_q_len, tensor_cores=True)
    assert [p.kernel.function for p in launches] == ["tk_prefill_mma"]
    return launches


def _emulated(emu: Emulator, q: torch.Tensor, cu: torch.Tensor, batch: PagedBatch, layer: int,
              max_q_len: int | None = None) -> torch.Tensor:
    out = torch.full_like(q, float("nan"))  # a row the kernel forgets stays NaN
    emu.run(_plan(q, cu, batch, layer, out, max_q_len))
    return out


def _assert_matches_reference(got: torch.Tensor, q: torch.Tensor, cu: torch.Tensor, batch: PagedBatch,
                              layer: int) -> None:
    expected = reference.prefill_reference(q, cu, batch.arena, batch.block_tables, batch.seq_lens, layer,
                                           q.shape[2] ** -0.5)
    tol = attention_tolerance(q.dtype)
    torch.testing.assert_close(got.float(), expected.float(), atol=tol.atol, rtol=tol.rtol)


@pytest.mark.parametrize("case", PRODUCT_CASES, ids=_case_id)
def test_prefill_mma_matches_reference(built: Emulator, case: MmaCase) -> None:
    q, batch = _inputs(case)
    cu = cu_lens(list(case.q_lens))
    _assert_matches_reference(_emulated(built, q, cu, batch, layer=1), q, cu, batch, layer=1)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_prefill_mma_hand_picked_shapes_match_reference(built: Emulator, case: MmaCase) -> None:
    q, batch = _inputs(case, seed=7)
    cu = cu_lens(list(case.q_lens))
    _assert_matches_reference(_emulated(built, q, cu, batch, layer=0), q, cu, batch, layer=0)


@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=_case_id)
def test_prefill_mma_grid_below_the_true_length_strides_over_row_tiles(built: Emulator, case: MmaCase) -> None:
    """max_q_len is a hint: with a bound of 1 the grid has one row tile and CTAs stride over the rest."""
    q, batch = _inputs(case, seed=3)
    cu = cu_lens(list(case.q_lens))
    (plan,) = _plan(q, cu, batch, 0, torch.empty_like(q), max_q_len=1)
    assert plan.grid[0] == 1 and max(case.q_lens) * case.group > ROWS
    _assert_matches_reference(_emulated(built, q, cu, batch, layer=0, max_q_len=1), q, cu, batch, layer=0)


def test_prefill_mma_with_strided_queries(built: Emulator) -> None:
    """q may be a view (a slice of a fused qkv projection) whose strides are 16-byte multiples."""
    case = CASES[1]
    q, batch = _inputs(case)
    fused = torch.zeros((q.shape[0], q.shape[1] + 2, q.shape[2]), dtype=q.dtype)
    fused[:, 2:] = q
    cu = cu_lens(list(case.q_lens))
    got = _emulated(built, fused[:, 2:], cu, batch, layer=1)
    torch.testing.assert_close(got, _emulated(built, q, cu, batch, layer=1), atol=0, rtol=0)


def test_prefill_mma_bad_indices_stay_inside_the_buffers(built: Emulator) -> None:
    """Bad slots are skipped keys and bad lengths are clamped; the emulator fails any access outside."""
    case = CASES[0]
    q, batch = _inputs(case)
    tables = batch.block_tables.clone()
    tables[1, 3] = batch.arena.shape[0] + 5   # a slot past the arena: keys 24..31 are skipped
    tables[1, 9] = -1                         # a negative slot: keys 72..79 are skipped
    lens = torch.tensor([1, 10_000, 12, 7], dtype=torch.int32)  # seq 1 is clamped to the table
    cu = torch.tensor([0, 1, 500, 71, -4], dtype=torch.int32)   # ends past q and going backwards
    got = _emulated(built, q, cu, PagedBatch(batch.arena, tables, lens), layer=0)
    # Sequence 1 is clamped to q rows 1..75 and max_pages * page_tokens keys (those on its unused table
    # entries, -7, are skipped too); sequences 2 and 3 are clamped to no rows.
    assert torch.isfinite(got.float()).all()
    skipped = tables.clone()
    skipped[1, 3] = -1
    capacity = tables.shape[1] * case.page_tokens
    clamped_lens = torch.tensor([1, capacity, 12, 7], dtype=torch.int32)
    clamped_cu = torch.tensor([0, 1, q.shape[0], q.shape[0], q.shape[0]], dtype=torch.int32)
    expected = _skipping_reference(q, clamped_cu, batch.arena, skipped, clamped_lens)
    tol = attention_tolerance(q.dtype)
    torch.testing.assert_close(got.float(), expected.float(), atol=tol.atol, rtol=tol.rtol)


def _skipping_reference(q: torch.Tensor, cu: torch.Tensor, arena: torch.Tensor, tables: torch.Tensor,
                        seq_lens: torch.Tensor) -> torch.Tensor:
    """The reference where a negative table entry means 'these keys do not exist' (masked)."""
    out = torch.zeros_like(q)
    page_tokens = arena.shape[3]
    for seq in range(len(seq_lens)):
        begin, end, seq_len = int(cu[seq]), int(cu[seq + 1]), int(seq_lens[seq])
        if end == begin:
            continue
        positions = torch.arange(seq_len)
        slots = tables[seq, positions // page_tokens].long()
        present = slots >= 0
        rows = positions % page_tokens
        k = arena[slots.clamp(min=0), 0, 0, rows].float()
        v = arena[slots.clamp(min=0), 0, 1, rows].float()
        q_pos = seq_len - (end - begin) + torch.arange(end - begin)
        visible = (positions[None, :] <= q_pos[:, None]) & present[None, :]
        group = q.shape[1] // arena.shape[4]
        scores = torch.einsum("nhd,thd->nht", q[begin:end].float(), k.repeat_interleave(group, dim=1))
        scores = (scores * q.shape[2] ** -0.5).masked_fill(~visible[:, None, :], float("-inf"))
        weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
        out[begin:end] = torch.einsum("nht,thd->nhd", weights, v.repeat_interleave(group, dim=1)).to(q.dtype)
    return out


def test_prefill_mma_reads_queries_as_checked_16_byte_vectors(built: Emulator) -> None:
    """A q pointer 2 bytes off its 16-byte boundary (the planner never passes one) is a fault."""
    case = CASES[0]
    q, batch = _inputs(case)
    cu = cu_lens(list(case.q_lens))
    (plan,) = _plan(q, cu, batch, 0, torch.empty_like(q))
    shifted = dataclasses.replace(plan.args[0], value=plan.args[0].value + 2,
                                  extent_bytes=plan.args[0].extent_bytes - 2)
    with pytest.raises(EmulationError, match="misaligned read of 16 bytes"):
        built.run([dataclasses.replace(plan, args=(shifted, *plan.args[1:]))])
