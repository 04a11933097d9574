"""Paged-attention and page-copy kernels over tierd's page-first arena.

CUDA C kernels (``csrc/*.cu``) compiled at first use through CuPy/NVRTC, each with a pure-torch
reference that runs wherever CUDA does not. Importing this package needs torch but neither CuPy nor
a GPU; nothing is compiled until a CUDA tensor reaches a kernel.
"""

from tierd_kernels.errors import KernelInputError, KernelUnavailableError
from tierd_kernels.layout import ArenaGeometry
from tierd_kernels.ops import (
    Backend,
    gather_pages,
    paged_attention_decode,
    paged_attention_prefill,
    scatter_pages,
    store_kv,
)
from tierd_kernels.tolerances import Tolerance, attention_tolerance

__all__ = [
    "ArenaGeometry", "Backend", "KernelInputError", "KernelUnavailableError", "Tolerance",
    "attention_tolerance", "gather_pages", "paged_attention_decode", "paged_attention_prefill",
    "scatter_pages", "store_kv",
]
