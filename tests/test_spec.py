"""Specs and names a Register may carry: any input is either within the documented limits or
refused with InvalidArgument whose message stays short, never another error."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tierd.errors import InvalidArgument
from tierd.spec import (
    EXCERPT_CHARS,
    MAX_MODEL_BYTES,
    MAX_TENANT_BYTES,
    REGISTER_DIMENSION_LIMITS,
    PageSpec,
    check_registrable,
    check_tenant,
    excerpt,
)

# Longest refusal message: the fixed text plus a value quoted cut short.
MAX_MESSAGE_CHARS = 400
names = st.text(max_size=2 * MAX_MODEL_BYTES) | st.text(st.characters(codec="utf-8"), min_size=250,
                                                        max_size=300)
dimensions = st.integers(-3, 1 << 21) | st.sampled_from([0, 1, 1024, 1025, 4096, 4097, 65536, 65537])


@given(model=names, dtype=st.sampled_from(["float16", "bf16", "float13", "x" * 5000]),
       dims=st.tuples(dimensions, dimensions, dimensions, dimensions))
def test_a_spec_is_within_the_limits_or_refused_with_a_short_message(
        model: str, dtype: str, dims: tuple[int, int, int, int]) -> None:
    num_layers, num_kv_heads, head_dim, page_tokens = dims
    try:
        spec = PageSpec(model, dtype, num_layers, num_kv_heads, head_dim, page_tokens)
        check_registrable(spec)
    except InvalidArgument as exc:
        assert len(str(exc)) < MAX_MESSAGE_CHARS, str(exc)[:MAX_MESSAGE_CHARS]
        return
    assert 0 < len(spec.model.encode()) <= MAX_MODEL_BYTES and spec.model.isprintable()
    for name, limit in REGISTER_DIMENSION_LIMITS.items():
        assert 1 <= getattr(spec, name) <= limit


@given(tenant=names)
def test_a_tenant_name_is_within_the_limits_or_refused_with_a_short_message(tenant: str) -> None:
    try:
        check_tenant(tenant)
    except InvalidArgument as exc:
        assert len(str(exc)) < MAX_MESSAGE_CHARS
        return
    assert 0 < len(tenant.encode()) <= MAX_TENANT_BYTES and tenant.isprintable() and tenant.strip()


@given(value=st.text(max_size=10_000) | st.integers() | st.binary(max_size=10_000))
def test_an_excerpt_is_short_whatever_it_quotes(value: object) -> None:
    assert len(excerpt(value)) <= 2 * EXCERPT_CHARS + 40
