"""``PagedKVCache``: a transformers ``Cache`` whose K/V live in tierd's hbm arena, nowhere else.

Each layer's ``update`` writes the step's new K/V rows into the sequence's slots with
``tierd_kernels.store_kv`` and hands the same new rows back unchanged: no copy of the past K/V is
kept or built. The attention registered by ``tierd_client.hf.paged_attention`` then reads the
past straight from the arena through the block table. The cache owns neither: the arena is the
daemon's mapped region, the table the request's (``tierd_client.hf.paged_worker``).
"""

from __future__ import annotations

from typing import Any, NoReturn

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from tierd_client.hf.paged_errors import PagedCacheError
from tierd_client.hf.paged_table import BlockTable
from tierd_kernels import ArenaGeometry, store_kv

# The keyword under which the attention finds the cache: the worker passes it to ``forward``
# (transformers hands forward's extra keywords down to the attention), and on transformers that
# give ``Cache.update`` the attention's keywords (5.24+) the cache also puts itself there.
CACHE_KWARG = "tierd_cache"


def _unsupported(what: str) -> NoReturn:
    raise PagedCacheError(f"the paged cache does not support {what}: its K/V live in tierd's pages, "
                          "shared with other requests; start a new request instead")


class PagedLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]  # transformers' __init_subclass__
    """One layer's view of the paged cache: ``length`` tokens of it are written in the arena."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, arena: torch.Tensor, table: BlockTable, layer_idx: int, length: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.arena = arena
        self.table = table
        self.layer_idx = layer_idx
        self.length = length
        self.device = arena.device
        self.is_initialized = True  # nothing to allocate: the arena exists already

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Write K/V ``[1, num_kv_heads, q_len, head_dim]`` of positions ``length ..`` into the
        arena; returns them as given (the attention reads the past from the pages)."""
        if key_states.shape[0] != 1:
            raise PagedCacheError(f"the paged cache holds one sequence; got a batch of {key_states.shape[0]}")
        q_len = key_states.shape[2]
        # [Hkv, q_len, D] -> [q_len, Hkv, D]: store_kv takes each token's heads contiguous.
        k = key_states[0].transpose(0, 1).contiguous()
        v = value_states[0].transpose(0, 1).contiguous()
        mapping = self.table.slot_mapping(self.length, q_len, self.arena.device)
        store_kv(self.arena, self.layer_idx, k, v, mapping)
        self.length += q_len
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def offload(self) -> NoReturn:
        _unsupported("offloading")

    def prefetch(self) -> NoReturn:
        _unsupported("offloading")

    def reset(self) -> NoReturn:
        _unsupported("reset")

    def crop(self, tokens_to_remove: int) -> NoReturn:
        _unsupported("crop (assisted decoding, rollback)")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> NoReturn:
        _unsupported("beam search")

    def batch_repeat_interleave(self, repeats: int) -> NoReturn:
        _unsupported("batch expansion (num_return_sequences, beams)")

    def batch_select_indices(self, indices: torch.Tensor) -> NoReturn:
        _unsupported("batch selection")


class PagedKVCache(Cache):
    """K/V of one sequence in ``arena`` ``[num_slots, num_layers, 2, page_tokens, num_kv_heads,
    head_dim]`` at the slots of ``table``; the first ``start`` tokens are already there (a
    reused prefix). Works only with the paged attention (``register_paged_attention``)."""

    def __init__(self, arena: torch.Tensor, table: BlockTable, num_layers: int, start: int = 0) -> None:
        geometry = ArenaGeometry.of(arena)
        if geometry.num_layers != num_layers:
            raise PagedCacheError(f"the arena's pages hold {geometry.num_layers} layers, the model has {num_layers}")
        if geometry.page_tokens != table.page_tokens:
            raise PagedCacheError(f"the arena's pages hold {geometry.page_tokens} tokens, the table's "
                                  f"{table.page_tokens}")
        if not 0 <= start <= table.capacity:
            raise PagedCacheError(f"start {start} is outside the table's {table.capacity} tokens")
        self.arena = arena
        self.table = table
        self.paged_layers = [PagedLayer(arena, table, i, start) for i in range(num_layers)]
        self._seq_lens: tuple[int, torch.Tensor] | None = None
        super().__init__(layers=list(self.paged_layers))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        step_kwargs = kwargs.get("kwargs")
        if isinstance(step_kwargs, dict):
            step_kwargs[CACHE_KWARG] = self  # what the attention of this layer receives (5.24+)
        keys, values = self.paged_layers[layer_idx].update(key_states, value_states)
        return keys, values

    def seq_len(self, layer_idx: int) -> int:
        """Tokens of layer ``layer_idx`` written so far (the current step's included once updated)."""
        return self.paged_layers[layer_idx].length

    def page_tables(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(block_tables int32 [1, max_pages], seq_lens int32 [1])`` of layer ``layer_idx``, as the
        kernels take them."""
        device = self.arena.device
        length = self.seq_len(layer_idx)
        # Every layer attends at the same length within a step: one seq_lens tensor serves them all.
        if self._seq_lens is None or self._seq_lens[0] != length:
            self._seq_lens = (length, torch.tensor([length], dtype=torch.int32, device=device))
        return self.table.tensor(device), self._seq_lens[1]

    def lengths(self) -> list[int]:
        """Tokens written per layer: all equal between steps, unless a step failed half-way."""
        return [layer.length for layer in self.paged_layers]
