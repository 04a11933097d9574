"""The connector's settings (``kv_connector_extra_config``) and its typed error.

Every key is optional::

    {"socket": "/run/tierd/tierd.sock", "tenant": "", "tier": "dram", "model_id": "",
     "local": true, "connect_timeout_s": 10.0, "acquire_timeout_s": 2.0, "rpc_timeout_s": 2.0,
     "retry_after_s": 2.0,
     "lease_ttl_s": 60.0, "page_tokens": 32}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

DEFAULT_SOCKET = "/run/tierd/tierd.sock"
TIERS = ("hbm", "dram")


class TierdConnectorConfigError(ValueError):
    """The engine and the connector's settings do not fit: the message says what to set."""


@dataclass(frozen=True)
class ConnectorSettings:
    """``socket``: the daemon (a unix socket path, ``unix:PATH`` or ``host:port``; default
    ``$TIERD_SOCKET``, else ``/run/tierd/tierd.sock``). ``tier``: the region pages are read from
    and written to (``dram`` for a CPU engine). ``model_id``: the model's name in the namespace
    (default: vLLM's model name and revision). ``local``: use the mapped regions when the daemon
    is on this machine (else every page goes over gRPC). Timeouts in seconds: ``connect_timeout_s``
    bounds opening a connection (a busy engine host may take seconds; a daemon that is down is
    refused at once), ``acquire_timeout_s`` a lookup that brings pages up from disk, ``rpc_timeout_s`` any other call,
    ``retry_after_s`` how long tierd is left alone after it failed, ``lease_ttl_s`` how long a
    pin of hit pages outlives a scheduler that forgot it."""

    socket: str = ""
    tenant: str = ""
    tier: str = "dram"
    model_id: str = ""
    local: bool = True
    connect_timeout_s: float = 10.0
    acquire_timeout_s: float = 2.0
    rpc_timeout_s: float = 2.0
    retry_after_s: float = 2.0
    lease_ttl_s: float = 60.0
    page_tokens: int | None = None  # when given, must equal vLLM's block size (checked at start)

    def __post_init__(self) -> None:
        if not self.socket:
            object.__setattr__(self, "socket", os.environ.get("TIERD_SOCKET") or DEFAULT_SOCKET)
        if self.tier not in TIERS:
            raise TierdConnectorConfigError(
                f"kv_connector_extra_config.tier is {self.tier!r}: set one of {', '.join(TIERS)}")
        for name in ("connect_timeout_s", "acquire_timeout_s", "rpc_timeout_s", "retry_after_s", "lease_ttl_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise TierdConnectorConfigError(
                    f"kv_connector_extra_config.{name} must be a positive number of seconds, got {value!r}")

    @classmethod
    def from_extra_config(cls, extra: Mapping[str, object] | None) -> ConnectorSettings:
        """The settings of ``kv_connector_extra_config``; an unknown key is refused (a typo
        would otherwise be silently ignored)."""
        extra = dict(extra or {})
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise TierdConnectorConfigError(
                f"kv_connector_extra_config has unknown keys {unknown}: the connector knows "
                f"{sorted(known)}")
        for name, value in extra.items():
            wanted = {"local": bool, "page_tokens": int}.get(name, float if name.endswith("_s") else str)
            if wanted is float and isinstance(value, int) and not isinstance(value, bool):
                extra[name] = value = float(value)
            if not isinstance(value, wanted) or (wanted is not bool and isinstance(value, bool)):
                raise TierdConnectorConfigError(
                    f"kv_connector_extra_config.{name} must be a {wanted.__name__}, got {value!r}")
        return cls(**extra)  # type: ignore[arg-type]
