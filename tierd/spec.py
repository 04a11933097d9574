"""Page spec and namespace: what a page holds and whose it is.

``page_bytes = num_layers * 2 * page_tokens * num_kv_heads * head_dim * itemsize``; with the default
``layout`` a page is laid out ``[num_layers][2 (K,V)][page_tokens][num_kv_heads][head_dim]``
(page-first). Another ``layout`` names an engine's own order of the same bytes (e.g. a vLLM block).
``cold_format`` says how the disk tier stores the pages: exactly (the default) or quantized to fp8
(lossy, opt-in; see ``ColdFormat``).
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
        if not isinstance(name, str):
            raise InvalidArgument(f"dtype must be a string such as 'float16', got {type(name).__name__}")
        wanted = name.strip().lower().removeprefix("torch.")
        aliases = {"half": "float16", "fp16": "float16", "bf16": "bfloat16", "float": "float32",
                   "fp32": "float32", "float8_e4m3": "float8_e4m3fn"}
        wanted = aliases.get(wanted, wanted)
        for dtype in cls:
            if dtype.label == wanted:
                return dtype
        choices = ", ".join(d.label for d in cls)
        raise InvalidArgument(f"unknown dtype {excerpt(name)}: expected one of {choices}")


# Upper bounds that catch unit mistakes (bytes given as tokens, ...) before they allocate memory.
# Every PageSpec keeps to them, a namespace read back from disk too.
MAX_PAGE_BYTES = 1 << 30
MAX_DIMENSION = 1 << 20

# The tighter limits of a Register (``check_registrable``; README "Limits of Register"): above any
# published model's, and small enough that a namespace record costs a few hundred bytes at most.
MAX_MODEL_BYTES = 256
MAX_TENANT_BYTES = 128
REGISTER_DIMENSION_LIMITS = {"num_layers": 1024, "num_kv_heads": 1024, "head_dim": 4096,
                             "page_tokens": 65536}
# A client-chosen string is quoted in a message up to this many characters, then cut.
EXCERPT_CHARS = 40
# An integer beyond this many bits is described by its size, not printed.
EXCERPT_INT_BITS = 64


def excerpt(value: object) -> str:
    """``value`` for a message: its repr, cut after ``EXCERPT_CHARS`` characters (with its size)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > EXCERPT_INT_BITS:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str):
        # The repr of a few escaped characters is long too: cut the repr, not only the string.
        text = repr(value[:EXCERPT_CHARS])
        if len(value) <= EXCERPT_CHARS and len(text) <= EXCERPT_CHARS:
            return text
        return f"{text[:EXCERPT_CHARS]}... ({len(value.encode('utf-8', 'surrogatepass'))} bytes)"
    text = repr(value)
    return text if len(text) <= EXCERPT_CHARS else f"{text[:EXCERPT_CHARS]}... ({len(text)} characters)"


