"""What the servicer needs to know to serve (limits, pools, identity); where it listens is not here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tierd.errors import ConfigError
from tierd.keys import KEY_BYTES
from tierd.server.auth import TenantToken

# Bytes a key costs on the wire inside a repeated field (tag + length + 16 bytes), rounded up.
KEY_WIRE_BYTES = KEY_BYTES + 4
# Room for the non-data fields of a chunk message next to its data bytes.
CHUNK_OVERHEAD_BYTES = 64 << 10


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
    advertised_region_socket: str = ""  # absolute path told to zero-copy workers; empty: none
    advertised_page_socket: str = ""    # absolute path told to byte-path clients; empty: none

    # Fields the daemon fills from elsewhere than its config's [server] table.
    NOT_CONFIGURED: ClassVar[frozenset[str]] = frozenset(
        {"flush_timeout_s", "version", "device", "tenant_tokens", "advertised_region_socket",
         "advertised_page_socket"})

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first limit that cannot work (as ``server.*``)."""
        for name in ("max_message_bytes", "chunk_bytes", "max_put_bytes", "max_get_bytes",
                     "max_keys_per_request", "max_inflight_rpcs", "max_sessions", "rpc_threads",
                     "wait_threads", "session_heartbeat_s", "flush_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"server.{name} must be positive, got {getattr(self, name)}")
        if self.chunk_bytes + CHUNK_OVERHEAD_BYTES > self.max_message_bytes:
            raise ConfigError(f"server.chunk_size ({self.chunk_bytes} B) plus {CHUNK_OVERHEAD_BYTES}"
                              f" B of framing exceeds server.max_message_size "
                              f"({self.max_message_bytes} B): raise the limit or lower the chunk")
        if self.max_keys_per_request * KEY_WIRE_BYTES + CHUNK_OVERHEAD_BYTES > self.max_message_bytes:
            raise ConfigError(f"server.max_keys_per_request ({self.max_keys_per_request}) keys do "
                              f"not fit in server.max_message_size ({self.max_message_bytes} B)")
