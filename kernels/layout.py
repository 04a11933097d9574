"""The page-first arena as the kernels see it, and the shapes they support.

An arena view has shape ``[num_slots, num_layers, 2, page_tokens, num_kv_heads, head_dim]``
(DESIGN.md): slot ``s`` is one page, contiguous, and K (index 0) and V (index 1) of layer ``l``
start ``(l * 2 + kv) * page_tokens * num_kv_heads * head_dim`` elements into it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tierd_kernels.errors import KernelInputError

ATTENTION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ATTENTION_HEAD_DIMS = (64, 128, 256)
MIN_PAGE_TOKENS = 8
MAX_PAGE_TOKENS = 256
ARENA_RANK = 6


def describe(tensor: torch.Tensor) -> str:
    """A tensor's shape, dtype and device, for error messages."""
    return f"shape {tuple(tensor.shape)}, dtype {tensor.dtype}, device {tensor.device}"


@dataclass(frozen=True)
class ArenaGeometry:
    """Sizes of a page-first arena; strides are in elements of ``dtype``."""

    num_slots: int
    num_layers: int
    page_tokens: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @classmethod
    def of(cls, arena: object) -> ArenaGeometry:
        """Read the geometry of an arena view, checking its rank, K/V axis and contiguity."""
        if not isinstance(arena, torch.Tensor):
            raise KernelInputError(f"arena must be a torch.Tensor, got {type(arena).__name__}")
        if arena.dim() != ARENA_RANK or arena.shape[2] != 2:
            raise KernelInputError(
                "arena must have shape [num_slots, num_layers, 2, page_tokens, num_kv_heads, head_dim] "
                f"(page-first, K and V on axis 2); got {describe(arena)}")
        if not arena.is_contiguous():
            raise KernelInputError(f"arena must be contiguous (one page = one contiguous slot); got strides "
                                   f"{arena.stride()} for {describe(arena)}")
        num_slots, num_layers, _, page_tokens, num_kv_heads, head_dim = arena.shape
        if min(num_slots, num_layers, page_tokens, num_kv_heads, head_dim) < 1:
            raise KernelInputError(f"arena must have no empty dimension; got {describe(arena)}")
        return cls(num_slots, num_layers, page_tokens, num_kv_heads, head_dim, arena.dtype)

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def row_elems(self) -> int:
        """Elements of one token's K (or V) row: ``num_kv_heads * head_dim``."""
        return self.num_kv_heads * self.head_dim

    @property
    def layer_elems(self) -> int:
        """Elements of one layer of one page (its K and V blocks)."""
        return 2 * self.page_tokens * self.row_elems

    @property
    def slot_elems(self) -> int:
        """Elements of one page: the stride from slot ``s`` to ``s + 1``."""
        return self.num_layers * self.layer_elems

    @property
    def page_bytes(self) -> int:
        return self.slot_elems * self.itemsize

    def check_attention_support(self) -> None:
        """Raise unless dtype, head_dim and page_tokens are ones the attention kernels support."""
        if self.dtype not in ATTENTION_DTYPES:
            raise KernelInputError(f"arena dtype must be one of {ATTENTION_DTYPES}; got {self.dtype}")
        if self.head_dim not in ATTENTION_HEAD_DIMS:
            raise KernelInputError(f"head_dim (arena axis 5) must be one of {ATTENTION_HEAD_DIMS}; "
                                   f"got {self.head_dim}")
        pt = self.page_tokens
        if not MIN_PAGE_TOKENS <= pt <= MAX_PAGE_TOKENS or pt & (pt - 1):
            raise KernelInputError(f"page_tokens (arena axis 3) must be a power of two in "
                                   f"{MIN_PAGE_TOKENS}..{MAX_PAGE_TOKENS}; got {pt}")

    def check_layer(self, layer: object) -> int:
        """``layer`` as an int in ``0..num_layers-1``."""
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise KernelInputError(f"layer must be an int in 0..{self.num_layers - 1}; got {layer!r}")
        if not 0 <= layer < self.num_layers:
            raise KernelInputError(f"layer must be in 0..{self.num_layers - 1} (arena axis 1); got {layer}")
        return layer