def check_name(field: str, value: object, max_bytes: int, example: str) -> str:
    """``value`` if it is 1..``max_bytes`` bytes of UTF-8, all printable; else ``InvalidArgument``
    naming ``field``, the limit and the value's size (the value itself cut short)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string like {example!r}, got {type(value).__name__}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidArgument(f"{field} is {size} bytes of UTF-8 ({excerpt(value)}); the limit is "
                              f"{max_bytes} bytes: use a shorter name like {example!r}")
    if not value.strip():
        raise InvalidArgument(f"{field} must not be empty or blank: give a name like {example!r}")
    bad = next((i for i, c in enumerate(value) if not c.isprintable()), None)
    if bad is not None:
        raise InvalidArgument(f"{field} holds a control or other non-printable character "
                              f"(U+{ord(value[bad]):04X} at index {bad} of {excerpt(value)}): use "
                              f"printable characters only, like {example!r}")
    return value


# tierd's page-first layout. It is left out of the canonical JSON, so the keys, fingerprints and
# namespace records of specs written before ``layout`` existed stay what they were.
DEFAULT_LAYOUT = "page_first"
MAX_LAYOUT_BYTES = 128


def check_layout(value: object) -> str:
    """A layout name: 1..``MAX_LAYOUT_BYTES`` bytes of printable UTF-8 without spaces at its ends."""
    name = check_name("spec.layout", value, MAX_LAYOUT_BYTES, "vllm-0.32.0/cpu-avx512/float32/b32")
    if name != name.strip():
        raise InvalidArgument(f"spec.layout {excerpt(name)} starts or ends with a space: strip it")
    return name


# A sliding attention window and its sinks are at most 16 Mi tokens, above any published model's
# window: a larger number is a unit mistake (bytes given as tokens, ...).
MAX_WINDOW_TOKENS = 1 << 24


def check_window(window_tokens: object, sink_tokens: object) -> None:
    """``InvalidArgument`` unless both are integers in 0..``MAX_WINDOW_TOKENS`` and sinks come
    with a window (0 window tokens is full attention, which has no sinks)."""
    for name, value in (("window_tokens", window_tokens), ("sink_tokens", sink_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WINDOW_TOKENS:
            raise InvalidArgument(f"spec.{name} must be an integer in 0..{MAX_WINDOW_TOKENS} tokens "
                                  f"(0: full attention), got {excerpt(value)}")
    if sink_tokens and not window_tokens:
        raise InvalidArgument(f"spec.sink_tokens is {sink_tokens} but spec.window_tokens is 0 (full "
                              "attention keeps every token anyway): set window_tokens to the "
                              "model's sliding window, or sink_tokens to 0")
class ColdFormat(enum.Enum):
    """How the disk tier stores a namespace's pages (dram and hbm always hold the exact bytes).

    The quantized formats are fp8 e4m3 with float32 scales (``tierd.tiers.fp8_pages``); pages are
    restored to the namespace's dtype when read. Lossy: never the default."""

    EXACT = ""
    FP8_E4M3 = "fp8_e4m3"            # one scale per (layer, K or V, kv head)
    FP8_E4M3_KIVI = "fp8_e4m3_kivi"  # K per (layer, kv head, channel), V per (layer, token, kv head)

    @classmethod
    def parse(cls, name: object) -> ColdFormat:
        """``""`` (exact), ``"fp8_e4m3"`` or ``"fp8_e4m3_kivi"``; ``InvalidArgument`` otherwise."""
        if not isinstance(name, str):
            raise InvalidArgument(f"spec.cold_format must be a string, got {type(name).__name__}")
        for form in cls:
            if form.value == name:
                return form
        raise InvalidArgument(f"spec.cold_format {excerpt(name)} is not supported: use "
                              f"{COLD_FORMAT_CHOICES}")


COLD_FORMAT_CHOICES = "'' (exact, the default), 'fp8_e4m3' or 'fp8_e4m3_kivi'"
# The dtypes a cold format quantizes (fp8 of an 8-bit dtype would save nothing).
QUANTIZABLE_DTYPES = frozenset({DType.FLOAT16.label, DType.BFLOAT16.label, DType.FLOAT32.label})


def _check_cold_format(value: object, dtype: str, layout: str) -> str:
    """``value`` if it names a cold format this spec's dtype and layout support."""
    form = ColdFormat.parse(value)
    if form is ColdFormat.EXACT:
        return ""
    if dtype not in QUANTIZABLE_DTYPES:
        raise InvalidArgument(f"spec.cold_format {form.value!r} quantizes float16, bfloat16 or "
                              f"float32 pages, not {dtype}: use cold_format '' for this dtype")
    if layout != DEFAULT_LAYOUT:
        raise InvalidArgument(f"spec.cold_format {form.value!r} needs tierd's page-first layout "
                              f"(its scales follow layers, K/V, tokens and heads), not "
                              f"{excerpt(layout)}: use cold_format '' for an engine's layout")
    return str(form.value)


