"""``tiered_generation``: ``model.generate`` that starts from the pages tierd holds.

::

    with TierClient() as client, tiered_generation(client, model, revision="v1") as gen:
        out = gen.generate(input_ids, max_new_tokens=64)
        print(gen.last_restore.tokens, gen.last_restore.pages_by_tier)

Each call restores the longest cached prefix of ``input_ids`` (never the whole prompt), lets
``generate`` prefill only the rest, then saves the full pages of prompt and answer that were not
cached, so the next turn of a conversation (whose prompt starts with this one's output) restores
them too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import DynamicCache, GenerationConfig, GenerationMixin, PreTrainedModel

from tierd.spec import PageSpec
from tierd_client.errors import FailedPreconditionError
from tierd_client.hf.errors import UnsupportedGenerationError, UnsupportedModelError
from tierd_client.hf.model_spec import CACHE_ARGUMENTS, DEFAULT_PAGE_TOKENS, cache_argument, spec_for
from tierd_client.hf.prefix import RestoreInfo, SaveInfo, restore_prefix, save_prefix
from tierd_client.sync import TierClient
from tierd_client.types import NamespaceHandle


class TieredGeneration:
    """``generate`` over one model and one tierd namespace (``spec_for(model)``); made by
    ``tiered_generation``. Not for concurrent use from several threads."""

    def __init__(self, client: TierClient, model: PreTrainedModel, ns: NamespaceHandle,
                 save: bool = True) -> None:
        if not isinstance(model, GenerationMixin):
            raise UnsupportedModelError(f"{type(model).__name__} has no generate(): give a causal LM "
                                        "(e.g. AutoModelForCausalLM), not its base model")
        self.client = client
        self.model = model
        self._generate = model.generate
        self.ns = ns
        self.save = save
        self.last_restore: RestoreInfo | None = None  # of the latest generate call
        self.last_save: SaveInfo | None = None        # None when it saved nothing (save=False)
        self._cache_argument = cache_argument(model)
        self._closed = False

    @property
    def spec(self) -> PageSpec:
        return self.ns.spec

    def close(self) -> None:
        """Later ``generate`` calls raise; the client stays open (it is the caller's)."""
        self._closed = True

    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        """``model.generate(input_ids, **kwargs)`` from the longest cached prefix; returns what
        ``generate`` returns. ``input_ids``: ``[batch, seq]`` (or ``[seq]``) without padding; the
        attention mask, if given, must be all ones. Beam search is refused."""
        if self._closed:
            raise FailedPreconditionError("this tiered_generation has ended: open a new one")
        input_ids = self._checked_inputs(input_ids, kwargs)
        cache, restored = restore_prefix(self.client, self.ns, self.model, input_ids,
                                         device=input_ids.device)
        self.last_restore, self.last_save = restored, None
        kwargs[self._cache_argument] = cache
        kwargs["attention_mask"] = torch.ones_like(input_ids)
        out = self._generate(input_ids, **kwargs)
        if self.save:
            self.last_save = self._save(cache, out, restored.pages)
        return out

    def _checked_inputs(self, input_ids: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor):
            raise UnsupportedGenerationError(f"input_ids must be a tensor of token ids, got "
                                             f"{type(input_ids).__name__}")
        if input_ids.ndim == 1:
            input_ids = input_ids[None, :]
        given = [name for name in CACHE_ARGUMENTS if kwargs.get(name) is not None]
        if given:
            raise UnsupportedGenerationError(f"{given[0]}= was given: tiered generation brings its own "
                                             "cache; call model.generate directly to use yours")
        mask = kwargs.pop("attention_mask", None)
        if mask is not None and (tuple(mask.shape) != tuple(input_ids.shape) or not bool(mask.all())):
            raise UnsupportedGenerationError("the attention mask pads some rows: tiered generation "
                                             "restores one prefix length for the whole batch, so give "
                                             "rows of equal length without padding")
        base = kwargs.get("generation_config")
        config = base if isinstance(base, GenerationConfig) else self.model.generation_config
        for name in ("num_beams", "num_return_sequences"):
            value = kwargs.get(name, getattr(config, name, 1))
            if value is not None and value > 1:
                raise UnsupportedGenerationError(f"{name}={value}: tiered generation keeps one cache "
                                                 "row per prompt row; use num_beams=1 and one sequence")
        return input_ids

    def _save(self, cache: DynamicCache, out: Any, restored_pages: int) -> SaveInfo:
        """The full pages of prompt and answer the cache now holds (the last generated token was
        never fed back, so the cache is one token short of the sequences)."""
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        return save_prefix(self.client, self.ns, cache, sequences[:, :cache.get_seq_length()],
                           first_page=restored_pages)


@contextmanager
def tiered_generation(client: TierClient, model: PreTrainedModel, *,
                      page_tokens: int = DEFAULT_PAGE_TOKENS, revision: str | None = None,
                      tenant: str = "", save: bool = True,
                      cold_format: str = "") -> Iterator[TieredGeneration]:
    """Register ``spec_for(model, page_tokens=..., revision=..., cold_format=...)`` (for
    ``tenant``) and yield a ``TieredGeneration`` over it. ``save=False`` only restores."""
    spec = spec_for(model, page_tokens=page_tokens, revision=revision, cold_format=cold_format)
    ns = client.register(spec, tenant)
    gen = TieredGeneration(client, model, ns, save=save)
    try:
        yield gen
    finally:
        gen.close()
