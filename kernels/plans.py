"""Launch plans: grid, block and the exact argument list of each kernel launch.

Planning is pure Python over tensor metadata, so it is tested on CPU: the test suite runs these
plans through a CPU emulator of the CUDA sources, which also checks every argument's size against
the kernel's real signature. ``tierd_kernels.cuda`` only turns a plan into a CuPy launch.
Argument orders here mirror the ``extern "C"`` signatures in ``csrc``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from tierd_kernels.errors import KernelInputError
from tierd_kernels.layout import ArenaGeometry
from tierd_kernels.sources import (
    MMA_DTYPES,
    KernelSpec,
    decode_heads_per_cta,
    decode_specs,
    page_copy_spec,
    prefill_mma_spec,
    prefill_spec,
)
from tierd_kernels.validation import AttentionProblem

# Mirrors of the CUDA constants (decode.cu, prefill.cu, prefill_mma.cu, page_copy.cu).
DECODE_THREADS = 128
PREFILL_THREADS = 128
PREFILL_ROWS_PER_GROUP = 4
PREFILL_MMA_THREADS = 128
PREFILL_MMA_ROWS_PER_CTA = 64  # 4 warps x 16 query rows
# Tensor cores with bf16 inputs (wmma) need compute capability 8.0; prefill_mma.cu traps below it.
MMA_MIN_CAPABILITY = (8, 0)
COPY_THREADS = 256
COPY_VECS_PER_CTA = COPY_THREADS * 4
STORE_THREADS = 128
MAX_SPLITS = 128
VEC_BYTES = 16

# Split-K heuristic. A decode CTA is memory bound and keeps only a few loads in flight per lane
# (kDecodeUnroll), so HBM needs several resident CTAs per SM (a GQA-4 CTA fits four by registers);
# a batch with fewer (sequence, kv head) CTAs than this splits its contexts.
TARGET_CTAS_PER_SM = 4
# A split shorter than this spends more on writing its partial row and on the reduce than its
# extra parallelism gains.
MIN_TOKENS_PER_SPLIT = 256

MAX_GRID_Y = 65535
INT32_LIMIT = 2**31 - 1


class ArgKind(enum.Enum):
    """C type of a kernel argument (how it is marshalled)."""

    POINTER = ("pointer", 8)
    INT32 = ("int", 4)
    INT64 = ("long long", 8)
    FLOAT32 = ("float", 4)

    def __init__(self, c_type: str, size_bytes: int) -> None:
        self.c_type = c_type
        self.size_bytes = size_bytes


@dataclass(frozen=True)
class KernelArg:
    """One argument; a pointer also says how many bytes from it the kernel may touch and whether
    it may write them (used by the CPU emulator's bounds checks), and holds its tensor so that the
    memory outlives any plan that points into it."""

    kind: ArgKind
    value: int | float
    extent_bytes: int = 0
    writable: bool = False
    owner: torch.Tensor | None = field(default=None, compare=False, repr=False)


def pointer(tensor: torch.Tensor | None, *, writable: bool = False) -> KernelArg:
    """A tensor's data pointer; ``None`` is a null pointer the kernel never dereferences."""
    if tensor is None:
        return KernelArg(ArgKind.POINTER, 0)
    if tensor.numel() == 0:
        return KernelArg(ArgKind.POINTER, tensor.data_ptr(), 0, writable, tensor)
    span = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True)) + 1
    return KernelArg(ArgKind.POINTER, tensor.data_ptr(), span * tensor.element_size(), writable, tensor)


def i32(value: int) -> KernelArg:
    if not -INT32_LIMIT - 1 <= value <= INT32_LIMIT:
        raise KernelInputError(f"a kernel argument must fit in int32; got {value} (split the call)")
    return KernelArg(ArgKind.INT32, int(value))


def i64(value: int) -> KernelArg:
    return KernelArg(ArgKind.INT64, int(value))


def f32(value: float) -> KernelArg:
    return KernelArg(ArgKind.FLOAT32, float(value))


