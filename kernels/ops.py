"""Public kernel API: check inputs, then run the CUDA kernel (CUDA tensors) or the torch reference.

Arena: ``[num_slots, num_layers, 2, page_tokens, num_kv_heads, head_dim]``, page-first, owned by the
caller (tierd's hbm arena or any tensor of that layout). All tensors of a call live on the arena's
device. With ``Backend.AUTO`` CUDA tensors go to the kernels and CPU tensors to the reference; the
reference also checks index values, the kernels only guarantee no access outside the buffers.
"""

from __future__ import annotations

import enum

import torch

from tierd_kernels import plans, reference, sources, validation
from tierd_kernels.errors import KernelInputError


class Backend(enum.Enum):
    """Which implementation runs a call."""

    AUTO = "auto"            # CUDA kernels for CUDA tensors, the torch reference otherwise
    CUDA = "cuda"            # the CUDA kernels (tensors must be on a CUDA device)
    REFERENCE = "reference"  # the torch reference, on whatever device the tensors are


def _use_kernels(backend: Backend, device: torch.device) -> bool:
    if not isinstance(backend, Backend):
        raise KernelInputError(f"backend must be a tierd_kernels.Backend; got {backend!r}")
    if backend is Backend.REFERENCE:
        return False
    if device.type == "cuda":
        return True
    if backend is Backend.CUDA:
        raise KernelInputError(f"backend=Backend.CUDA needs tensors on a CUDA device; got {device}")
    return False


def _launch(launches: tuple[plans.LaunchPlan, ...], device: torch.device) -> None:
    from tierd_kernels import cuda

    cuda.launch(launches, device)


def _sm_count(device: torch.device) -> int:
    from tierd_kernels import cuda

    return cuda.sm_count(device)


