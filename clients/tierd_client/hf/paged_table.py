"""One sequence's block table: which arena slot holds each of its pages. Pure bookkeeping.

Token ``t`` of the sequence lives in page ``t // page_tokens``, at offset ``t % page_tokens`` of
that page's slot. The request that owns the table appends the slots its leases give it and
swaps a slot when a committed page is pinned again elsewhere; the cache and the attention read it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tierd_client.hf.paged_errors import PagedCacheError


class BlockTable:
    """Slots of one sequence's pages, in order. ``slots[i]`` holds tokens ``i*P .. (i+1)*P - 1``."""

    def __init__(self, page_tokens: int, slots: Sequence[int] = ()) -> None:
        if page_tokens < 1:
            raise PagedCacheError(f"page_tokens must be positive, got {page_tokens}")
        self.page_tokens = page_tokens
        self._slots = list(slots)
        # Built once per change and reused by every layer of a step: int32 [1, num_pages], and the
        # slot mapping of the step's tokens keyed by (start, count, device).
        self._tensor: torch.Tensor | None = None
        self._mapping: tuple[tuple[int, int, torch.device], torch.Tensor] | None = None

    @property
    def slots(self) -> tuple[int, ...]:
        return tuple(self._slots)

    @property
    def num_pages(self) -> int:
        return len(self._slots)

    @property
    def capacity(self) -> int:
        """Tokens the table's pages hold."""
        return len(self._slots) * self.page_tokens

    def pages_for(self, num_tokens: int) -> int:
        """Pages to add so that the table holds ``num_tokens`` tokens (0 when it already does)."""
        return max(0, -(-num_tokens // self.page_tokens) - len(self._slots))

    def append(self, slots: Sequence[int]) -> None:
        """Add pages at the end (the next positions)."""
        self._slots.extend(slots)
        self._changed()

    def replace(self, page: int, slot: int) -> None:
        """Page ``page`` now lives in ``slot`` (same K/V, pinned by another lease)."""
        self._slots[page] = slot
        self._changed()

    def _changed(self) -> None:
        self._tensor = None
        self._mapping = None

    def slot_mapping(self, start: int, count: int, device: torch.device) -> torch.Tensor:
        """int64 ``[count]`` flat positions ``slot * P + offset`` of tokens ``start .. start+count-1``."""
        key = (start, count, device)
        if self._mapping is not None and self._mapping[0] == key:
            return self._mapping[1]
        end = start + count
        if start < 0 or end > self.capacity:
            raise PagedCacheError(f"tokens {start}..{end - 1} need {-(-end // self.page_tokens)} pages but the "
                                  f"table has {self.num_pages}: reserve slots for a step before running it")
        positions = torch.arange(start, end, dtype=torch.int64)
        slots = torch.tensor(self._slots, dtype=torch.int64)[positions // self.page_tokens]
        mapping = (slots * self.page_tokens + positions % self.page_tokens).to(device)
        self._mapping = (key, mapping)
        return mapping

    def tensor(self, device: torch.device) -> torch.Tensor:
        """The table as the kernels take it: int32 ``[1, max(num_pages, 1)]`` on ``device``."""
        if self._tensor is None or self._tensor.device != device:
            # A table without pages still needs one column (the kernels' shape rule); seq_len 0 reads none.
            slots = self._slots or [0]
            self._tensor = torch.tensor([slots], dtype=torch.int32, device=device)
        return self._tensor
