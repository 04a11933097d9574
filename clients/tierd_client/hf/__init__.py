"""HuggingFace transformers over tierd (needs the ``hf`` extra; transformers is imported lazily).

``prefix``: save a ``DynamicCache``'s full pages and restore the longest cached prefix, and the
``tiered_generation`` helper around ``generate``. ``paged``: an attention implementation and a
cache class whose K/V live in tierd's ``hbm`` pages, attended with ``tierd_kernels``, and the
``PagedWorker`` that runs a model with them. ``demo`` (``make demo``): both over four chat turns.

::

    from tierd_client.hf import tiered_generation
    with tiered_generation(client, model, revision="v1") as gen:
        out = gen.generate(input_ids, max_new_tokens=32)
        gen.last_restore.tokens, gen.last_restore.pages_by_tier   # what came from tierd, and where

The names below are loaded on first use, so ``import tierd_client.hf`` imports neither torch nor
transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tierd_client.hf.errors import (
                                        CacheMismatchError,
                                        HfPagingError,
                                        ModelIdentityError,
                                        UnsupportedGenerationError,
                                        UnsupportedModelError,
    )
    from tierd_client.hf.generation import TieredGeneration, tiered_generation
    from tierd_client.hf.model_spec import cache_argument, spec_for
    from tierd_client.hf.paged import (
        ATTENTION_NAME,
        CACHE_KWARG,
        BlockTable,
        PagedCacheError,
        PagedKVCache,
        PagedModelError,
        PagedOptions,
        PagedRequest,
        PagedWorker,
        PagedWorkerError,
        PageLostError,
        paged_attention_forward,
        register_paged_attention,
    )
    from tierd_client.hf.prefix import RestoreInfo, SaveInfo, restore_prefix, save_prefix

# Public name -> the submodule that defines it.
_EXPORTS = {
    "CacheMismatchError": "errors", "HfPagingError": "errors", "ModelIdentityError": "errors",
    "UnsupportedGenerationError": "errors", "UnsupportedModelError": "errors",
    "TieredGeneration": "generation", "tiered_generation": "generation",
    "cache_argument": "model_spec", "spec_for": "model_spec",
    "RestoreInfo": "prefix", "SaveInfo": "prefix", "restore_prefix": "prefix", "save_prefix": "prefix",
    **{name: "paged" for name in (
        "ATTENTION_NAME", "CACHE_KWARG", "BlockTable", "PageLostError", "PagedCacheError", "PagedKVCache",
        "PagedModelError", "PagedOptions", "PagedRequest", "PagedWorker", "PagedWorkerError",
        "paged_attention_forward", "register_paged_attention")},
}

__all__ = [
    "ATTENTION_NAME", "CACHE_KWARG", "BlockTable", "CacheMismatchError", "HfPagingError",
    "ModelIdentityError", "PageLostError", "PagedCacheError", "PagedKVCache", "PagedModelError",
    "PagedOptions", "PagedRequest", "PagedWorker", "PagedWorkerError", "RestoreInfo", "SaveInfo",
    "TieredGeneration", "UnsupportedGenerationError", "UnsupportedModelError", "cache_argument",
    "paged_attention_forward", "register_paged_attention", "restore_prefix", "save_prefix", "spec_for",
    "tiered_generation",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
