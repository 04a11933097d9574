"""Page spec and namespace: what a page holds and whose it is.

``page_bytes = num_layers * 2 * page_tokens * num_kv_heads * head_dim * itemsize``; a page is laid
out ``[num_layers][2 (K,V)][page_tokens][num_kv_heads][head_dim]`` (page-first).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from tierd.errors import InvalidArgument


class DType(enum.Enum):
    """Element types a page may hold, with their size in bytes."""

    FLOAT16 = ("float16", 2)
    BFLOAT16 = ("bfloat16", 2)
    FLOAT32 = ("float32", 4)
    FLOAT8_E4M3 = ("float8_e4m3fn", 1)
    FLOAT8_E5M2 = ("float8_e5m2", 1)
    INT8 = ("int8", 1)

    def __init__(self, label: str, itemsize: int) -> None:
        self.label = label
        self.itemsize = itemsize

    @classmethod
    def parse(cls, name: str) -> DType:
        """A dtype name as torch or numpy spell it (``float16``, ``bfloat16``, ``torch.bfloat16``)."""
        wanted = name.strip().lower().removeprefix("torch.")
        aliases = {"half": "float16", "fp16": "float16", "bf16": "bfloat16", "float": "float32",
                   "fp32": "float32", "float8_e4m3": "float8_e4m3fn"}
        wanted = aliases.get(wanted, wanted)
        for dtype in cls:
            if dtype.label == wanted:
                return dtype
        choices = ", ".join(d.label for d in cls)
        raise InvalidArgument(f"unknown dtype {name!r}: expected one of {choices}")


# Upper bounds that catch unit mistakes (bytes given as tokens, ...) before they allocate memory.
MAX_PAGE_BYTES = 1 << 30
MAX_DIMENSION = 1 << 20


@dataclass(frozen=True)
class PageSpec:
    """What a page holds. Two specs are compatible only when every field is equal."""

    model: str
    dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    page_tokens: int

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidArgument("spec.model must be a non-empty string naming model and revision, "
                                  "e.g. 'llama-3-8b@main'")
        canonical = DType.parse(self.dtype).label
        object.__setattr__(self, "dtype", canonical)
        for name in ("num_layers", "num_kv_heads", "head_dim", "page_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_DIMENSION:
                raise InvalidArgument(f"spec.{name} must be an integer in 1..{MAX_DIMENSION}, got {value!r}")
        if self.page_bytes > MAX_PAGE_BYTES:
            raise InvalidArgument(f"spec describes pages of {self.page_bytes} bytes; the limit is "
                                  f"{MAX_PAGE_BYTES} bytes: use fewer page_tokens")

    @property
    def itemsize(self) -> int:
        return DType.parse(self.dtype).itemsize

    @property
    def page_bytes(self) -> int:
        """Bytes of one page: ``num_layers * 2 * page_tokens * num_kv_heads * head_dim * itemsize``."""
        return (self.num_layers * 2 * self.page_tokens * self.num_kv_heads * self.head_dim
                * self.itemsize)

    @property
    def layer_stride_bytes(self) -> int:
        """Bytes from layer ``l`` to layer ``l + 1`` inside a page."""
        return self.page_bytes // self.num_layers

    @property
    def page_shape(self) -> tuple[int, int, int, int, int]:
        """``(num_layers, 2, page_tokens, num_kv_heads, head_dim)``."""
        return (self.num_layers, 2, self.page_tokens, self.num_kv_heads, self.head_dim)

    def canonical_json(self) -> bytes:
        """The spec as canonical JSON (sorted keys, no spaces, UTF-8): the input of fingerprints."""
        fields = {"model": self.model, "dtype": self.dtype, "num_layers": self.num_layers,
                  "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim,
                  "page_tokens": self.page_tokens}
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> PageSpec:
        fields = json.loads(data)
        return cls(**fields)


@dataclass(frozen=True)
class Namespace:
    """A registered (tenant, spec) pair. ``ns_id`` is stable across restarts of one data dir."""

    ns_id: int
    tenant: str
    spec: PageSpec
    fingerprint: bytes

    @property
    def page_bytes(self) -> int:
        return self.spec.page_bytes