@dataclass(frozen=True)
class LaunchPlan:
    """One kernel launch (its pointer arguments hold their tensors alive)."""

    kernel: KernelSpec
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple[KernelArg, ...]


def vector_aligned(tensor: torch.Tensor, *strides_elems: int) -> bool:
    """Whether 16-byte accesses fit: the base pointer and the given strides are 16-byte multiples."""
    itemsize = tensor.element_size()
    return tensor.data_ptr() % VEC_BYTES == 0 and all((s * itemsize) % VEC_BYTES == 0 for s in strides_elems)


def check_aligned(name: str, tensor: torch.Tensor, *strides_elems: int) -> None:
    """Vectorised kernels read 16 bytes at a time: the base pointer and strides must allow it."""
    itemsize = tensor.element_size()
    if not vector_aligned(tensor, *strides_elems):
        raise KernelInputError(f"{name} must start on a 16-byte boundary and have 16-byte multiple strides "
                               f"for the CUDA kernels; got data_ptr {tensor.data_ptr():#x}, strides "
                               f"{tensor.stride()} (elements of {itemsize} bytes)")


def _check_limits(problem: AttentionProblem) -> int:
    capacity = problem.max_pages * problem.geometry.page_tokens
    # The kernels index tokens in int32 and add one split to a position: keep a factor of two spare.
    if 2 * capacity > INT32_LIMIT:
        raise KernelInputError(f"max_pages * page_tokens must be below 2**30 tokens; got {capacity}")
    if problem.num_seqs > MAX_GRID_Y:
        raise KernelInputError(f"at most {MAX_GRID_Y} sequences per call (CUDA grid.y); got {problem.num_seqs}")
    return capacity


