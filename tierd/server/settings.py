"""What the servicer needs to know to serve (limits, pools, identity); where it listens is not here."""

from __future__ import annotations

from dataclasses import dataclass

from tierd.server.auth import TenantToken


@dataclass(frozen=True)
class ServingSettings:
    """Limits and pool sizes of the servicer. Sizes are bytes, durations seconds.

    ``chunk_bytes`` must stay below ``max_message_bytes`` (the daemon's config checks it);
    ``flush_timeout_s`` bounds a Flush RPC that names no timeout. ``tenant_tokens`` empty: the
    daemon is open (no token asked); else every RPC but Health must carry one of these tokens.
    """

    max_message_bytes: int = 64 << 20
    chunk_bytes: int = 4 << 20
    max_put_bytes: int = 256 << 20
    max_get_bytes: int = 256 << 20
    max_keys_per_request: int = 1 << 20
    max_inflight_rpcs: int = 256
    max_sessions: int = 4096                # open Session streams (one per client process)
    rpc_threads: int = 16
    wait_threads: int = 16
    session_heartbeat_s: float = 5.0
    flush_timeout_s: float = 120.0
    version: str = ""
    device: str = "cpu"
    tenant_tokens: tuple[TenantToken, ...] = ()