def _prefill_tensor_cores(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether prefill on this CUDA device runs the tensor-core kernel (fp16 / bf16, capability >= 8.0)."""
    if dtype not in sources.MMA_DTYPES:
        return False  # no need to ask the device
    from tierd_kernels import cuda

    return plans.prefill_uses_tensor_cores(dtype, cuda.compute_capability(device))


def paged_attention_decode(q: torch.Tensor, arena: torch.Tensor, block_tables: torch.Tensor,
                           seq_lens: torch.Tensor, layer: int, scale: float | None = None, *,
                           out: torch.Tensor | None = None, max_seq_len: int | None = None,
                           num_splits: int | None = None, backend: Backend = Backend.AUTO) -> torch.Tensor:
    """Attention of one query token per sequence over its pages.

    q ``[num_seqs, num_heads, head_dim]`` (head_dim axis contiguous), block_tables int32
    ``[num_seqs, max_pages]`` of slot ids, seq_lens int32 ``[num_seqs]`` (0 gives zeros);
    ``num_heads`` is a multiple of the arena's ``num_kv_heads`` (GQA). Returns ``out`` (allocated
    when None), shaped and typed like q. ``scale`` defaults to ``1/sqrt(head_dim)``.
    ``max_seq_len`` (a host-side bound of seq_lens) and ``num_splits`` only tune the CUDA split-K
    work and never change the result.
    """
    problem = validation.check_decode_inputs(q, arena, block_tables, seq_lens, layer, scale, out)
    if not _use_kernels(backend, arena.device):
        validation.check_attention_values(problem, block_tables, seq_lens)
        result = reference.decode_reference(q, arena, block_tables, seq_lens, problem.layer, problem.scale)
        return result if out is None else out.copy_(result)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device) if out is None else out
    _launch(plans.plan_decode(problem, q, arena, block_tables, seq_lens, out, num_sms=_sm_count(arena.device),
                              num_splits=num_splits, max_seq_len=max_seq_len), arena.device)
    return out


def paged_attention_prefill(q: torch.Tensor, cu_q_lens: torch.Tensor, arena: torch.Tensor,
                            block_tables: torch.Tensor, seq_lens: torch.Tensor, layer: int,
                            scale: float | None = None, *, out: torch.Tensor | None = None,
                            max_q_len: int | None = None, backend: Backend = Backend.AUTO) -> torch.Tensor:
    """Causal attention of several new tokens per sequence (prefill / extend) over its pages.

    q ``[total_q_tokens, num_heads, head_dim]``, sequence s owning rows
    ``cu_q_lens[s]:cu_q_lens[s+1]`` (cu_q_lens int32 ``[num_seqs + 1]``, from 0 to total_q_tokens).
    The new tokens' K/V are already in the pages: query j of a sequence sits at position
    ``seq_len - q_len + j`` and sees kv positions up to its own. Returns ``out`` like q.
    ``max_q_len`` (a host-side bound of the q lengths) only narrows the CUDA grid. On CUDA, fp16 / bf16
    on a GPU of compute capability >= 8.0 run the tensor-core kernel, everything else the CUDA-core one.
    """
    problem = validation.check_prefill_inputs(q, cu_q_lens, arena, block_tables, seq_lens, layer, scale, out)
    if not _use_kernels(backend, arena.device):
        validation.check_attention_values(problem, block_tables, seq_lens)
        validation.check_prefill_values(problem, q.shape[0], cu_q_lens, seq_lens)
        result = reference.prefill_reference(q, cu_q_lens, arena, block_tables, seq_lens, problem.layer,
                                             problem.scale)
        return result if out is None else out.copy_(result)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device) if out is None else out
    tensor_cores = _prefill_tensor_cores(arena.device, problem.geometry.dtype)
    _launch(plans.plan_prefill(problem, q, cu_q_lens, arena, block_tables, seq_lens, out, max_q_len=max_q_len,
                               tensor_cores=tensor_cores), arena.device)
    return out


def store_kv(arena: torch.Tensor, layer: int, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor, *,
             backend: Backend = Backend.AUTO) -> None:
    """Write a step's K and V ``[num_tokens, num_kv_heads, head_dim]`` into layer ``layer`` of the arena.

    Token i goes to flat position ``slot_mapping[i] = slot * page_tokens + offset`` (int64
    ``[num_tokens]``); negative positions are padding and skipped. Positions must be distinct.
    """
    geometry, layer = validation.check_store_inputs(arena, layer, k, v, slot_mapping)
    if not _use_kernels(backend, arena.device):
        validation.check_slot_mapping_values(geometry, slot_mapping)
        reference.store_kv_reference(arena, layer, k, v, slot_mapping)
        return
    _launch(plans.plan_store_kv(geometry, layer, arena, k, v, slot_mapping), arena.device)


def gather_pages(arena: torch.Tensor, slots: torch.Tensor, out: torch.Tensor, *,
                 backend: Backend = Backend.AUTO) -> torch.Tensor:
    """Copy whole pages ``arena[slots[i]]`` into ``out[i]`` (a contiguous staging buffer
    ``[len(slots), num_layers, 2, page_tokens, num_kv_heads, head_dim]``); returns ``out``."""
    geometry = validation.check_page_copy_inputs(arena, slots, out, "out")
    if not _use_kernels(backend, arena.device):
        validation.check_slot_values(geometry, slots, distinct=False)
        reference.gather_pages_reference(arena, slots, out)
        return out
    _launch(plans.plan_gather_pages(geometry, arena, slots, out), arena.device)
    return out


def scatter_pages(src: torch.Tensor, arena: torch.Tensor, slots: torch.Tensor, *,
                  backend: Backend = Backend.AUTO) -> None:
    """Copy whole pages ``src[i]`` into ``arena[slots[i]]``; slots (int32 or int64) must be distinct."""
    geometry = validation.check_page_copy_inputs(arena, slots, src, "src")
    if not _use_kernels(backend, arena.device):
        validation.check_slot_values(geometry, slots, distinct=True)
        reference.scatter_pages_reference(src, arena, slots)
        return
    _launch(plans.plan_scatter_pages(geometry, src, arena, slots), arena.device)
