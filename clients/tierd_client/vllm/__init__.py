"""tierd_client.vllm: a vLLM (0.32) KV connector that reuses prompt prefixes through tierd.

Configure vLLM with ``--kv-transfer-config '{"kv_connector": "TierdConnector",
"kv_connector_module_path": "tierd_client.vllm", "kv_role": "kv_both",
"kv_load_failure_policy": "recompute", "kv_connector_extra_config": {"socket":
"/run/tierd/tierd.sock"}}'`` (README "vLLM"). Importing this package does not import vLLM: vLLM
imports ``TierdConnector`` (``tierd_client.vllm.connector``) when it loads the connector.
"""

from __future__ import annotations

from typing import Any

from tierd_client.vllm.settings import ConnectorSettings, TierdConnectorConfigError

__all__ = ["ConnectorSettings", "TierdConnector", "TierdConnectorConfigError"]


def __getattr__(name: str) -> Any:
    if name in ("TierdConnector", "TierdConnectorMetadata"):
        from tierd_client.vllm import connector

        return getattr(connector, name)
    raise AttributeError(f"module 'tierd_client.vllm' has no attribute {name!r}")
