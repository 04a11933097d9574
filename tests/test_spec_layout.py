"""``PageSpec.layout``: the default keeps the keys of specs that predate it; any other layout is
another namespace; bad names are refused with a message saying what to use; it crosses the wire."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierd import wire
from tierd.errors import InvalidArgument
from tierd.keys import chain_keys, namespace_fingerprint
from tierd.spec import DEFAULT_LAYOUT, MAX_LAYOUT_BYTES, PageSpec
from tierd.v1 import tierd_pb2 as pb

VECTORS = json.loads((Path(__file__).parent / "vectors" / "keys_v1.json").read_text())["cases"]
BASE = {"model": "m@r", "dtype": "float32", "num_layers": 2, "num_kv_heads": 4, "head_dim": 64,
        "page_tokens": 32}


@pytest.mark.parametrize("case", VECTORS)
def test_the_default_layout_keeps_the_vector_keys(case: dict) -> None:
    for layout in (DEFAULT_LAYOUT, ""):
        spec = PageSpec(**case["spec"], layout=layout)
        assert spec.layout == DEFAULT_LAYOUT
        fingerprint = namespace_fingerprint(spec, case["tenant_salt_utf8"].encode())
        assert fingerprint.hex() == case["fingerprint"]
        assert [k.hex() for k in chain_keys(fingerprint, case["tokens"], spec.page_tokens)] == case["keys"]
    assert b"layout" not in PageSpec(**case["spec"]).canonical_json()


def test_another_layout_is_another_fingerprint_and_other_keys() -> None:
    default = PageSpec(**BASE)
    vllm = PageSpec(**BASE, layout="vllm-0.32.0/cpu-vec/float32/b32")
    amx = PageSpec(**BASE, layout="vllm-0.32.0/cpu-amx/float32/b32")
    prints = {namespace_fingerprint(s) for s in (default, vllm, amx)}
    assert len(prints) == 3
    assert chain_keys(namespace_fingerprint(vllm), range(32), 32) != chain_keys(
        namespace_fingerprint(default), range(32), 32)
    assert vllm.page_bytes == default.page_bytes
    assert PageSpec.from_json(vllm.canonical_json()) == vllm


@pytest.mark.parametrize(("layout", "match"), [
    ("   ", "must not be empty or blank"),
    (" vllm", "starts or ends with a space"),
    ("vllm\n", "non-printable"),
    ("v" * (MAX_LAYOUT_BYTES + 1), f"the limit is {MAX_LAYOUT_BYTES} bytes"),
    (7, "must be a string"),
])
def test_bad_layouts_are_refused_with_a_message(layout: object, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as info:
        PageSpec(**BASE, layout=layout)  # type: ignore[arg-type]
    assert "spec.layout" in str(info.value) and len(str(info.value)) < 400


def test_the_layout_crosses_the_wire() -> None:
    spec = PageSpec(**BASE, layout="vllm-0.32.0/cpu-vec/float32/b32")
    message = wire.spec_to_pb(spec)
    assert message.layout == spec.layout
    assert wire.spec_from_pb(pb.PageSpec.FromString(message.SerializeToString())) == spec
    default = wire.spec_to_pb(PageSpec(**BASE))
    assert default.layout == ""  # an older daemon reads the default layout unchanged
    assert wire.spec_from_pb(default).layout == DEFAULT_LAYOUT
    with pytest.raises(InvalidArgument, match="spec.layout"):
        wire.spec_from_pb(pb.PageSpec(**BASE, layout="bad\x00layout"))
