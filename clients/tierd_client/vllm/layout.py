"""The page spec of an engine: its layout name and the checks that its KV cache fits it.

A vLLM block holds all layers of ``block_size`` tokens; the CPU backend's per-layer view is
``[num_blocks, num_kv_heads, block_size, 2 * head_dim]`` and the inside of a block depends on the
attention ISA (``amx`` repacks bf16 for AMX tiles, ``vec`` stores K transposed). One page = one
block, layer after layer (by layer index), each layer's block in vLLM's own bytes. The layout name
spells every one of those choices, so only engines that lay blocks out alike share pages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tierd.spec import MAX_MODEL_BYTES, DType, PageSpec
from tierd_client.vllm.settings import TierdConnectorConfigError


@dataclass(frozen=True)
class EngineLayout:
    """What the layout depends on: ``engine_version`` (vLLM's), ``backend`` (attention backend
    and its ISA variant, e.g. ``cpu_attn-vec``), ``dtype`` (tierd's name), ``block_size`` (tokens)."""

    engine_version: str
    backend: str
    dtype: str
    block_size: int

    @property
    def name(self) -> str:
        """e.g. ``vllm-0.32.0/cpu_attn-vec/float32/b32``."""
        return f"vllm-{self.engine_version}/{self.backend}/{self.dtype}/b{self.block_size}"


def page_spec(model_id: str, layout: EngineLayout, num_layers: int, num_kv_heads: int,
              head_dim: int) -> PageSpec:
    """The spec of one block across ``num_layers`` layers (``page_tokens`` = block size); a model
    name longer than a Register allows is refused with what to set instead."""
    if len(model_id.encode()) > MAX_MODEL_BYTES:
        raise TierdConnectorConfigError(
            f"the model name {model_id[:40]!r}... is longer than tierd's {MAX_MODEL_BYTES} bytes: "
            "set kv_connector_extra_config.model_id to a short name such as 'llama-3-8b@main'")
    return PageSpec(model=model_id, dtype=layout.dtype, num_layers=num_layers,
                    num_kv_heads=num_kv_heads, head_dim=head_dim, page_tokens=layout.block_size,
                    layout=layout.name)


def check_page_tokens(wanted: int | None, block_size: int) -> None:
    """``kv_connector_extra_config.page_tokens``, when given, must be vLLM's block size."""
    if wanted is not None and wanted != block_size:
        raise TierdConnectorConfigError(
            f"kv_connector_extra_config.page_tokens is {wanted} but vLLM's block size is "
            f"{block_size}: a tierd page holds one vLLM block, so start vLLM with "
            f"--block-size {wanted} (a multiple of 32 on CPU) or set page_tokens to {block_size}")


def order_layers(kv_caches: Mapping[str, Any], layer_index: Any) -> list[str]:
    """Layer names by layer index (``layer_index(name) -> int``), the order of a page's layers."""
    return sorted(kv_caches, key=lambda name: (int(layer_index(name)), name))


def check_kv_caches(spec: PageSpec, names: Sequence[str], shapes: Sequence[tuple[int, ...]],
                    dtypes: Sequence[str]) -> int:
    """The number of vLLM blocks, once every layer's cache is ``[num_blocks, num_kv_heads,
    block_size, 2 * head_dim]`` of ``spec.dtype`` for ``spec.num_layers`` layers; otherwise
    ``TierdConnectorConfigError`` saying what differs."""
    if len(names) != spec.num_layers:
        raise TierdConnectorConfigError(
            f"vLLM registered {len(names)} KV cache layers but the spec has {spec.num_layers}: "
            "the connector supports one full-attention KV cache group only")
    wanted = (spec.num_kv_heads, spec.page_tokens, 2 * spec.head_dim)
    num_blocks = shapes[0][0] if shapes and shapes[0] else 0
    for name, shape, dtype in zip(names, shapes, dtypes):
        if tuple(shape[1:]) != wanted or len(shape) != 4 or shape[0] != num_blocks:
            raise TierdConnectorConfigError(
                f"KV cache of layer {name} has shape {tuple(shape)}; the connector expects "
                f"[{num_blocks}, {wanted[0]}, {wanted[1]}, {wanted[2]}] (num_blocks, kv_heads, "
                "block_size, 2 * head_dim): a backend with another layout is not supported")
        if DType.parse(dtype).label != spec.dtype:
            raise TierdConnectorConfigError(
                f"KV cache of layer {name} is {dtype} but the spec says {spec.dtype}: set "
                "--kv-cache-dtype auto (the model's dtype)")
    return num_blocks
