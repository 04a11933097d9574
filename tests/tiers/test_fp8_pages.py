"""fp8 e4m3 pages: bit-identical to a slow reference built on torch's float8_e4m3fn, and within the
error bound the module states for random K/V of every supported dtype, shape and scale mode."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.errors import InvalidArgument
from tierd.spec import PageSpec
from tierd.tiers.fp8_pages import E4M3_MAX, Fp8PageCodec, codec_for

DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
FORMATS = ("fp8_e4m3", "fp8_e4m3_kivi")
# Unit roundoff of each output dtype (half an ulp, relative) and half its smallest subnormal.
OUT_EPS = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24}
OUT_TINY = {"float16": 2.0**-25, "bfloat16": 2.0**-134, "float32": 2.0**-150}


def spec_of(dtype: str, cold_format: str, layers: int = 2, heads: int = 2, dim: int = 8,
            tokens: int = 4) -> PageSpec:
    return PageSpec(model="m@r", dtype=dtype, num_layers=layers, num_kv_heads=heads,
                    head_dim=dim, page_tokens=tokens, cold_format=cold_format)


def random_page(spec: PageSpec, seed: int, magnitude: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.page_shape) * magnitude
    x[..., 0] *= 20.0  # an outlier channel, as keys have
    return x.astype(DTYPES[spec.dtype])


def round_trip(spec: PageSpec, page: np.ndarray) -> tuple[bytes, np.ndarray]:
    codec = Fp8PageCodec(spec)
    stored = bytearray(codec.stored_bytes)
    codec.encode(memoryview(page.tobytes()), memoryview(stored))
    out = bytearray(spec.page_bytes)
    codec.decode(memoryview(bytes(stored)), memoryview(out))
    return bytes(stored), np.frombuffer(out, DTYPES[spec.dtype]).reshape(spec.page_shape)


def reference_encode(spec: PageSpec, page: np.ndarray) -> bytes:
    """The stored form written out the slow, obvious way: loops over groups, torch's e4m3."""
    x = torch.from_numpy(page.astype(np.float32))
    layers, _, tokens, heads, dim = spec.page_shape
    q = torch.empty(spec.page_shape, dtype=torch.float8_e4m3fn)
    scale_arrays: list[torch.Tensor] = []

    def quantize_group(index: tuple[object, ...], scales: torch.Tensor, at: tuple[int, ...]) -> None:
        group = x[index]
        scale = (group.abs().max() / torch.tensor(E4M3_MAX)).to(torch.float32)
        divisor = scale if scale > 0 else torch.tensor(1.0)
        q[index] = (group / divisor).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        scales[at] = scale

    if spec.cold_format == "fp8_e4m3":
        scales = torch.empty((layers, 2, heads), dtype=torch.float32)
        for layer in range(layers):
            for kv in range(2):
                for head in range(heads):
                    quantize_group((layer, kv, slice(None), head, slice(None)), scales, (layer, kv, head))
        scale_arrays.append(scales)
    else:
        k_scales = torch.empty((layers, heads, dim), dtype=torch.float32)
        v_scales = torch.empty((layers, tokens, heads), dtype=torch.float32)
        for layer in range(layers):
            for head in range(heads):
                for channel in range(dim):
                    quantize_group((layer, 0, slice(None), head, channel), k_scales, (layer, head, channel))
                for token in range(tokens):
                    quantize_group((layer, 1, token, head, slice(None)), v_scales, (layer, token, head))
        scale_arrays += [k_scales, v_scales]
    return q.view(torch.uint8).numpy().tobytes() + b"".join(s.numpy().astype("<f4").tobytes()
                                                            for s in scale_arrays)


def reference_decode(spec: PageSpec, stored: bytes) -> np.ndarray:
    codec = Fp8PageCodec(spec)
    raw = np.frombuffer(stored, np.uint8)
    q = torch.from_numpy(raw[:codec.values_bytes].copy()).view(torch.float8_e4m3fn).to(torch.float32)
    q = q.reshape(spec.page_shape)
    scales = np.frombuffer(stored[codec.values_bytes:], "<f4")
    if spec.cold_format == "fp8_e4m3":
        s = torch.from_numpy(scales.copy()).reshape(codec.scale_shapes[0])
        x = q * s[:, :, None, :, None]
    else:
        k_size = int(np.prod(codec.scale_shapes[0]))
        k = torch.from_numpy(scales[:k_size].copy()).reshape(codec.scale_shapes[0])
        v = torch.from_numpy(scales[k_size:].copy()).reshape(codec.scale_shapes[1])
        x = torch.stack([q[:, 0] * k[:, None, :, :], q[:, 1] * v[:, :, :, None]], dim=1)
    return x.to(TORCH_DTYPES[spec.dtype]).view(torch.int16 if spec.itemsize == 2 else torch.int32).numpy()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("cold_format", FORMATS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 2, 16, 4)])
def test_the_codec_matches_the_torch_reference_bit_for_bit(dtype: str, cold_format: str,
                                                           shape: tuple[int, int, int, int]) -> None:
    layers, heads, dim, tokens = shape
    spec = spec_of(dtype, cold_format, layers, heads, dim, tokens)
    page = random_page(spec, seed=sum(shape))
    stored, decoded = round_trip(spec, page)
    assert stored == reference_encode(spec, page)
    assert decoded.tobytes() == reference_decode(spec, stored).tobytes()