def check_tenant(value: object, field: str = "tenant") -> str:
    """A tenant name: 1..``MAX_TENANT_BYTES`` bytes of printable UTF-8."""
    return check_name(field, value, MAX_TENANT_BYTES, "team-a")


@dataclass(frozen=True)
class PageSpec:
    """What a page holds. Two specs are compatible only when every field is equal."""

    model: str
    dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    page_tokens: int
    # The order of the bytes inside a page; part of the namespace (see ``DEFAULT_LAYOUT``).
    layout: str = DEFAULT_LAYOUT
    # Sliding-window attention: a continuation attends to the last ``window_tokens`` tokens and
    # the first ``sink_tokens`` (StreamingLLM); 0 is full attention. Both are part of the
    # namespace; the defaults are left out of the canonical JSON (keys of older specs stay).
    window_tokens: int = 0
    sink_tokens: int = 0
    # How the disk tier stores the pages (a ``ColdFormat`` value); part of the namespace.
    cold_format: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidArgument("spec.model must be a non-empty string naming model and revision, "
                                  "e.g. 'llama-3-8b@main'")
        canonical = DType.parse(self.dtype).label
        object.__setattr__(self, "dtype", canonical)
        for name in ("num_layers", "num_kv_heads", "head_dim", "page_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_DIMENSION:
                raise InvalidArgument(f"spec.{name} must be an integer in 1..{MAX_DIMENSION}, "
                                      f"got {excerpt(value)}")
        # "" is the wire's unset field: the default layout, as a peer that predates it means.
        object.__setattr__(self, "layout", check_layout(self.layout or DEFAULT_LAYOUT))
        check_window(self.window_tokens, self.sink_tokens)
        object.__setattr__(self, "cold_format",
                           _check_cold_format(self.cold_format, canonical, self.layout))
        if self.page_bytes > MAX_PAGE_BYTES:
            raise InvalidArgument(f"spec describes pages of {self.page_bytes} bytes; the limit is "
                                  f"{MAX_PAGE_BYTES} bytes: use fewer page_tokens")

    @property
    def windowed(self) -> bool:
        """True when a continuation attends to a sliding window (plus sinks), not every token."""
        return self.window_tokens > 0

    @property
    def itemsize(self) -> int:
        return DType.parse(self.dtype).itemsize

    @property
    def cold(self) -> ColdFormat:
        """The cold format as an enum."""
        return ColdFormat(self.cold_format)

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
        fields: dict[str, str | int] = {
            "model": self.model, "dtype": self.dtype, "num_layers": self.num_layers,
            "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim, "page_tokens": self.page_tokens}
        if self.layout != DEFAULT_LAYOUT:
            fields["layout"] = self.layout
        if self.window_tokens:
            fields["window_tokens"] = self.window_tokens
        if self.sink_tokens:
            fields["sink_tokens"] = self.sink_tokens
        # Left out when exact, like the layout: the fingerprints of exact specs stay what they were.
        if self.cold_format:
            fields["cold_format"] = self.cold_format
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> PageSpec:
        fields = json.loads(data)
        return cls(**fields)


def check_registrable(spec: PageSpec) -> None:
    """``InvalidArgument`` unless ``spec`` keeps to the limits of a Register: ``spec.model`` is
    1..``MAX_MODEL_BYTES`` bytes of printable UTF-8 and each dimension is within
    ``REGISTER_DIMENSION_LIMITS``. (A spec read back from disk is held to ``PageSpec``'s own
    bounds only, so a data dir written before these limits still opens.)"""
    check_name("spec.model", spec.model, MAX_MODEL_BYTES, "llama-3-8b@main")
    for name, limit in REGISTER_DIMENSION_LIMITS.items():
        value = getattr(spec, name)
        if value > limit:
            raise InvalidArgument(f"spec.{name} is {value}; a Register allows at most {limit}: "
                                  f"check the spec's units")


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
