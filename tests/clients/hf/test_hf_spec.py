"""``spec_for``: the page spec of a transformers decoder, from its config; what it refuses."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("transformers")

import torch
from hf_models import tiny_config, tiny_model
from transformers import Gemma2Config, LlamaConfig, LlamaForCausalLM, MistralConfig

from tierd.keys import namespace_fingerprint
from tierd.spec import MAX_MODEL_BYTES
from tierd_client.hf import ModelIdentityError, UnsupportedModelError, cache_argument, spec_for


def test_the_shape_comes_from_the_config() -> None:
    spec = spec_for(tiny_model(torch.bfloat16), revision="r1", page_tokens=32)
    assert (spec.model, spec.dtype, spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.page_tokens) == (
        "llama@r1", "bfloat16", 2, 2, 16, 32)
    # A config's own head_dim wins over hidden_size / heads; no KV heads given means MHA.
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=None, head_dim=48,
                         num_hidden_layers=3)
    spec = spec_for(config, revision="r1", dtype=torch.float16)
    assert (spec.dtype, spec.num_layers, spec.num_kv_heads, spec.head_dim) == ("float16", 3, 4, 48)


def test_name_and_revision_come_from_the_config_when_it_has_them() -> None:
    config = tiny_config()
    config._name_or_path = "my-org/tiny-llama"
    config._commit_hash = "0123abcd"
    assert spec_for(config, dtype="float32").model == "my-org/tiny-llama@0123abcd"
    assert spec_for(config, dtype="float32", revision="v2", name="other").model == "other@v2"


def test_every_field_that_changes_the_kv_changes_the_namespace() -> None:
    base = spec_for(tiny_model(), revision="r1")
    others = [spec_for(tiny_model(torch.bfloat16), revision="r1"), spec_for(tiny_model(layers=3), revision="r1"),
              spec_for(tiny_model(), revision="r2"), spec_for(tiny_model(), revision="r1", page_tokens=32)]
    fingerprints = {namespace_fingerprint(spec) for spec in [base, *others]}
    assert len(fingerprints) == 5


def test_without_a_revision_or_dtype_it_asks_for_one() -> None:
    with pytest.raises(ModelIdentityError, match="pass revision="):
        spec_for(tiny_model())
    with pytest.raises(UnsupportedModelError, match="pass the model itself, or dtype="):
        spec_for(tiny_config(), revision="r1")


def test_long_names_are_cut_to_fit_a_register_and_stay_apart() -> None:
    a = spec_for(tiny_model(), revision="r1", name="/data/" + "x" * 400 + "/a")
    b = spec_for(tiny_model(), revision="r1", name="/data/" + "x" * 400 + "/b")
    assert len(a.model.encode()) <= MAX_MODEL_BYTES and a.model != b.model


@pytest.mark.parametrize("config", [MistralConfig(sliding_window=4096), Gemma2Config()],
                         ids=["mistral-sliding", "gemma2-hybrid"])
def test_sliding_window_layers_are_refused(config: LlamaConfig) -> None:
    with pytest.raises(UnsupportedModelError, match="DynamicSlidingWindowLayer"):
        spec_for(config, revision="r1", dtype="bfloat16")


def test_mistral_without_a_window_is_paged() -> None:
    spec = spec_for(MistralConfig(sliding_window=None), revision="r1", dtype="bfloat16")
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim) == (32, 8, 128)


class _OldForward(LlamaForCausalLM):
    """A forward with transformers' old cache keyword (before 5.24)."""

    def forward(self, input_ids: torch.Tensor | None = None, past_key_values: object = None,
                **kwargs: object) -> object:
        return super().forward(input_ids, **kwargs)


def test_the_cache_keyword_follows_the_forward_signature() -> None:
    assert cache_argument(tiny_model()) in ("cache", "past_key_values")
    assert cache_argument(_OldForward(tiny_config())) == "past_key_values"


def test_importing_the_package_imports_neither_torch_nor_transformers() -> None:
    code = ("import sys, tierd_client, tierd_client.hf as hf\n"
            "assert not {'torch', 'transformers'} & set(sys.modules), 'imported too early'\n"
            "assert 'spec_for' in hf.__all__ and 'spec_for' not in vars(hf)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
