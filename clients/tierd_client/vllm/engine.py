"""The connector's settings and page spec from vLLM's config (imports vLLM: the connector's
module only). Refuses, at start and with what to set, an engine whose KV cache it cannot page."""

from __future__ import annotations

from typing import Any

from tierd.spec import PageSpec
from tierd_client.vllm.layout import EngineLayout, check_page_tokens, page_spec
from tierd_client.vllm.settings import ConnectorSettings, TierdConnectorConfigError


def settings_of(vllm_config: Any) -> ConnectorSettings:
    """``kv_connector_extra_config`` as ``ConnectorSettings``."""
    transfer = vllm_config.kv_transfer_config
    return ConnectorSettings.from_extra_config(getattr(transfer, "kv_connector_extra_config", None))


def _attention_group(kv_cache_config: Any) -> tuple[Any, list[str]]:
    groups = [] if kv_cache_config is None else list(kv_cache_config.kv_cache_groups)
    if len(groups) != 1 or type(groups[0].kv_cache_spec).__name__ != "FullAttentionSpec":
        kinds = [type(g.kv_cache_spec).__name__ for g in groups]
        raise TierdConnectorConfigError(
            f"the tierd connector pages one full-attention KV cache group; this model has {kinds}: "
            "use it without --kv-transfer-config")
    spec = groups[0].kv_cache_spec
    if getattr(spec, "head_size_v", spec.head_size) not in (None, spec.head_size):
        raise TierdConnectorConfigError("the tierd connector needs K and V of one head size")
    return spec, list(groups[0].layer_names)


def engine_layout(vllm_config: Any, kv_spec: Any) -> EngineLayout:
    """The layout of this engine's blocks: vLLM's version, the CPU attention ISA vLLM itself
    picks (``_get_attn_isa``, the same function its CPU backend calls), dtype and block size."""
    import vllm  # type: ignore[import-not-found, unused-ignore]
    from vllm.platforms import current_platform  # type: ignore[import-not-found, unused-ignore]

    if not current_platform.is_cpu():
        raise TierdConnectorConfigError(
            f"the tierd connector knows the KV layout of vLLM's CPU backend only; this platform is "
            f"{current_platform.device_name!r}")
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa  # type: ignore[import-not-found, unused-ignore]

    cache_dtype = vllm_config.cache_config.cache_dtype
    if cache_dtype != "auto":
        raise TierdConnectorConfigError(
            f"--kv-cache-dtype is {cache_dtype!r}: the tierd connector pages unquantized caches; "
            "set --kv-cache-dtype auto")
    isa = _get_attn_isa(kv_spec.dtype, kv_spec.block_size, kv_spec.head_size, cache_dtype)
    dtype = str(kv_spec.dtype).removeprefix("torch.")
    return EngineLayout(engine_version=vllm.__version__, backend=f"cpu_attn-{isa}", dtype=dtype,
                        block_size=kv_spec.block_size)


def engine_spec(vllm_config: Any, kv_cache_config: Any, settings: ConnectorSettings) -> PageSpec:
    """The page spec both roles register: one vLLM block of every layer per page."""
    parallel = vllm_config.parallel_config
    if parallel.world_size > 1:
        raise TierdConnectorConfigError(
            f"the tierd connector runs with one worker; this engine has world_size "
            f"{parallel.world_size}: set --tensor-parallel-size 1 --pipeline-parallel-size 1")
    kv_spec, layer_names = _attention_group(kv_cache_config)
    check_page_tokens(settings.page_tokens, kv_spec.block_size)
    model = vllm_config.model_config
    model_id = settings.model_id or f"{model.model}@{model.revision or 'main'}"
    return page_spec(model_id, engine_layout(vllm_config, kv_spec), len(layer_names),
                     kv_spec.num_kv_heads, kv_spec.head_size)
