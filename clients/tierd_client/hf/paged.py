"""The paged worker: a transformers decoder whose K/V live in tierd's hbm pages and whose
attention runs ``tierd_kernels`` over them (no ``DynamicCache`` copy of the K/V).

::

    from tierd_client import TierClient
    from tierd_client.hf.paged import PagedOptions, PagedWorker, register_paged_attention

    register_paged_attention()                                   # attn_implementation "tierd_paged"
    model = LlamaForCausalLM(LlamaConfig(..., attn_implementation="tierd_paged")).eval()
    with TierClient(socket) as client:
        worker = PagedWorker(client, model, PagedOptions(revision="my-weights@1"))
        with worker.begin(prompt_ids) as request:                # cached prefix pinned, rest prefilled
            reply = request.greedy(32)
            request.reused_tokens, request.prefill_logits, request.last_logits

Modules: ``paged_attention`` (the attention function), ``paged_cache`` (the ``Cache`` writing into
the arena), ``paged_table`` (block tables), ``paged_leases`` (the request's leases),
``paged_worker`` (worker and request), ``paged_errors``. The page spec is ``spec_for``'s
(``tierd_client.hf.model_spec``), the one prefix reuse uses.
"""

from tierd_client.hf.paged_attention import ATTENTION_NAME, paged_attention_forward, register_paged_attention
from tierd_client.hf.paged_cache import CACHE_KWARG, PagedKVCache
from tierd_client.hf.paged_errors import PagedCacheError, PagedModelError, PagedWorkerError, PageLostError
from tierd_client.hf.paged_table import BlockTable
from tierd_client.hf.paged_worker import PagedOptions, PagedRequest, PagedWorker

__all__ = [
    "ATTENTION_NAME", "CACHE_KWARG", "BlockTable", "PageLostError", "PagedCacheError", "PagedKVCache",
    "PagedModelError", "PagedOptions", "PagedRequest", "PagedWorker", "PagedWorkerError",
    "paged_attention_forward", "register_paged_attention",
]
