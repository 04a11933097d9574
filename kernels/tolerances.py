"""How far a kernel's output may be from its reference: the one place tests and benchmarks look.

Both sides accumulate in fp32 and round once to the output dtype, so they differ by a few units in
the last place of that dtype (plus fp32 summation-order noise): tolerances follow the dtype's
precision (fp16: 11 significant bits, bf16: 8, fp32: 24).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch


@dataclass(frozen=True)
class Tolerance:
    """Absolute and relative tolerance, as ``torch.testing.assert_close`` takes them."""

    atol: float
    rtol: float


ATTENTION_TOLERANCES = MappingProxyType({
    torch.float16: Tolerance(atol=2e-3, rtol=1e-2),
    torch.bfloat16: Tolerance(atol=1.6e-2, rtol=2e-2),
    torch.float32: Tolerance(atol=2e-5, rtol=1e-4),
})


def attention_tolerance(dtype: torch.dtype) -> Tolerance:
    """Tolerance for attention outputs of ``dtype`` (copies are exact and need none)."""
    return ATTENTION_TOLERANCES[dtype]
