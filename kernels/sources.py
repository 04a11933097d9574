"""The CUDA sources and their specialisations: which file, which function, which macros.

A ``KernelSpec`` is the cache key of a compiled kernel: one per (function, dtype, head_dim,
page_tokens, heads per CTA) specialisation. The same macros are used by the runtime compiler
(CuPy/NVRTC) and by the test that compiles every source with nvcc.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from importlib import resources

import torch

from tierd_kernels.errors import KernelInputError

CUDA_SCALAR_TYPES = {
    torch.float16: "__half",
    torch.bfloat16: "__nv_bfloat16",
    torch.float32: "float",
}

# Input dtypes of the tensor-core prefill kernel (wmma m16n16k16 with fp32 accumulators).
MMA_DTYPES = (torch.float16, torch.bfloat16)

# Most q heads one decode CTA serves from registers; a larger GQA group is cut into tiles of this.
MAX_DECODE_HEADS_PER_CTA = 8

_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([A-Za-z0-9_.]+)"\s*$', re.MULTILINE)


class KernelSource(enum.Enum):
    """A CUDA source file under ``tierd_kernels/csrc``."""

    DECODE = "decode.cu"
    PREFILL = "prefill.cu"
    PREFILL_MMA = "prefill_mma.cu"
    PAGE_COPY = "page_copy.cu"


@dataclass(frozen=True)
class KernelSpec:
    """One compiled kernel: its source, ``extern "C"`` function name and macro definitions."""

    source: KernelSource
    function: str
    macros: tuple[tuple[str, str], ...] = ()

    def define_flags(self) -> tuple[str, ...]:
        """The macros as compiler flags (``-DNAME=VALUE``), for NVRTC and nvcc alike."""
        return tuple(f"-D{name}={value}" for name, value in self.macros)


def read_csrc(name: str) -> str:
    """Text of a file under ``csrc`` as shipped in the package."""
    return resources.files("tierd_kernels").joinpath("csrc", name).read_text(encoding="utf-8")


def expand_source(source: KernelSource) -> str:
    """The source with its local ``#include "..."`` files inlined, each once.

    One self-contained string keeps NVRTC free of include paths and makes CuPy's on-disk cache key
    (a hash of the code) change whenever a header changes.
    """
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        return _LOCAL_INCLUDE.sub(lambda m: expand(m.group(1)), read_csrc(name))

    return expand(source.value)


def _scalar_type(dtype: torch.dtype) -> str:
    try:
        return CUDA_SCALAR_TYPES[dtype]
    except KeyError:
        raise KernelInputError(f"no CUDA kernel for dtype {dtype}; expected one of "
                               f"{tuple(CUDA_SCALAR_TYPES)}") from None


def decode_heads_per_cta(group_size: int) -> int:
    """Heads per decode CTA: the group rounded up to a power of two, at most the maximum.

    Powers of two bound the number of specialisations; the extra heads of a rounded-up tile
    cost registers, not memory traffic.
    """
    heads = 1
    while heads < min(group_size, MAX_DECODE_HEADS_PER_CTA):
        heads *= 2
    return heads


def decode_specs(dtype: torch.dtype, head_dim: int, page_tokens: int,
                 heads_per_cta: int) -> tuple[KernelSpec, KernelSpec]:
    """The split-K partial kernel and the reduce kernel of one decode specialisation."""
    macros = (("TK_SCALAR_T", _scalar_type(dtype)), ("TK_HEAD_DIM", str(head_dim)),
              ("TK_PAGE_TOKENS", str(page_tokens)), ("TK_HEADS_PER_CTA", str(heads_per_cta)))
    return (KernelSpec(KernelSource.DECODE, "tk_decode_partial", macros),
            KernelSpec(KernelSource.DECODE, "tk_decode_reduce", macros))


def _prefill_macros(dtype: torch.dtype, head_dim: int, page_tokens: int) -> tuple[tuple[str, str], ...]:
    return (("TK_SCALAR_T", _scalar_type(dtype)), ("TK_HEAD_DIM", str(head_dim)),
            ("TK_PAGE_TOKENS", str(page_tokens)))


def prefill_spec(dtype: torch.dtype, head_dim: int, page_tokens: int) -> KernelSpec:
    """The CUDA-core prefill kernel (every dtype, every GPU)."""
    return KernelSpec(KernelSource.PREFILL, "tk_prefill", _prefill_macros(dtype, head_dim, page_tokens))


def prefill_mma_spec(dtype: torch.dtype, head_dim: int, page_tokens: int) -> KernelSpec:
    """The tensor-core prefill kernel: fp16 / bf16 only, launched on compute capability 8.0 and up."""
    if dtype not in MMA_DTYPES:
        raise KernelInputError(f"the tensor-core prefill kernel takes dtypes {MMA_DTYPES}; got {dtype}")
    return KernelSpec(KernelSource.PREFILL_MMA, "tk_prefill_mma", _prefill_macros(dtype, head_dim, page_tokens))


def page_copy_spec(function: str) -> KernelSpec:
    """``tk_gather_pages``, ``tk_scatter_pages`` or ``tk_store_kv``: byte movers, no macros."""
    return KernelSpec(KernelSource.PAGE_COPY, function)


def compile_check_specs() -> tuple[KernelSpec, ...]:
    """Specialisations that together compile every source and touch every dtype, head_dim and
    heads-per-CTA value and the extreme page sizes (for the nvcc check that CI runs)."""
    specs: list[KernelSpec] = [page_copy_spec("tk_gather_pages")]
    page_tokens_cycle = (8, 16, 256)
    heads_cycle = (1, 2, 4, 8)
    combos = [(dtype, head_dim) for dtype in CUDA_SCALAR_TYPES for head_dim in (64, 128, 256)]
    for i, (dtype, head_dim) in enumerate(combos):
        page_tokens = page_tokens_cycle[i % len(page_tokens_cycle)]
        specs.append(decode_specs(dtype, head_dim, page_tokens, heads_cycle[i % len(heads_cycle)])[0])
        specs.append(prefill_spec(dtype, head_dim, page_tokens))
        if dtype in MMA_DTYPES:
            specs.append(prefill_mma_spec(dtype, head_dim, page_tokens))
    return tuple(specs)
