"""``PageSpec.window_tokens`` / ``sink_tokens``: the defaults keep the keys of specs that predate
them; a window is another namespace; bad values are refused with a message saying what to use;
both cross the wire and the namespace record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierd import wire
from tierd.errors import InvalidArgument
from tierd.keys import chain_keys, namespace_fingerprint
from tierd.spec import MAX_WINDOW_TOKENS, PageSpec
from tierd.v1 import tierd_pb2 as pb

VECTORS = json.loads((Path(__file__).parent / "vectors" / "keys_v1.json").read_text())["cases"]
BASE = {"model": "m@r", "dtype": "float32", "num_layers": 2, "num_kv_heads": 4, "head_dim": 64,
        "page_tokens": 32}


@pytest.mark.parametrize("case", VECTORS)
def test_the_default_window_keeps_the_vector_keys(case: dict) -> None:
    spec = PageSpec(**case["spec"], window_tokens=0, sink_tokens=0)
    assert not spec.windowed and spec == PageSpec(**case["spec"])
    fingerprint = namespace_fingerprint(spec, case["tenant_salt_utf8"].encode())
    assert fingerprint.hex() == case["fingerprint"]
    assert [k.hex() for k in chain_keys(fingerprint, case["tokens"], spec.page_tokens)] == case["keys"]
    assert b"window" not in spec.canonical_json() and b"sink" not in spec.canonical_json()


def test_a_window_is_another_fingerprint_and_survives_json() -> None:
    plain = PageSpec(**BASE)
    window = PageSpec(**BASE, window_tokens=4096)
    sinks = PageSpec(**BASE, window_tokens=4096, sink_tokens=4)
    assert window.windowed and sinks.windowed
    assert len({namespace_fingerprint(s) for s in (plain, window, sinks)}) == 3
    assert json.loads(sinks.canonical_json())["window_tokens"] == 4096
    assert json.loads(sinks.canonical_json())["sink_tokens"] == 4
    for spec in (plain, window, sinks):
        assert PageSpec.from_json(spec.canonical_json()) == spec
    assert window.page_bytes == plain.page_bytes


@pytest.mark.parametrize(("changes", "match"), [
    ({"window_tokens": -1}, "spec.window_tokens must be an integer in 0.."),
    ({"window_tokens": MAX_WINDOW_TOKENS + 1}, f"0..{MAX_WINDOW_TOKENS}"),
    ({"window_tokens": 1.5}, "spec.window_tokens must be an integer"),
    ({"window_tokens": True}, "spec.window_tokens must be an integer"),
    ({"window_tokens": 64, "sink_tokens": -4}, "spec.sink_tokens must be an integer"),
    ({"window_tokens": 64, "sink_tokens": MAX_WINDOW_TOKENS + 1}, "spec.sink_tokens"),
    ({"sink_tokens": 4}, "spec.window_tokens is 0"),
])
def test_bad_windows_are_refused_with_a_message(changes: dict, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as info:
        PageSpec(**BASE, **changes)
    assert len(str(info.value)) < 400


def test_the_window_crosses_the_wire() -> None:
    spec = PageSpec(**BASE, window_tokens=1000, sink_tokens=4)
    message = wire.spec_to_pb(spec)
    assert (message.window_tokens, message.sink_tokens) == (1000, 4)
    assert wire.spec_from_pb(pb.PageSpec.FromString(message.SerializeToString())) == spec
    # Without a window the message is what it was before windows existed.
    plain = wire.spec_to_pb(PageSpec(**BASE))
    assert plain.SerializeToString() == pb.PageSpec(**BASE).SerializeToString()
    with pytest.raises(InvalidArgument, match="spec.sink_tokens"):
        wire.spec_from_pb(pb.PageSpec(**BASE, sink_tokens=4))
