"""``PagedWorker``: a transformers decoder whose K/V live in tierd's hbm pages, attended in place.

::

    register_paged_attention()
    model = LlamaForCausalLM(config)            # config built with attn_implementation="tierd_paged"
    worker = PagedWorker(client, model, PagedOptions(revision="my-weights@1"))
    with worker.begin(prompt_ids) as request:   # the cached prefix is pinned, only the rest prefilled
        reply = request.greedy(32)              # full pages are committed to the cache as they fill

A request's block table is its reused pages (READ leases) followed by slots it leased to fill
(FILL leases, ``paged_leases``). Each step writes the new tokens' K/V into those slots and
attends over all of them (``paged_cache``, ``paged_attention``); each page that becomes full is
committed under its chain key and pinned again, so the next request with the same prefix starts
from it. Closing the request (or the worker's death) gives every slot back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from tierd.spec import DEFAULT_LAYOUT
from tierd.tier import Tier
from tierd_client.hf.model_spec import cache_argument, spec_for
from tierd_client.hf.paged_attention import paged_attention_forward
from tierd_client.hf.paged_cache import CACHE_KWARG, PagedKVCache
from tierd_client.hf.paged_errors import PagedCacheError, PagedModelError
from tierd_client.hf.paged_leases import RequestLeases
from tierd_client.hf.paged_table import BlockTable
from tierd_client.sync import TierClient
from tierd_kernels import ArenaGeometry, KernelInputError


@dataclass(frozen=True)
class PagedOptions:
    """How a worker pages: ``page_tokens`` tokens a page (a power of two, 8..256), the weights'
    ``revision`` (default: the hub commit they were loaded from; ``spec_for``), the daemon
    ``tenant``, and the TTL / promotion timeout each lease asks for (``None``: the daemon's)."""

    page_tokens: int = 16
    revision: str | None = None
    tenant: str = ""
    lease_ttl_s: float | None = None
    acquire_timeout_s: float | None = None


def _check_attention(model: Any) -> None:
    name = getattr(model.config, "_attn_implementation", None)
    if not isinstance(name, str) or ALL_ATTENTION_FUNCTIONS.get(name) is not paged_attention_forward:
        raise PagedModelError(f"the model runs attention {name!r}, not the paged one: call register_paged_attention() "
                              "and build the model with attn_implementation='tierd_paged' (or call "
                              "model.set_attn_implementation('tierd_paged'))")


def _check_arena(arena: torch.Tensor, device: torch.device) -> None:
    if arena.device != device:
        raise PagedModelError(f"the daemon's hbm arena is on {arena.device} but the model is on {device}: run the "
                              f"model on {arena.device}, or a daemon whose hbm lives on {device}")
    try:
        ArenaGeometry.of(arena).check_attention_support()
    except KernelInputError as exc:
        raise PagedModelError(f"the kernels cannot attend over this model's pages: {exc}") from None


class PagedWorker:
    """Runs ``model`` (batch 1, inference) with its K/V in ``client``'s daemon's hbm pages.

    Registers the model's namespace (``spec_for``: from its config, dtype and ``options``) and
    maps its hbm arena; the client owns both and must outlive the worker's requests. Raises
    ``PagedModelError`` for a model it cannot page, and ``spec_for``'s errors
    (``UnsupportedModelError``, ``ModelIdentityError``) for one without a page spec.
    """

    def __init__(self, client: TierClient, model: Any, options: PagedOptions | None = None) -> None:
        self.client = client
        self.model = model
        self.options = options or PagedOptions()
        _check_attention(model)
        self.device: torch.device = model.device
        # The spec prefix reuse (tierd_client.hf.prefix) derives too: both page the same layout,
        # so pages one saves, the other starts from.
        self.spec = spec_for(model, page_tokens=self.options.page_tokens, revision=self.options.revision)
        if self.spec.layout != DEFAULT_LAYOUT:
            raise PagedModelError(f"the model's pages are laid out {self.spec.layout!r}; the kernels read "
                                  f"tierd's {DEFAULT_LAYOUT!r} pages only")
        self.num_layers = self.spec.num_layers
        self.ns = client.register(self.spec, self.options.tenant)
        self.arena: torch.Tensor = client.arena(self.ns, Tier.HBM).torch()
        _check_arena(self.arena, self.device)
        self._cache_arg = cache_argument(model)

    def begin(self, prompt_ids: Sequence[int]) -> PagedRequest:
        """Start a request: pin the longest cached prefix of ``prompt_ids`` (always leaving one
        token to compute), prefill the rest. Close it (``with``) to give its slots back."""
        return PagedRequest(self, prompt_ids)

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of ``prompt_ids`` in one request: the ``max_new_tokens`` new ids."""
        with self.begin(prompt_ids) as request:
            return request.greedy(max_new_tokens)

    def leases(self) -> RequestLeases:
        """A new, empty lease set of this worker's namespace (one per request)."""
        return RequestLeases(self.client, self.ns, self.options.lease_ttl_s, self.options.acquire_timeout_s)

    def forward(self, cache: PagedKVCache, token_ids: Sequence[int]) -> torch.Tensor:
        """Run ``token_ids`` (the next positions of ``cache``'s sequence) through the model;
        their logits ``[len(token_ids), vocab]``."""
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        with torch.no_grad():
            out = self.model(input_ids=ids, use_cache=True, **{self._cache_arg: cache, CACHE_KWARG: cache})
        logits: torch.Tensor = out.logits[0]
        return logits


class PagedRequest:
    """One sequence's pages and steps (``PagedWorker.begin``); use as a context manager.

    ``reused_tokens``: prompt tokens whose K/V came from the cache; ``prefill_logits``
    ``[len(prompt) - reused_tokens, vocab]``: logits of the prompt tokens computed;
    ``last_logits`` ``[vocab]``: the prediction after the last token so far.
    """

    def __init__(self, worker: PagedWorker, prompt_ids: Sequence[int]) -> None:
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise PagedCacheError("a request needs at least one prompt token")
        self._worker = worker
        self._page_tokens = worker.options.page_tokens
        self._leases = worker.leases()
        self._closed = False
        self._failed = False
        try:
            # The whole prompt is never reused: its last token must run to give the next logits.
            prefix_keys = worker.ns.keys(prompt[:-1])
            slots = self._leases.pin(prefix_keys)
            self.reused_tokens = len(slots) * self._page_tokens
            self._keys: list[bytes] = list(prefix_keys[:len(slots)])
            self._tokens: list[int] = prompt[:self.reused_tokens]
            self._table = BlockTable(self._page_tokens, slots)
            self._cache = PagedKVCache(worker.arena, self._table, worker.num_layers, start=self.reused_tokens)
            self.committed_pages = 0
            self.prefill_logits = self.extend(prompt[self.reused_tokens:])
        except BaseException:
            self.close()
            raise

    @property
    def tokens(self) -> tuple[int, ...]:
        """Every token whose K/V is in the request's pages, in order."""
        return tuple(self._tokens)

    @property
    def block_table(self) -> tuple[int, ...]:
        """The hbm slots of the request's pages, in order."""
        return self._table.slots

    @property
    def num_leases(self) -> int:
        """Leases the request holds now (READ ones pin its cached pages, FILL ones its own slots)."""
        return self._leases.num_leases

    @property
    def expires_at_s(self) -> float:
        """When its first lease ends unless a step comes first (each step renews those past half
        their TTL); ``time.monotonic()`` seconds."""
        return self._leases.expires_at_s

    def extend(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Run the next tokens (a decode step, or a new turn's text); their logits ``[n, vocab]``."""
        token_ids = [int(t) for t in token_ids]
        self._check_usable(token_ids)
        self.keep_alive()
        missing = self._table.pages_for(len(self._tokens) + len(token_ids))
        if missing:
            self._table.append(self._leases.reserve(missing))
        try:
            logits = self._worker.forward(self._cache, token_ids)
        except BaseException:
            self._failed = True  # some layers may hold the step's K/V, others not
            raise
        self._tokens.extend(token_ids)
        self.last_logits = logits[-1]
        self._commit_full_pages()
        return logits

    def keep_alive(self) -> None:
        """Renew the leases past half their TTL (each step does; call it while the request idles)."""
        if self._closed:
            raise PagedCacheError("the request is closed: its slots went back; begin a new request")
        try:
            self._leases.keep_alive()
        except PagedCacheError:
            self._failed = True  # a lease ended: pages it pinned may hold other K/V by now
            raise

    def greedy(self, max_new_tokens: int) -> list[int]:
        """Append ``max_new_tokens`` greedy tokens (each runs one decode step); returns them."""
        new: list[int] = []
        for _ in range(max_new_tokens):
            new.append(int(self.last_logits.argmax()))
            self.extend(new[-1:])
        return new

    def _check_usable(self, token_ids: list[int]) -> None:
        if self._closed:
            raise PagedCacheError("the request is closed: its slots went back; begin a new request")
        if self._failed or self._cache.lengths() != [len(self._tokens)] * self._worker.num_layers:
            raise PagedCacheError("a step of this request failed half-way, so its layers hold different tokens: "
                                  "close it and begin a new request (its full pages are reused)")
        if not token_ids:
            raise PagedCacheError("a step needs at least one token")

    def _commit_full_pages(self) -> None:
        """Commit each page that became full in this request's own slots, and pin it again."""
        first = len(self._keys)
        full = len(self._tokens) // self._page_tokens
        if full <= first:
            return
        p = self._page_tokens
        keys: list[bytes] = []
        parent = self._keys[-1] if self._keys else None
        for page in range(first, full):
            parent = self._worker.ns.keys(self._tokens[page * p:(page + 1) * p], parent=parent)[0]
            keys.append(parent)
        # The page before ``first`` (reused or committed by an earlier step) is the chain's parent.
        pinned = self._leases.commit(keys, self._table.slots[first:full], parent=self._keys[-1] if self._keys else None)
        for offset, slot in enumerate(pinned):
            self._table.replace(first + offset, slot)
        self._keys.extend(keys)
        self.committed_pages += len(keys)

    def close(self) -> None:
        """Give back every slot and pin of the request (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._leases.release_all()

    def __enter__(self) -> PagedRequest:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
