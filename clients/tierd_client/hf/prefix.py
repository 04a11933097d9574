"""Save a ``DynamicCache``'s full pages into tierd and restore the longest cached prefix.

Pages are keyed by the chain keys of each batch row's token ids (``NamespaceHandle.keys``), so a
prompt that starts with tokens seen before finds their pages, whoever saved them. A restore never
covers the whole prompt: at least its last token is left for the model to compute (a cache that
covers every prompt token makes ``generate`` feed them all again). Both directions go through
``TierClient.get_into`` / ``put``, which use the daemon's mapped regions when it is local and
GetPages / PutPages otherwise.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedConfig, PreTrainedModel

from tierd.tier import Tier
from tierd_client.hf.errors import CacheMismatchError
from tierd_client.hf.layout import cache_from_pages, cache_layers, new_cache, pages_of
from tierd_client.hf.model_spec import kv_shape, text_config, torch_dtype
from tierd_client.sync import TierClient
from tierd_client.types import NamespaceHandle

# A save copies at most this many bytes of pages at a time (the cache itself is not copied whole).
SAVE_CHUNK_BYTES = 64 << 20

TokenIds = torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]]


@dataclass(frozen=True)
class RestoreInfo:
    """What a restore found: per batch row ``tokens`` of ``prompt_tokens`` came from tierd
    (``pages`` pages each); ``pages_by_tier``: over all rows, the tier Lookup found each page in."""

    prompt_tokens: int
    tokens: int
    pages: int
    pages_by_tier: dict[Tier, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def computed_tokens(self) -> int:
        """Prompt tokens per row the model still computes (at least one)."""
        return self.prompt_tokens - self.tokens


@dataclass(frozen=True)
class SaveInfo:
    """What a save did, over all batch rows: full pages past the already cached prefix that it
    offered, how many tierd stored, and how many it skipped (cached meanwhile)."""

    pages_offered: int
    pages_stored: int
    pages_skipped: int
    seconds: float = 0.0


def token_rows(token_ids: TokenIds) -> list[np.ndarray]:
    """``token_ids`` (``[seq]`` or ``[batch, seq]``: a tensor, an array or lists) as one int64
    array per batch row, on the host."""
    if isinstance(token_ids, torch.Tensor):
        array = token_ids.detach().cpu().numpy()
    else:
        array = np.asarray(token_ids)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise CacheMismatchError(f"token ids must be integers of shape [seq] or [batch, seq], got "
                                 f"{array.dtype} of shape {array.shape}")
    return [row.astype(np.int64, copy=False) for row in array]


def _check_namespace(ns: NamespaceHandle, config: PreTrainedConfig) -> None:
    """The namespace's spec has the model's KV shape (dtype and revision are the caller's: they
    are in the spec, and a different one is another namespace)."""
    shape = kv_shape(config)
    spec = ns.spec
    if (spec.num_layers, spec.num_kv_heads, spec.head_dim) != (shape.num_layers, shape.num_kv_heads,
                                                               shape.head_dim):
        raise CacheMismatchError(
            f"namespace {spec.model} holds pages of {spec.num_layers} layers x {spec.num_kv_heads} KV "
            f"heads x {spec.head_dim}; the model has {shape.num_layers} x {shape.num_kv_heads} x "
            f"{shape.head_dim}: register spec_for(model) instead")


def restore_prefix(client: TierClient, ns: NamespaceHandle,
                   model_or_config: PreTrainedModel | PreTrainedConfig, token_ids: TokenIds,
                   device: torch.device | str | None = None) -> tuple[DynamicCache, RestoreInfo]:
    """A new ``DynamicCache`` holding the longest prefix of ``token_ids`` whose pages are cached
    (the same number of pages for every batch row), short of the last prompt token.

    The cache is on ``device`` (default: the model's, or the host for a config) and belongs to the
    caller; pass it to ``model.generate`` with the full ``token_ids``. With nothing cached it is
    an empty cache.
    """
    started = time.perf_counter()
    config = text_config(model_or_config)
    _check_namespace(ns, config)
    if device is None:
        device = model_or_config.device if isinstance(model_or_config, PreTrainedModel) else "cpu"
    rows = token_rows(token_ids)
    prompt_tokens = rows[0].shape[0]
    tokens = ns.spec.page_tokens
    most = max(prompt_tokens - 1, 0) // tokens  # leave at least one prompt token to compute
    keys = [ns.keys(row[:most * tokens]) for row in rows]
    row_tiers: list[tuple[Tier, ...]] = []
    found = most
    for row_keys in keys:
        if found == 0:
            break
        result = client.lookup_result(ns, row_keys[:found])
        found = min(found, result.num_hits)
        row_tiers.append(result.tiers)
    pages: list[torch.Tensor] = []
    for row_keys in keys if found else []:
        buffer = torch.empty((found, *ns.spec.page_shape), dtype=torch_dtype(ns.spec))
        # A page may be evicted between the Lookup and the copy: keep what every row got.
        found = min(found, client.get_into(ns, row_keys[:found], buffer))
        pages.append(buffer)
    pages = [buffer[:found] for buffer in pages] if found else []
    cache = cache_from_pages(pages, ns.spec, config, torch.device(device)) if pages else new_cache(config)
    by_tier = Counter(tier for tiers in row_tiers for tier in tiers[:found])
    return cache, RestoreInfo(prompt_tokens=prompt_tokens, tokens=found * tokens, pages=found,
                              pages_by_tier=dict(by_tier), seconds=time.perf_counter() - started)


def save_prefix(client: TierClient, ns: NamespaceHandle, cache: DynamicCache, token_ids: TokenIds,
                *, first_page: int | None = None) -> SaveInfo:
    """Store the full pages of ``cache`` (the KV of ``token_ids``, each batch row its own
    prompt) under their chain keys, from ``first_page`` on (default: past what Lookup finds
    cached). Tokens beyond the cache's length and a partial last page are not saved; pages
    already cached are skipped by tierd. The cache is only read."""
    started = time.perf_counter()
    layers = cache_layers(cache, ns.spec)
    rows = token_rows(token_ids)
    batch, _, cached_tokens, _ = layers[0][0].shape
    if batch != len(rows):
        raise CacheMismatchError(f"the cache holds {batch} batch rows; {len(rows)} rows of token ids "
                                 "were given")
    tokens = ns.spec.page_tokens
    full = min(cached_tokens, rows[0].shape[0]) // tokens
    chunk = max(1, SAVE_CHUNK_BYTES // ns.page_bytes)
    offered = stored = skipped = 0
    for row, row_ids in enumerate(rows):
        keys = ns.keys(row_ids[:full * tokens])
        start = client.lookup(ns, keys) if first_page is None else min(first_page, full)
        for first in range(start, full, chunk):
            count = min(chunk, full - first)
            # Each put continues the row's chain: prefix-aware eviction then keeps its start.
            result = client.put(ns, keys[first:first + count], pages_of(layers, row, first, count, ns.spec),
                                parent=keys[first - 1] if first else None)
            offered += count
            stored += result.num_stored
            skipped += result.num_skipped
    return SaveInfo(pages_offered=offered, pages_stored=stored, pages_skipped=skipped,
                    seconds=time.perf_counter() - started)
