"""``cold_format=`` in ``tierd_client.hf``: ``spec_for`` and ``tiered_generation`` carry it into
the namespace, and refuse what the daemon could not quantize with the spec's own message."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch
from hf_models import tiny_model

from tierd.keys import namespace_fingerprint
from tierd.spec import ColdFormat
from tierd_client.hf import UnsupportedModelError, spec_for


@pytest.mark.parametrize("form", [f.value for f in ColdFormat])
def test_spec_for_carries_the_cold_format(form: str) -> None:
    model = tiny_model(torch.bfloat16)
    spec = spec_for(model, revision="r1", cold_format=form)
    assert spec.cold_format == form and spec.page_bytes == spec_for(model, revision="r1").page_bytes
    if form:
        assert namespace_fingerprint(spec) != namespace_fingerprint(spec_for(model, revision="r1"))


def test_spec_for_refuses_an_unknown_cold_format() -> None:
    with pytest.raises(UnsupportedModelError, match="'fp8_e4m3' or 'fp8_e4m3_kivi'"):
        spec_for(tiny_model(torch.float32), revision="r1", cold_format="fp4")
