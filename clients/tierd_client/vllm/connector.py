"""``TierdConnector``: vLLM 0.32's ``KVConnectorBase_V1`` backed by tierd (imports vLLM).

Both roles build the same page spec from vLLM's config, so the engine core (scheduler side) and
the worker agree on keys without talking. The work is ``SchedulerSide``'s and ``WorkerSide``'s;
this class only adapts vLLM's calls to them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (  # type: ignore[import-not-found, unused-ignore]
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.v1.metrics.cache_hit_source import CacheHitSource  # type: ignore[import-not-found, unused-ignore]

from tierd_client.vllm.engine import engine_spec, settings_of
from tierd_client.vllm.link import TierdLink
from tierd_client.vllm.plan import StepPlan
from tierd_client.vllm.scheduler import SchedulerSide
from tierd_client.vllm.worker import WorkerSide, layer_order

log = logging.getLogger("tierd_client.vllm")


@dataclass
class TierdConnectorMetadata(KVConnectorMetadata):  # type: ignore[misc, unused-ignore]
    """One step's ``StepPlan``, as vLLM hands metadata from the scheduler to the worker."""

    plan: StepPlan = field(default_factory=StepPlan)


class TierdConnector(KVConnectorBase_V1):  # type: ignore[misc, unused-ignore]
    """Prefix reuse through tierd, for ``--kv-transfer-config '{"kv_connector": "TierdConnector",
    "kv_connector_module_path": "tierd_client.vllm", "kv_role": "kv_both",
    "kv_load_failure_policy": "recompute"}'``."""

    def __init__(self, vllm_config: Any, role: KVConnectorRole,
                 kv_cache_config: Any = None) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        settings = settings_of(vllm_config)
        spec = engine_spec(vllm_config, kv_cache_config, settings)
        side = "scheduler" if role == KVConnectorRole.SCHEDULER else "worker"
        link = TierdLink(settings, spec, side)  # its channel opens on first use, after vLLM forked
        log.info("tierd connector (%s side): %s at %s, layout %s", side, spec.model, settings.socket,
                 spec.layout)
        self._scheduler = SchedulerSide(link, spec.page_tokens) if side == "scheduler" else None
        self._worker = WorkerSide(link) if side == "worker" else None
        if self._scheduler is not None:
            link.connect()  # the worker side connects once vLLM hands it the caches

    _cache_hit_source = CacheHitSource.HOST

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a cache: a dropped save is a later miss, never a lost hand-off

    # -- scheduler side ------------------------------------------------------------------------
    def _sched(self) -> SchedulerSide:
        assert self._scheduler is not None, "a scheduler-side call on the worker-side connector"
        return self._scheduler

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int | None, bool]:
        return self._sched().num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        self._sched().update_state_after_alloc(request, blocks, num_external_tokens)

    def get_external_cache_hit_sources(self, request: Any, num_external_tokens: int) -> dict[Any, int]:
        """vLLM's metrics by tier: pages tierd held in memory (HOST) or only on disk (DISK)."""
        split = self._sched().hit_sources(request.request_id)
        if sum(split.values()) != num_external_tokens:
            return super().get_external_cache_hit_sources(request, num_external_tokens)  # type: ignore[no-any-return]
        sources = {CacheHitSource.HOST: split["host"], CacheHitSource.DISK: split["disk"]}
        return {source: tokens for source, tokens in sources.items() if tokens}

    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        return TierdConnectorMetadata(plan=self._sched().build_plan(scheduler_output))

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._sched().request_finished(request)
        return False, None

    # -- worker side ---------------------------------------------------------------------------
    def _work(self) -> WorkerSide:
        assert self._worker is not None, "a worker-side call on the scheduler-side connector"
        return self._worker

    def _plan(self) -> StepPlan:
        meta = self._get_connector_metadata()
        assert isinstance(meta, TierdConnectorMetadata), f"not tierd's metadata: {type(meta).__name__}"
        return meta.plan

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._work().register_kv_caches(kv_caches, layer_order(kv_caches))

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        self._work().load(self._plan())  # synchronous: done before the forward starts

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # every layer was loaded in start_load_kv

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        return  # blocks are saved once all layers are written, in wait_for_save

    def wait_for_save(self) -> None:
        self._work().save(self._plan())

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._work().load_errors()

    def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.close()
        if self._worker is not None:
            self._worker.link.close()
