"""The page shape of a transformers decoder, read from its config: what the paged worker pages.

A page holds ``page_tokens`` tokens of every layer's K and V (``tierd.spec``); the spec names the
model and its revision, so pages of other weights, dtypes or shapes land in another namespace
and are never mistaken for these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tierd.spec import PageSpec
from tierd_client.hf.paged_errors import PagedModelError

FULL_ATTENTION = "full_attention"


@dataclass(frozen=True)
class AttentionDims:
    """Attention sizes of a decoder: layers, query heads, kv heads, head_dim (elements)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


def _positive_int(config: Any, name: str) -> int:
    value = getattr(config, name, None)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PagedModelError(f"the model config has no positive integer {name} (got {value!r}): the paged "
                              "worker runs Llama-family decoders (LlamaConfig and the like)")
    return value


def attention_dims(config: Any) -> AttentionDims:
    """The attention sizes of ``config`` (a transformers ``PretrainedConfig``; for a multimodal
    model, its text decoder's). Refuses configs with sliding-window or other non-full layers."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    num_layers = _positive_int(text, "num_hidden_layers")
    num_heads = _positive_int(text, "num_attention_heads")
    num_kv_heads = getattr(text, "num_key_value_heads", None) or num_heads
    head_dim = getattr(text, "head_dim", None) or _positive_int(text, "hidden_size") // num_heads
    if num_heads % num_kv_heads:
        raise PagedModelError(f"num_attention_heads ({num_heads}) is not a multiple of num_key_value_heads "
                              f"({num_kv_heads}): not a grouped-query attention the kernels run")
    layer_types = getattr(text, "layer_types", None) or [FULL_ATTENTION] * num_layers
    other = sorted({t for t in layer_types if t != FULL_ATTENTION})
    if other or getattr(text, "sliding_window", None) is not None:
        raise PagedModelError(f"the model has {other or ['sliding_attention']} layers; the paged worker pages "
                              "full-attention decoders only (every layer attends to every earlier token)")
    return AttentionDims(num_layers, num_heads, int(num_kv_heads), int(head_dim))


def model_revision(config: Any, revision: str | None) -> str:
    """``revision`` if given, else the hub commit the weights were loaded from."""
    if revision is not None:
        if not revision.strip():
            raise PagedModelError("revision must name the weights (a commit, a tag, a hash), not be blank")
        return revision
    commit = getattr(config, "_commit_hash", None)
    if isinstance(commit, str) and commit:
        return commit
    raise PagedModelError("the model's weights have no revision (they were not loaded from the hub): pass "
                          "revision='...' naming them, so that pages of other weights are never reused")


def paged_spec(config: Any, dtype: torch.dtype, page_tokens: int, revision: str | None = None) -> PageSpec:
    """The ``PageSpec`` of ``config``'s K/V in ``dtype``, ``page_tokens`` tokens a page.

    ``spec.model`` is ``"<model_type>:<name or 'local'>@<revision>"``.
    """
    dims = attention_dims(config)
    name = getattr(config, "_name_or_path", "") or "local"
    model_type = getattr(config, "model_type", "") or "decoder"
    return PageSpec(model=f"{model_type}:{name}@{model_revision(config, revision)}",
                    dtype=str(dtype).removeprefix("torch."), num_layers=dims.num_layers,
                    num_kv_heads=dims.num_kv_heads, head_dim=dims.head_dim, page_tokens=page_tokens)
