"""``PageSpec.cold_format``: exact by default (today's fingerprints and keys unchanged), any fp8
format is another namespace; unsupported combinations are refused saying what is supported; it
crosses the wire and the client's conversions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierd import wire
from tierd.errors import InvalidArgument
from tierd.keys import chain_keys, namespace_fingerprint
from tierd.spec import ColdFormat, PageSpec
from tierd.v1 import tierd_pb2 as pb
from tierd_client.convert import namespace_from_wire, register_to_wire

VECTORS = json.loads((Path(__file__).parent / "vectors" / "keys_v1.json").read_text())["cases"]
BASE = {"model": "m@r", "dtype": "bfloat16", "num_layers": 2, "num_kv_heads": 4, "head_dim": 64,
        "page_tokens": 32}


@pytest.mark.parametrize("case", VECTORS)
def test_the_exact_default_keeps_the_vector_keys(case: dict) -> None:
    spec = PageSpec(**case["spec"], cold_format="")
    assert spec.cold is ColdFormat.EXACT and spec == PageSpec(**case["spec"])
    fingerprint = namespace_fingerprint(spec, case["tenant_salt_utf8"].encode())
    assert fingerprint.hex() == case["fingerprint"]
    assert [k.hex() for k in chain_keys(fingerprint, case["tokens"], spec.page_tokens)] == case["keys"]
    assert b"cold_format" not in spec.canonical_json()


def test_each_cold_format_is_another_namespace_with_other_keys() -> None:
    specs = [PageSpec(**BASE, cold_format=form.value) for form in ColdFormat]
    prints = [namespace_fingerprint(spec) for spec in specs]
    assert len(set(prints)) == len(ColdFormat)
    keys = [chain_keys(fp, range(64), 32) for fp in prints]
    assert all(set(a).isdisjoint(b) for i, a in enumerate(keys) for b in keys[i + 1:])
    for spec in specs[1:]:
        assert f'"cold_format":"{spec.cold_format}"'.encode() in spec.canonical_json()
        assert PageSpec.from_json(spec.canonical_json()) == spec
        assert spec.page_bytes == specs[0].page_bytes  # what a worker puts and gets is unchanged


@pytest.mark.parametrize(("changes", "match"), [
    ({"cold_format": "fp8"}, "is not supported: use '' \\(exact, the default\\), 'fp8_e4m3' or 'fp8_e4m3_kivi'"),
    ({"cold_format": "FP8_E4M3"}, "is not supported"),
    ({"cold_format": 8}, "must be a string"),
    ({"cold_format": "fp8_e4m3", "dtype": "int8"}, "quantizes float16, bfloat16 or float32 pages, not int8"),
    ({"cold_format": "fp8_e4m3_kivi", "dtype": "float8_e4m3fn"}, "not float8_e4m3fn"),
    ({"cold_format": "fp8_e4m3", "layout": "vllm-0.32.0/cpu/float32/b32"}, "needs tierd's page-first layout"),
])
def test_unsupported_cold_formats_are_refused_saying_what_is_supported(changes: dict, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as info:
        PageSpec(**{**BASE, **changes})
    assert "spec.cold_format" in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_every_float_dtype_takes_both_formats(dtype: str) -> None:
    for form in (ColdFormat.FP8_E4M3, ColdFormat.FP8_E4M3_KIVI):
        assert PageSpec(**{**BASE, "dtype": dtype}, cold_format=form.value).cold is form


def test_the_cold_format_crosses_the_wire_and_the_client() -> None:
    spec = PageSpec(**BASE, cold_format="fp8_e4m3_kivi")
    message = wire.spec_to_pb(spec)
    assert message.cold_format == "fp8_e4m3_kivi"
    assert wire.spec_from_pb(pb.PageSpec.FromString(message.SerializeToString())) == spec
    assert wire.spec_to_pb(PageSpec(**BASE)).cold_format == ""  # an older daemon sees an exact spec
    with pytest.raises(InvalidArgument, match="spec.cold_format"):
        wire.spec_from_pb(pb.PageSpec(**BASE, cold_format="int4"))
    request = register_to_wire(spec, "team-a")
    assert request.spec.cold_format == "fp8_e4m3_kivi"
    answer = pb.RegisterResponse(ns_id=3, tenant="team-a", fingerprint=b"f" * 16,
                                 page_bytes=spec.page_bytes, spec=request.spec)
    assert namespace_from_wire(answer, spec).spec == spec
