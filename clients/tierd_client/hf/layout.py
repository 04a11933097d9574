"""A ``DynamicCache``'s tensors and tierd pages, one into the other, bit-exact.

A ``DynamicCache`` layer holds ``keys`` and ``values`` of ``[batch, kv_heads, seq, head_dim]``; a
tierd page is ``[num_layers, 2 (K,V), page_tokens, kv_heads, head_dim]`` (page-first), so page
``p`` of batch row ``b`` is tokens ``p*T .. (p+1)*T`` of row ``b`` in every layer. Pages built
here live in host memory (what the client reads and writes); the cache's tensors stay on the
model's device and are owned by the cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedConfig
from transformers.cache_utils import DynamicLayer

from tierd.spec import PageSpec
from tierd_client.hf.errors import CacheMismatchError, UnsupportedModelError
from tierd_client.hf.model_spec import torch_dtype

LayerKV = tuple[torch.Tensor, torch.Tensor]


def cache_layers(cache: DynamicCache, spec: PageSpec) -> list[LayerKV]:
    """Each layer's ``(keys, values)`` of ``cache``, checked against ``spec``: as many layers, plain
    full-attention ones, ``[batch, num_kv_heads, seq, head_dim]`` of ``spec.dtype``, one batch and
    one length across layers."""
    if len(cache.layers) != spec.num_layers:
        raise CacheMismatchError(f"the cache has {len(cache.layers)} layers; the namespace's spec "
                                 f"({spec.model}) has {spec.num_layers}")
    dtype = torch_dtype(spec)
    out: list[LayerKV] = []
    for index, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer:
            raise UnsupportedModelError(f"cache layer {index} is a {type(layer).__name__}; only "
                                        "full-attention DynamicLayer layers can be saved as pages")
        if not layer.is_initialized or layer.keys is None or layer.values is None:
            raise CacheMismatchError(f"cache layer {index} holds no tensors yet: run the model on "
                                     "the tokens first")
        keys, values = layer.keys, layer.values
        expected = (spec.num_kv_heads, spec.head_dim)
        for what, tensor in (("keys", keys), ("values", values)):
            if tensor.ndim != 4 or (tensor.shape[1], tensor.shape[3]) != expected:
                raise CacheMismatchError(
                    f"cache layer {index} {what} are {tuple(tensor.shape)}; the spec needs [batch, "
                    f"{spec.num_kv_heads}, seq, {spec.head_dim}]")
            if tensor.dtype != dtype:
                raise CacheMismatchError(f"cache layer {index} {what} are {tensor.dtype}; the "
                                         f"namespace holds {spec.dtype} pages")
        if keys.shape != values.shape or (out and keys.shape != out[0][0].shape):
            raise CacheMismatchError(f"cache layer {index} has keys {tuple(keys.shape)} and values "
                                     f"{tuple(values.shape)}; every layer must hold the same "
                                     "batch and length")
        out.append((keys, values))
    return out


def pages_of(layers: Sequence[LayerKV], row: int, first_page: int, num_pages: int,
             spec: PageSpec) -> torch.Tensor:
    """Pages ``first_page .. first_page + num_pages`` of batch ``row``, as a new host tensor
    ``[num_pages, num_layers, 2, page_tokens, num_kv_heads, head_dim]``: one copy per layer."""
    tokens = spec.page_tokens
    out = torch.empty((num_pages, *spec.page_shape), dtype=torch_dtype(spec), device="cpu")
    start, end = first_page * tokens, (first_page + num_pages) * tokens
    for index, kv in enumerate(layers):
        for which, tensor in enumerate(kv):
            # [H, n*T, D] -> [H, n, T, D] is a view (a split of the seq dim); the permute makes
            # it page-major, and copy_ gathers it into the pages (and off the device).
            chunk = tensor[row, :, start:end].reshape(spec.num_kv_heads, num_pages, tokens, spec.head_dim)
            out[:, index, which].copy_(chunk.permute(1, 2, 0, 3))
    return out


def cache_from_pages(rows: Sequence[torch.Tensor], spec: PageSpec, config: PreTrainedConfig,
                     device: torch.device) -> DynamicCache:
    """A new ``DynamicCache`` for ``config`` holding the pages of each batch row (``rows[b]``:
    ``[n, num_layers, 2, page_tokens, num_kv_heads, head_dim]``, the same ``n`` for all) as its
    first ``n * page_tokens`` tokens, on ``device``. ``rows`` are not kept."""
    cache = new_cache(config)
    if not rows:
        return cache
    num_pages = rows[0].shape[0]
    heads, dim, tokens = spec.num_kv_heads, spec.head_dim, spec.page_tokens
    for page_rows in rows:
        if tuple(page_rows.shape) != (num_pages, *spec.page_shape):
            raise CacheMismatchError(f"pages of shape {tuple(page_rows.shape)}; expected "
                                     f"{(num_pages, *spec.page_shape)}")
    for index in range(spec.num_layers):
        kv: list[torch.Tensor] = []
        for which in range(2):
            tensor = torch.empty((len(rows), heads, num_pages * tokens, dim), dtype=rows[0].dtype,
                                 device=device)
            for row, page_rows in enumerate(rows):
                tensor[row].view(heads, num_pages, tokens, dim).copy_(
                    page_rows[:, index, which].permute(2, 0, 1, 3))
            kv.append(tensor)
        _fill_layer(cache, index, kv[0], kv[1])
    return cache


def _fill_layer(cache: DynamicCache, index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Make ``keys`` / ``values`` layer ``index``'s tensors without copying them again.

    ``update`` would concatenate them to the (empty) layer: one more copy of the whole prefix.
    An empty update initialises the layer (dtype, device) through the public API; then the
    layer's ``keys`` / ``values`` (public attributes of a ``DynamicLayer``) take the tensors."""
    cache.update(keys[:, :, :0], values[:, :, :0], index)
    layer = cache.layers[index]
    if type(layer) is not DynamicLayer:
        raise UnsupportedModelError(f"cache layer {index} is a {type(layer).__name__}; only "
                                    "full-attention DynamicLayer layers can be restored from pages")
    layer.keys, layer.values = keys, values


def new_cache(config: PreTrainedConfig) -> DynamicCache:
    """An empty ``DynamicCache`` for ``config`` (its layers built from the config)."""
    return DynamicCache(config=config)
