"""fp8 e4m3 pages with float32 scales: the disk tier's cold formats (``tierd.spec.ColdFormat``).

A page is page-first, ``[layers][2 (K, V)][page_tokens][kv_heads][head_dim]`` of float16,
bfloat16 or float32. Its stored form is the fp8 e4m3 (``float8_e4m3fn``) element of every value,
in the same order (one byte each), followed by the float32 (little-endian) scales:

- ``FP8_E4M3``: one scale per (layer, K/V, kv head), shape ``[layers][2][kv_heads]``;
- ``FP8_E4M3_KIVI`` (after KIVI: keys have outlier channels, values do not): key scales per
  (layer, kv head, channel) ``[layers][kv_heads][head_dim]``, then value scales per (layer,
  token, kv head) ``[layers][page_tokens][kv_heads]``.

Each group's scale is ``amax / 448`` (448 is e4m3's largest finite value), so the group's
largest magnitude maps to 448; a group of zeros gets scale 0 and decodes to zeros. Values are
divided by their scale in float32 and rounded to nearest even e4m3.

**Error bound** (per element ``x`` of a group with scale ``s = amax / 448``): e4m3 keeps 3
mantissa bits, so rounding ``y = x / s`` (``|y| <= 448``) errs by at most half a step: ``|y| *
2^-4`` for a normal ``y`` and ``2^-10`` (half the subnormal step ``2^-9``) below ``2^-6``. Hence

    |x - decode(encode(x))| <= max(|x| * 2^-4, s * 2^-10)  +  the output dtype's rounding

(half an ulp of the result: relative ``2^-8`` in bfloat16, ``2^-11`` in float16, ``2^-24`` in
float32), plus float32 rounding of the scale and the division (relative ``2^-23``, negligible).
That is at most 6.25 % of a value, and at most ``amax / 458752`` for values near zero. Values
must be finite: a group holding inf or NaN decodes to NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import numpy.typing as npt

from tierd.errors import InvalidArgument
from tierd.spec import ColdFormat, PageSpec

E4M3_MAX = 448.0
SCALE_BYTES = 4
FP8 = np.dtype(ml_dtypes.float8_e4m3fn)
# Page dtypes as numpy sees them (bfloat16 pages are raw bytes: ml_dtypes gives them a dtype).
_NUMPY_DTYPES: dict[str, np.dtype[np.generic]] = {
    "float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype(np.float32)}
# The largest finite value of each page dtype (bfloat16's is float32's, rounded to 8 bits).
_MAX_FINITE = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38,
               "float32": 3.4028234663852886e38}
# e4m3 byte -> float32: a table lookup decodes faster than ml_dtypes' cast.
_DECODE_TABLE = np.arange(256, dtype=np.uint8).view(FP8).astype(np.float32)

F32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Fp8PageCodec:
    """Encodes pages of one spec to their stored form and back; stateless, any thread."""

    spec: PageSpec

    def __post_init__(self) -> None:
        if self.spec.cold is ColdFormat.EXACT:
            raise InvalidArgument(f"spec {self.spec.model} has no cold format: its pages are "
                                  f"stored exactly, there is nothing to encode")
        if self.spec.dtype not in _NUMPY_DTYPES:  # PageSpec refuses it already; kept for clarity
            raise InvalidArgument(f"cold formats quantize float16, bfloat16 or float32, not "
                                  f"{self.spec.dtype}")

    @property
    def kivi(self) -> bool:
        return self.spec.cold is ColdFormat.FP8_E4M3_KIVI

    @property
    def values_bytes(self) -> int:
        """Bytes of the fp8 values: one per element of the page."""
        return self.spec.page_bytes // self.spec.itemsize

    @property
    def scale_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of the scale arrays, in stored order (see the module docstring)."""
        layers, _, tokens, heads, dim = self.spec.page_shape
        if self.kivi:
            return (layers, heads, dim), (layers, tokens, heads)
        return ((layers, 2, heads),)

    @property
    def num_scales(self) -> int:
        return sum(int(np.prod(shape)) for shape in self.scale_shapes)

    @property
    def stored_bytes(self) -> int:
        """Bytes of one stored page: the fp8 values, then the float32 scales."""
        return self.values_bytes + SCALE_BYTES * self.num_scales

    @property
    def saved_bytes(self) -> int:
        """Bytes one page takes less stored than exact."""
        return self.spec.page_bytes - self.stored_bytes

    def encode(self, page: memoryview, out: memoryview) -> None:
        """Quantize one exact page (``spec.page_bytes``) into ``out`` (``stored_bytes``)."""
        x = self._page_array(page).astype(np.float32)  # the one float32 copy: worked in place
        values, scales = self._split(out, writable=True)
        if self.kivi:
            keys, vals = x[:, 0], x[:, 1]  # [layers][tokens][heads][dim]
            k_scale = _scales(_amax(keys, (1,)))           # [layers][heads][dim]
            v_scale = _scales(_amax(vals, (3,)))           # [layers][tokens][heads]
            np.divide(keys, _divisor(k_scale)[:, None, :, :], out=keys)
            np.divide(vals, _divisor(v_scale)[:, :, :, None], out=vals)
            scales[0][...], scales[1][...] = k_scale, v_scale
        else:
            scale = _scales(_amax(x, (2, 4)))              # [layers][2][heads]
            np.divide(x, _divisor(scale)[:, :, None, :, None], out=x)
            scales[0][...] = scale
        # A clip keeps a 448.00003 (float32 rounding) from becoming e4m3's NaN (it has no inf);
        # the cast rounds to nearest even.
        np.clip(x, -E4M3_MAX, E4M3_MAX, out=x)
        values[...] = x

    def decode(self, stored: memoryview, out: memoryview) -> None:
        """Restore one stored page (``stored_bytes``) into ``out`` (``spec.page_bytes``, the
        namespace's dtype)."""
        values, scales = self._split(stored, writable=False)
        x = np.take(_DECODE_TABLE, values.view(np.uint8))
        if self.kivi:
            x[:, 0] *= scales[0][:, None, :, :]
            x[:, 1] *= scales[1][:, :, :, None]
        else:
            x *= scales[0][:, :, None, :, None]
        limit = _MAX_FINITE[self.spec.dtype]
        # A scale rounded up can put amax a hair past the dtype's largest value: not to inf.
        np.clip(x, -limit, limit, out=x)
        self._page_array(out)[...] = x

    def _page_array(self, buf: memoryview) -> npt.NDArray[np.generic]:
        if buf.nbytes != self.spec.page_bytes:
            raise InvalidArgument(f"a page of {self.spec.model} is {self.spec.page_bytes} bytes, "
                                  f"got {buf.nbytes}")
        return np.frombuffer(buf, _NUMPY_DTYPES[self.spec.dtype]).reshape(self.spec.page_shape)

    def _split(self, buf: memoryview, writable: bool
               ) -> tuple[npt.NDArray[np.generic], list[F32Array]]:
        """Views of ``buf`` (a stored page): the fp8 values (page-shaped) and the scale arrays."""
        if buf.nbytes != self.stored_bytes:
            raise InvalidArgument(f"a stored {self.spec.cold_format} page of {self.spec.model} "
                                  f"is {self.stored_bytes} bytes, got {buf.nbytes}")
        raw = np.frombuffer(buf, np.uint8)
        if writable and not raw.flags.writeable:
            raise InvalidArgument("the output buffer of an encode must be writable")
        values = raw[:self.values_bytes].view(FP8).reshape(self.spec.page_shape)
        scales: list[F32Array] = []
        offset = self.values_bytes
        for shape in self.scale_shapes:
            size = int(np.prod(shape)) * SCALE_BYTES
            scales.append(raw[offset:offset + size].view("<f4").reshape(shape))
            offset += size
        return values, scales


def _amax(x: F32Array, axes: tuple[int, ...]) -> F32Array:
    """Largest magnitude over ``axes``: two reductions, without an ``abs`` copy of ``x``."""
    amax: F32Array = np.maximum(x.max(axis=axes), -x.min(axis=axes))
    return amax


def _scales(amax: F32Array) -> F32Array:
    """The scale of each group from its largest magnitude (0 for a group of zeros)."""
    return (amax / np.float32(E4M3_MAX)).astype(np.float32)


def _divisor(scale: F32Array) -> F32Array:
    """``scale`` with zeros replaced by 1: a group of zeros divides to zeros, not NaN."""
    return np.where(scale > 0, scale, np.float32(1.0))


def codec_for(spec: PageSpec) -> Fp8PageCodec | None:
    """The codec of ``spec``'s cold format; ``None`` when its pages are stored exactly."""
    return None if spec.cold is ColdFormat.EXACT else Fp8PageCodec(spec)