def stated_bound(spec: PageSpec, x: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The module docstring's bound per element: ``max(|x| 2^-4, s 2^-10)`` plus the output
    dtype's rounding, with float32's own rounding as slack (``2^-20`` relative)."""
    ax = np.abs(x)
    fp8 = np.maximum(ax * 2.0**-4, scales * 2.0**-10) * (1 + 2.0**-20) + ax * 2.0**-20
    return fp8 + OUT_EPS[spec.dtype] * (ax + fp8) + OUT_TINY[spec.dtype]


def scales_per_element(spec: PageSpec, x: np.ndarray) -> np.ndarray:
    """Each element's group scale, recomputed from the exact page (amax / 448)."""
    a = np.abs(x)
    if spec.cold_format == "fp8_e4m3":
        return np.broadcast_to(a.max(axis=(2, 4), keepdims=True), a.shape) / E4M3_MAX
    k = np.broadcast_to(a[:, :1].max(axis=2, keepdims=True), a[:, :1].shape)
    v = np.broadcast_to(a[:, 1:].max(axis=4, keepdims=True), a[:, 1:].shape)
    return np.concatenate([k, v], axis=1) / E4M3_MAX


@settings(max_examples=150, deadline=None)
@given(dtype=st.sampled_from(list(DTYPES)), cold_format=st.sampled_from(FORMATS),
       layers=st.integers(1, 3), heads=st.integers(1, 3), dim=st.integers(1, 16),
       tokens=st.integers(1, 8), seed=st.integers(0, 2**32 - 1),
       log_magnitude=st.floats(-6.0, 3.0), zero_group=st.booleans())
def test_round_trip_is_within_the_stated_error(dtype: str, cold_format: str, layers: int, heads: int,
                                               dim: int, tokens: int, seed: int, log_magnitude: float,
                                               zero_group: bool) -> None:
    spec = spec_of(dtype, cold_format, layers, heads, dim, tokens)
    page = random_page(spec, seed, magnitude=10.0**log_magnitude)
    if zero_group:
        page[0, 1, :, 0, :] = 0  # every value of one head's V: a scale of 0 decodes to zeros
    _, decoded = round_trip(spec, page)
    x = page.astype(np.float64)
    err = np.abs(decoded.astype(np.float64) - x)
    bound = stated_bound(spec, x, scales_per_element(spec, x))
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (worst, x[worst], decoded[worst], bound[worst])
    if zero_group:
        assert not decoded[0, 1, :, 0, :].astype(np.float32).any()


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_a_zero_page_and_a_largest_value_survive(dtype: str) -> None:
    spec = spec_of(dtype, "fp8_e4m3")
    zeros = np.zeros(spec.page_shape, DTYPES[dtype])
    assert not round_trip(spec, zeros)[1].astype(np.float32).any()
    peak = random_page(spec, 1)
    big = {"float16": 65504.0, "bfloat16": 3.0e38, "float32": 3.0e38}[dtype]
    peak[0, 0, 0, 0, 0] = big  # a group's amax maps to 448 and back, never to inf
    decoded = round_trip(spec, peak)[1].astype(np.float64)
    assert np.isfinite(decoded).all()
    assert decoded[0, 0, 0, 0, 0] == pytest.approx(float(peak[0, 0, 0, 0, 0]), rel=2**-7)


def test_sizes_and_the_bf16_saving() -> None:
    spec = spec_of("bfloat16", "fp8_e4m3", layers=32, heads=8, dim=128, tokens=16)
    codec = Fp8PageCodec(spec)
    assert codec.values_bytes == spec.page_bytes // 2
    assert codec.stored_bytes == spec.page_bytes // 2 + 4 * 32 * 2 * 8
    kivi = Fp8PageCodec(spec_of("bfloat16", "fp8_e4m3_kivi", layers=32, heads=8, dim=128, tokens=16))
    assert kivi.stored_bytes == spec.page_bytes // 2 + 4 * (32 * 8 * 128 + 32 * 16 * 8)
    assert codec.saved_bytes == spec.page_bytes - codec.stored_bytes
    assert codec_for(spec_of("bfloat16", "")) is None


def test_wrong_sizes_and_an_exact_spec_are_refused() -> None:
    spec = spec_of("float16", "fp8_e4m3")
    codec = Fp8PageCodec(spec)
    with pytest.raises(InvalidArgument, match=f"is {spec.page_bytes} bytes, got 3"):
        codec.encode(memoryview(b"abc"), memoryview(bytearray(codec.stored_bytes)))
    with pytest.raises(InvalidArgument, match="stored fp8_e4m3 page"):
        codec.decode(memoryview(b"abc"), memoryview(bytearray(spec.page_bytes)))
    with pytest.raises(InvalidArgument, match="writable"):
        codec.encode(memoryview(bytes(spec.page_bytes)), memoryview(bytes(codec.stored_bytes)))
    with pytest.raises(InvalidArgument, match="no cold format"):
        Fp8PageCodec(spec_of("float16", ""))
