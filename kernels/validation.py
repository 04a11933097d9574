"""Input checks of the public wrappers: shapes, dtypes, devices and layouts, then values.

Structural checks (``check_*_inputs``) read only tensor metadata and run on every call. Value
checks (``check_*_values``) read the index tensors, so they run where that costs no device sync:
before the torch reference. The CUDA kernels instead clamp or skip out-of-range indices, so a bad
value there gives a wrong answer for that sequence but never an access outside the buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch

from tierd_kernels.errors import KernelInputError
from tierd_kernels.layout import ArenaGeometry, describe


@dataclass(frozen=True)
class AttentionProblem:
    """What one decode or prefill call computes, after its inputs were checked."""

    geometry: ArenaGeometry
    layer: int
    num_seqs: int
    num_heads: int
    max_pages: int
    scale: float

    @property
    def group_size(self) -> int:
        """Query heads per kv head (the GQA ratio)."""
        return self.num_heads // self.geometry.num_kv_heads


def _check_tensor(name: str, value: object, *, dtype: torch.dtype | None = None, dims: int | None = None,
                  device: torch.device | None = None, contiguous: bool = False) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise KernelInputError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if dtype is not None and value.dtype != dtype:
        raise KernelInputError(f"{name} must have dtype {dtype}; got {describe(value)}")
    if dims is not None and value.dim() != dims:
        raise KernelInputError(f"{name} must have {dims} dimensions; got {describe(value)}")
    if device is not None and value.device != device:
        raise KernelInputError(f"{name} must be on the arena's device {device}; got {describe(value)}")
    if contiguous and not value.is_contiguous():
        raise KernelInputError(f"{name} must be contiguous (call .contiguous()); got strides {value.stride()} "
                               f"for {describe(value)}")
    return value


def _check_shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(tensor.shape) != expected:
        raise KernelInputError(f"{name} must have shape {meaning} = {expected}; got {describe(tensor)}")


def _check_scale(scale: object, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise KernelInputError(f"scale must be a finite number or None (1/sqrt(head_dim)); got {scale!r}")
    return float(scale)


def _check_queries(q: object, geometry: ArenaGeometry, device: torch.device) -> torch.Tensor:
    q = _check_tensor("q", q, dtype=geometry.dtype, dims=3, device=device)
    if q.shape[2] != geometry.head_dim:
        raise KernelInputError(f"q's last axis must be head_dim = {geometry.head_dim} (the arena's); "
                               f"got {describe(q)}")
    if q.shape[1] < 1 or q.shape[1] % geometry.num_kv_heads:
        raise KernelInputError(f"q's num_heads (axis 1) must be a positive multiple of num_kv_heads = "
                               f"{geometry.num_kv_heads} (GQA); got {describe(q)}")
    if q.stride(2) != 1:
        raise KernelInputError(f"q's head_dim axis must be contiguous (stride 1); got strides {q.stride()}")
    return q


def _check_page_tables(block_tables: object, seq_lens: object, num_seqs: int,
                       device: torch.device) -> torch.Tensor:
    block_tables = _check_tensor("block_tables", block_tables, dtype=torch.int32, dims=2, device=device,
                                 contiguous=True)
    if block_tables.shape[0] != num_seqs or block_tables.shape[1] < 1:
        raise KernelInputError(f"block_tables must have shape [num_seqs = {num_seqs}, max_pages >= 1]; "
                               f"got {describe(block_tables)}")
    seq_lens = _check_tensor("seq_lens", seq_lens, dtype=torch.int32, dims=1, device=device, contiguous=True)
    _check_shape("seq_lens", seq_lens, (num_seqs,), "[num_seqs]")
    return block_tables


def _check_out(out: torch.Tensor | None, like: torch.Tensor) -> None:
    if out is None:
        return
    _check_tensor("out", out, dtype=like.dtype, device=like.device, contiguous=True)
    _check_shape("out", out, tuple(like.shape), "q's shape")


def check_decode_inputs(q: object, arena: object, block_tables: object, seq_lens: object, layer: object,
                        scale: object, out: torch.Tensor | None) -> AttentionProblem:
    """Check a decode call; q is ``[num_seqs, num_heads, head_dim]``."""
    geometry = ArenaGeometry.of(arena)
    arena = cast(torch.Tensor, arena)  # checked by ArenaGeometry.of
    geometry.check_attention_support()
    device = arena.device
    q = _check_queries(q, geometry, device)
    tables = _check_page_tables(block_tables, seq_lens, q.shape[0], device)
    _check_out(out, q)
    return AttentionProblem(geometry, geometry.check_layer(layer), q.shape[0], q.shape[1], tables.shape[1],
                            _check_scale(scale, geometry.head_dim))


def check_prefill_inputs(q: object, cu_q_lens: object, arena: object, block_tables: object, seq_lens: object,
                         layer: object, scale: object, out: torch.Tensor | None) -> AttentionProblem:
    """Check a prefill call; q is ``[total_q_tokens, num_heads, head_dim]``."""
    geometry = ArenaGeometry.of(arena)
    arena = cast(torch.Tensor, arena)  # checked by ArenaGeometry.of
    geometry.check_attention_support()
    device = arena.device
    q = _check_queries(q, geometry, device)
    cu_q_lens = _check_tensor("cu_q_lens", cu_q_lens, dtype=torch.int32, dims=1, device=device, contiguous=True)
    if cu_q_lens.shape[0] < 2:
        raise KernelInputError(f"cu_q_lens must have shape [num_seqs + 1] with num_seqs >= 1; "
                               f"got {describe(cu_q_lens)}")
    num_seqs = cu_q_lens.shape[0] - 1
    tables = _check_page_tables(block_tables, seq_lens, num_seqs, device)
    _check_out(out, q)
    return AttentionProblem(geometry, geometry.check_layer(layer), num_seqs, q.shape[1], tables.shape[1],
                            _check_scale(scale, geometry.head_dim))


def check_store_inputs(arena: object, layer: object, k: object, v: object,
                       slot_mapping: object) -> tuple[ArenaGeometry, int]:
    """Check a store_kv call; k and v are ``[num_tokens, num_kv_heads, head_dim]``."""
    geometry = ArenaGeometry.of(arena)
    arena = cast(torch.Tensor, arena)  # checked by ArenaGeometry.of
    device = arena.device
    layer = geometry.check_layer(layer)
    slot_mapping = _check_tensor("slot_mapping", slot_mapping, dtype=torch.int64, dims=1, device=device,
                                 contiguous=True)
    expected = (slot_mapping.shape[0], geometry.num_kv_heads, geometry.head_dim)
    for name, tensor in (("k", k), ("v", v)):
        tensor = _check_tensor(name, tensor, dtype=geometry.dtype, dims=3, device=device)
        _check_shape(name, tensor, expected, "[num_tokens, num_kv_heads, head_dim]")
        # One kv head: its stride is never used (torch leaves any value on a size-1 axis).
        head_stride_ok = tensor.shape[1] == 1 or tensor.stride(1) == geometry.head_dim
        if tensor.stride(2) != 1 or not head_stride_ok:
            raise KernelInputError(f"{name}'s [num_kv_heads, head_dim] block must be contiguous (strides "
                                   f"(*, {geometry.head_dim}, 1)); got strides {tensor.stride()}")
    return geometry, layer


def check_page_copy_inputs(arena: object, slots: object, staging: object, staging_name: str) -> ArenaGeometry:
    """Check gather_pages / scatter_pages; the staging buffer is ``[len(slots), *page_shape]``."""
    geometry = ArenaGeometry.of(arena)
    arena = cast(torch.Tensor, arena)  # checked by ArenaGeometry.of
    device = arena.device
    slots = _check_tensor("slots", slots, dims=1, device=device)
    if slots.dtype not in (torch.int32, torch.int64):
        raise KernelInputError(f"slots must be int32 or int64; got {describe(slots)}")
    staging = _check_tensor(staging_name, staging, dtype=geometry.dtype, device=device, contiguous=True)
    _check_shape(staging_name, staging, (slots.shape[0], *arena.shape[1:]),
                 "[len(slots), num_layers, 2, page_tokens, num_kv_heads, head_dim]")
    return geometry


# ---- value checks (read the index tensors) ----------------------------------------------------

def check_attention_values(problem: AttentionProblem, block_tables: torch.Tensor, seq_lens: torch.Tensor) -> None:
    """Every seq_len fits its block table and every page it uses names a slot of the arena."""
    page_tokens = problem.geometry.page_tokens
    capacity = problem.max_pages * page_tokens
    lens = seq_lens.to(torch.int64)
    bad = (lens < 0) | (lens > capacity)
    if bool(bad.any()):
        seq = int(bad.nonzero()[0, 0])
        raise KernelInputError(f"seq_lens[{seq}] must be in 0..{capacity} (max_pages * page_tokens); "
                               f"got {int(lens[seq])}")
    used = torch.arange(problem.max_pages, device=lens.device)[None, :] < ((lens + page_tokens - 1)
                                                                            // page_tokens)[:, None]
    tables = block_tables.to(torch.int64)
    bad_pages = used & ((tables < 0) | (tables >= problem.geometry.num_slots))
    if bool(bad_pages.any()):
        seq, page = (int(i) for i in bad_pages.nonzero()[0])
        raise KernelInputError(f"block_tables[{seq}, {page}] must be a slot in 0..{problem.geometry.num_slots - 1} "
                               f"(sequence {seq} uses that page); got {int(tables[seq, page])}")


def check_prefill_values(problem: AttentionProblem, q_tokens: int, cu_q_lens: torch.Tensor,
                         seq_lens: torch.Tensor) -> None:
    """cu_q_lens runs from 0 to the number of q tokens and no sequence has more queries than tokens."""
    cu = cu_q_lens.to(torch.int64)
    if int(cu[0]) != 0 or int(cu[-1]) != q_tokens:
        raise KernelInputError(f"cu_q_lens must start at 0 and end at total_q_tokens = {q_tokens} (q's axis 0); "
                               f"got {cu[0].item()} .. {cu[-1].item()}")
    q_lens = cu[1:] - cu[:-1]
    bad = (q_lens < 0) | (q_lens > seq_lens.to(torch.int64))
    if bool(bad.any()):
        seq = int(bad.nonzero()[0, 0])
        raise KernelInputError(f"sequence {seq} must have 0 <= q_len <= seq_len (its new tokens are in the "
                               f"pages); got q_len {int(q_lens[seq])}, seq_len {int(seq_lens[seq])}")


def check_slot_mapping_values(geometry: ArenaGeometry, slot_mapping: torch.Tensor) -> None:
    """Every non-negative flat position lies in the arena (negative ones are padding)."""
    limit = geometry.num_slots * geometry.page_tokens
    bad = slot_mapping >= limit
    if bool(bad.any()):
        token = int(bad.nonzero()[0, 0])
        raise KernelInputError(f"slot_mapping[{token}] must be < num_slots * page_tokens = {limit} (or negative "
                               f"for padding); got {int(slot_mapping[token])}")


def check_slot_values(geometry: ArenaGeometry, slots: torch.Tensor, *, distinct: bool) -> None:
    """Every slot names a page of the arena; scatter targets must also be distinct."""
    bad = (slots < 0) | (slots >= geometry.num_slots)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise KernelInputError(f"slots[{i}] must be in 0..{geometry.num_slots - 1}; got {int(slots[i])}")
    if distinct and slots.numel() != torch.unique(slots).numel():
        raise KernelInputError("slots of scatter_pages must be distinct (two pages into one slot would race); "
                               f"got {slots.tolist()}")