def choose_num_splits(base_ctas: int, max_seq_len: int, num_sms: int) -> int:
    """Splits per sequence for decode: enough CTAs to fill the GPU, none shorter than useful."""
    target = TARGET_CTAS_PER_SM * num_sms
    if base_ctas >= target:
        return 1
    wanted = -(-target // base_ctas)
    by_length = max(1, max_seq_len // MIN_TOKENS_PER_SPLIT)
    return max(1, min(wanted, by_length, MAX_SPLITS))


def _attention_common_args(problem: AttentionProblem, arena: torch.Tensor) -> tuple[KernelArg, ...]:
    g = problem.geometry
    return (pointer(arena), i64(g.slot_elems), i64(problem.layer * g.layer_elems), i32(g.num_slots),
            i32(g.num_kv_heads))


def plan_decode(problem: AttentionProblem, q: torch.Tensor, arena: torch.Tensor, block_tables: torch.Tensor,
                seq_lens: torch.Tensor, out: torch.Tensor, *, num_sms: int, num_splits: int | None = None,
                max_seq_len: int | None = None) -> tuple[LaunchPlan, ...]:
    """The split-K decode launch, plus the reduce launch when the contexts are split.

    ``max_seq_len`` (a host-side bound of seq_lens) and ``num_splits`` only shape the work: the last
    split of a sequence takes every remaining token, so neither can make the result wrong.
    """
    capacity = _check_limits(problem)
    check_aligned("arena", arena)
    if problem.num_seqs == 0:
        return ()
    g = problem.geometry
    heads_per_cta = decode_heads_per_cta(problem.group_size)
    head_tiles = -(-problem.group_size // heads_per_cta)
    bound = capacity if max_seq_len is None else min(max(int(max_seq_len), 1), capacity)
    if num_splits is None:
        num_splits = choose_num_splits(problem.num_seqs * g.num_kv_heads * head_tiles, bound, num_sms)
    elif isinstance(num_splits, bool) or not isinstance(num_splits, int) or not 1 <= num_splits <= MAX_SPLITS:
        raise KernelInputError(f"num_splits must be an int in 1..{MAX_SPLITS} or None; got {num_splits!r}")
    tokens_per_split = -(-bound // num_splits)
    partial_spec, reduce_spec = decode_specs(g.dtype, g.head_dim, g.page_tokens, heads_per_cta)
    partial_out = partial_lse = None
    if num_splits > 1:
        rows = (problem.num_seqs, problem.num_heads, num_splits)
        partial_out = torch.empty((*rows, g.head_dim), dtype=torch.float32, device=q.device)
        partial_lse = torch.empty(rows, dtype=torch.float32, device=q.device)
    partial = LaunchPlan(
        partial_spec, (g.num_kv_heads * head_tiles, problem.num_seqs, num_splits), (DECODE_THREADS, 1, 1),
        (pointer(q), i64(q.stride(0)), i64(q.stride(1)), *_attention_common_args(problem, arena),
         pointer(block_tables), i32(problem.max_pages), pointer(seq_lens), i32(problem.num_heads),
         f32(problem.scale), i32(tokens_per_split), i32(num_splits), pointer(out, writable=True),
         pointer(partial_out, writable=True), pointer(partial_lse, writable=True)))
    if num_splits == 1:
        return (partial,)
    reduce = LaunchPlan(
        reduce_spec, (problem.num_heads, problem.num_seqs, 1), (DECODE_THREADS, 1, 1),
        (pointer(partial_out), pointer(partial_lse), i32(num_splits), i32(problem.num_heads),
         pointer(out, writable=True)))
    return (partial, reduce)


def prefill_rows_per_cta(dtype: torch.dtype, head_dim: int) -> int:
    """Query rows ((token, head) pairs) one prefill CTA owns; mirrors RowLayout in common.cuh."""
    itemsize = dtype.itemsize
    lanes_per_row = min(32, head_dim * itemsize // VEC_BYTES)
    return (PREFILL_THREADS // 32) * (32 // lanes_per_row) * PREFILL_ROWS_PER_GROUP


def prefill_uses_tensor_cores(dtype: torch.dtype, capability: tuple[int, int]) -> bool:
    """Whether prefill runs tk_prefill_mma: fp16 / bf16 on compute capability >= 8.0 (else tk_prefill)."""
    return dtype in MMA_DTYPES and tuple(capability) >= MMA_MIN_CAPABILITY


def plan_prefill(problem: AttentionProblem, q: torch.Tensor, cu_q_lens: torch.Tensor, arena: torch.Tensor,
                 block_tables: torch.Tensor, seq_lens: torch.Tensor, out: torch.Tensor, *,
                 max_q_len: int | None = None, tensor_cores: bool = False) -> tuple[LaunchPlan, ...]:
    """The prefill launch. ``max_q_len`` (a host-side bound of the q lengths) sets the grid width;
    CTAs stride over row tiles, so a low bound costs parallelism, never correctness.

    ``tensor_cores`` (see ``prefill_uses_tensor_cores``) picks tk_prefill_mma, which reads q and
    writes out 16 bytes at a time: a q or out that does not allow it gets tk_prefill instead.
    """
    _check_limits(problem)
    check_aligned("arena", arena)
    g = problem.geometry
    total_q = q.shape[0]
    if total_q == 0:
        return ()
    if total_q * problem.num_heads > INT32_LIMIT:
        raise KernelInputError(f"total_q_tokens * num_heads must fit in int32; got {total_q} * "
                               f"{problem.num_heads} (split the call)")
    bound = total_q if max_q_len is None else min(max(int(max_q_len), 1), total_q)
    use_mma = (tensor_cores and g.dtype in MMA_DTYPES and vector_aligned(q, q.stride(0), q.stride(1))
               and vector_aligned(out))
    if use_mma:
        spec, rows_per_cta, threads = (prefill_mma_spec(g.dtype, g.head_dim, g.page_tokens),
                                       PREFILL_MMA_ROWS_PER_CTA, PREFILL_MMA_THREADS)
    else:
        spec, rows_per_cta, threads = (prefill_spec(g.dtype, g.head_dim, g.page_tokens),
                                       prefill_rows_per_cta(g.dtype, g.head_dim), PREFILL_THREADS)
    row_tiles = -(-bound * problem.group_size // rows_per_cta)
    plan = LaunchPlan(
        spec, (row_tiles, problem.num_seqs, g.num_kv_heads), (threads, 1, 1),
        (pointer(q), i64(q.stride(0)), i64(q.stride(1)), pointer(cu_q_lens), i32(total_q),
         *_attention_common_args(problem, arena), pointer(block_tables), i32(problem.max_pages),
         pointer(seq_lens), i32(problem.num_heads), f32(problem.scale), pointer(out, writable=True)))
    return (plan,)


def plan_store_kv(geometry: ArenaGeometry, layer: int, arena: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  slot_mapping: torch.Tensor) -> tuple[LaunchPlan, ...]:
    """The store launch: one CTA per token."""
    num_tokens = slot_mapping.shape[0]
    if num_tokens == 0:
        return ()
    row_bytes = geometry.row_elems * geometry.itemsize
    if row_bytes % VEC_BYTES:
        raise KernelInputError(f"store_kv's CUDA kernel needs num_kv_heads * head_dim * itemsize to be a multiple "
                               f"of 16 bytes; got {row_bytes}")
    check_aligned("arena", arena)
    check_aligned("k", k, k.stride(0))
    check_aligned("v", v, v.stride(0))
    vec_elems = VEC_BYTES // geometry.itemsize
    plan = LaunchPlan(
        page_copy_spec("tk_store_kv"), (num_tokens, 1, 1), (STORE_THREADS, 1, 1),
        (pointer(k), i64(k.stride(0) // vec_elems), pointer(v), i64(v.stride(0) // vec_elems),
         pointer(slot_mapping), pointer(arena, writable=True), i64(geometry.num_slots),
         i64(geometry.page_tokens), i64(geometry.slot_elems // vec_elems),
         i64(layer * geometry.layer_elems // vec_elems), i64(geometry.row_elems // vec_elems)))
    return (plan,)


def _plan_page_copy(function: str, geometry: ArenaGeometry, src: tuple[str, torch.Tensor], slots: torch.Tensor,
                    dst: tuple[str, torch.Tensor]) -> tuple[LaunchPlan, ...]:
    num_pages = slots.shape[0]
    if num_pages == 0:
        return ()
    if geometry.page_bytes % VEC_BYTES:
        raise KernelInputError(f"the page copy kernels need page_bytes to be a multiple of 16; "
                               f"got {geometry.page_bytes}")
    check_aligned(*src)
    check_aligned(*dst)
    page_vecs = geometry.page_bytes // VEC_BYTES
    chunks = -(-page_vecs // COPY_VECS_PER_CTA)
    if chunks > MAX_GRID_Y:
        raise KernelInputError(f"pages of {geometry.page_bytes} bytes are too large for the copy kernels "
                               f"(at most {MAX_GRID_Y * COPY_VECS_PER_CTA * VEC_BYTES} bytes)")
    slots64 = slots.to(torch.int64).contiguous()
    plan = LaunchPlan(
        page_copy_spec(function), (num_pages, chunks, 1), (COPY_THREADS, 1, 1),
        (pointer(src[1]), pointer(slots64), i64(geometry.num_slots), i64(page_vecs),
         pointer(dst[1], writable=True)))
    return (plan,)


def plan_gather_pages(geometry: ArenaGeometry, arena: torch.Tensor, slots: torch.Tensor,
                      out: torch.Tensor) -> tuple[LaunchPlan, ...]:
    """``out[i] = arena[slots[i]]``: one CTA per (page, 16 KiB chunk)."""
    return _plan_page_copy("tk_gather_pages", geometry, ("arena", arena), slots, ("out", out))


def plan_scatter_pages(geometry: ArenaGeometry, src: torch.Tensor, arena: torch.Tensor,
                       slots: torch.Tensor) -> tuple[LaunchPlan, ...]:
    """``arena[slots[i]] = src[i]``: one CTA per (page, 16 KiB chunk)."""
    return _plan_page_copy("tk_scatter_pages", geometry, ("src", src), slots, ("arena", arena))
