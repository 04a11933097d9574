"""A transformers model's ``PageSpec``, derived from its config, and how its forward names the cache.

The user never types a shape: layers, KV heads and head dim come from the (text) config, the dtype
from the model's weights, the model string from ``config._name_or_path`` and a revision (the
config's ``_commit_hash`` when it was loaded from the hub). Any difference in these gives another
namespace fingerprint, so pages of one model, dtype or revision are never restored into another.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from tierd.errors import InvalidArgument
from tierd.spec import MAX_MODEL_BYTES, DType, PageSpec
from tierd_client.hf.errors import ModelIdentityError, UnsupportedModelError

DEFAULT_PAGE_TOKENS = 16
# transformers 5.24 renamed forward's and generate's ``past_key_values=`` to ``cache=``.
CACHE_ARGUMENTS = ("cache", "past_key_values")
# Parts of the model string cut to this many bytes (the whole string must fit a Register).
_NAME_BYTES = 160
_REVISION_BYTES = 80


@dataclass(frozen=True)
class KvShape:
    """The KV of one token per layer: ``num_kv_heads x head_dim``, over ``num_layers`` layers."""

    num_layers: int
    num_kv_heads: int
    head_dim: int


def text_config(model_or_config: PreTrainedModel | PreTrainedConfig) -> PreTrainedConfig:
    """The decoder's config (a multimodal model's text part)."""
    config = model_or_config.config if isinstance(model_or_config, PreTrainedModel) else model_or_config
    if not isinstance(config, PreTrainedConfig):
        raise UnsupportedModelError(f"expected a transformers PreTrainedModel or PreTrainedConfig, got "
                                    f"{type(model_or_config).__name__}")
    text = config.get_text_config(decoder=True)
    return text if isinstance(text, PreTrainedConfig) else config


def _positive_int(config: PreTrainedConfig, name: str) -> int:
    value = getattr(config, name, None)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UnsupportedModelError(f"{type(config).__name__}.{name} is {value!r}; a decoder's KV "
                                    f"shape needs a positive integer there")
    return value


def kv_shape(model_or_config: PreTrainedModel | PreTrainedConfig) -> KvShape:
    """Layers, KV heads and head dim from the config (``head_dim`` when the config has one, else
    ``hidden_size // num_attention_heads``); refuses layouts that are not one K and one V of the
    same shape per token in every layer."""
    config = text_config(model_or_config)
    layers = _positive_int(config, "num_hidden_layers")
    heads = _positive_int(config, "num_attention_heads")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None)
    if head_dim is None:
        hidden = _positive_int(config, "hidden_size")
        if hidden % heads:
            raise UnsupportedModelError(f"hidden_size {hidden} is not a multiple of num_attention_heads "
                                        f"{heads} and the config has no head_dim")
        head_dim = hidden // heads
    if getattr(config, "kv_lora_rank", None):
        raise UnsupportedModelError(f"{type(config).__name__} uses latent attention (kv_lora_rank): its "
                                    "K and V differ in shape and do not fit tierd's page layout")
    check_full_attention(config)
    return KvShape(layers, int(kv_heads), int(head_dim))


def check_full_attention(config: PreTrainedConfig) -> None:
    """Refuse configs whose ``DynamicCache`` has layers other than plain full-attention ones:
    a sliding-window layer drops old tokens, a linear-attention layer keeps a state, not KV."""
    layers = DynamicCache(config=config).layers
    other = sorted({type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer})
    if other:
        raise UnsupportedModelError(
            f"{type(config).__name__} builds cache layers {', '.join(other)}; only full-attention "
            "layers (DynamicLayer) keep every token's K and V, so only those can be saved as pages "
            "(for Mistral-style models, load the config with sliding_window=None)")


def model_dtype(model_or_config: PreTrainedModel | PreTrainedConfig,
                dtype: torch.dtype | str | None = None) -> str:
    """The dtype label of the KV (``float32``, ``float16``, ``bfloat16``): ``dtype`` if given, else
    the model's parameters', else the config's."""
    if dtype is None and isinstance(model_or_config, PreTrainedModel):
        dtype = model_or_config.dtype
    if dtype is None:
        config = text_config(model_or_config)
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if dtype is None:
        raise UnsupportedModelError("the config names no dtype: pass the model itself, or dtype= "
                                    "(e.g. torch.bfloat16)")
    try:
        return DType.parse(str(dtype)).label
    except InvalidArgument as exc:
        raise UnsupportedModelError(f"the KV dtype: {exc}") from None


def torch_dtype(spec: PageSpec) -> torch.dtype:
    """The torch dtype of ``spec``'s elements."""
    dtype = getattr(torch, spec.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise UnsupportedModelError(f"this torch has no dtype {spec.dtype!r}")
    return dtype


def _cut(text: str, limit: int) -> str:
    """``text`` if it fits ``limit`` UTF-8 bytes, else its tail and a hash of the whole (so two
    long local paths stay apart)."""
    if len(text.encode()) <= limit:
        return text
    digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    tail = text.encode()[-(limit - len(digest) - 2):].decode(errors="ignore")
    return f"{tail}~{digest}"


def model_name(model_or_config: PreTrainedModel | PreTrainedConfig, name: str | None = None,
               revision: str | None = None) -> str:
    """``NAME@REVISION``: ``name`` or ``config._name_or_path`` (else the model type), and
    ``revision`` or the config's ``_commit_hash``; ``ModelIdentityError`` without a revision."""
    config = model_or_config.config if isinstance(model_or_config, PreTrainedModel) else model_or_config
    name = name or getattr(config, "name_or_path", "") or getattr(config, "model_type", "") or ""
    revision = revision or getattr(config, "_commit_hash", None)
    if not name.strip():
        raise ModelIdentityError("the config names no model: pass name= (e.g. 'my-org/my-model')")
    if not revision:
        raise ModelIdentityError(
            f"the config of {name!r} names no revision (it was not loaded from the hub): pass "
            "revision= naming these weights (a checkpoint hash or tag), so that the KV of other "
            "weights with the same name is never restored into this model")
    model = f"{_cut(name.strip(), _NAME_BYTES)}@{_cut(str(revision).strip(), _REVISION_BYTES)}"
    assert len(model.encode()) <= MAX_MODEL_BYTES  # by the two cuts
    return model


def spec_for(model_or_config: PreTrainedModel | PreTrainedConfig, *,
             page_tokens: int = DEFAULT_PAGE_TOKENS, revision: str | None = None,
             dtype: torch.dtype | str | None = None, name: str | None = None,
             cold_format: str = "") -> PageSpec:
    """The ``PageSpec`` of a decoder's KV pages of ``page_tokens`` tokens, from its config.

    ``revision``: the weights' revision, required unless the config came from the hub (its
    ``_commit_hash``); ``dtype``: the KV dtype when only a config is given (default: the model's);
    ``name``: overrides ``config._name_or_path``; ``cold_format``: how tierd's disk tier stores
    the pages (``""`` exact; ``"fp8_e4m3"`` or ``"fp8_e4m3_kivi"``: lossy fp8, half the bytes of
    a 16-bit model; another namespace than the exact one, see ``tierd.spec.ColdFormat``).
    """
    shape = kv_shape(model_or_config)
    try:
        return PageSpec(model=model_name(model_or_config, name, revision),
                        dtype=model_dtype(model_or_config, dtype), num_layers=shape.num_layers,
                        num_kv_heads=shape.num_kv_heads, head_dim=shape.head_dim,
                        page_tokens=page_tokens, cold_format=cold_format)
    except ModelIdentityError:
        raise
    except InvalidArgument as exc:
        raise UnsupportedModelError(f"no page spec for this model: {exc}") from None


def cache_argument(model: PreTrainedModel) -> str:
    """The keyword ``model.forward`` (and ``generate``) take a cache by: ``cache`` from
    transformers 5.24 on, ``past_key_values`` before."""
    parameters = inspect.signature(model.forward).parameters
    for name in CACHE_ARGUMENTS:
        if name in parameters:
            return name
    raise UnsupportedModelError(f"{type(model).__name__}.forward takes neither of "
                                f"{', '.join(CACHE_ARGUMENTS)}: it is not a decoder with a KV cache")
