"""Client settings (one frozen value) and the retry-with-backoff policy for UNAVAILABLE."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tierd_client.errors import InvalidArgumentError

# Where the daemon listens under systemd (RuntimeDirectory=tierd); TIERD_SOCKET overrides it.
DEFAULT_SOCKET_PATH = "/run/tierd/tierd.sock"
SOCKET_ENV = "TIERD_SOCKET"
# The tenant token when ClientOptions.token is not set; sent as "authorization: Bearer <token>".
TOKEN_ENV = "TIERD_TOKEN"
AUTH_METADATA_KEY = "authorization"

# gRPC's default limit is 4 MiB per message. The daemon sends GetPages data in chunks of its
# chunk_bytes (a few MiB) plus framing; 64 MiB leaves room for any chunk size the daemon allows
# and for Lookup/Acquire answers with tens of thousands of keys.
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
# Bytes of framing around the page data in one PutPages message besides the keys.
MESSAGE_OVERHEAD_BYTES = 4096
# A burst of thousands of unary RPCs from one channel made a grpc.aio server answer CANCELLED;
# this many at once keeps the daemon's executors busy without queueing inside gRPC.
DEFAULT_MAX_INFLIGHT_RPCS = 64
# A local put keeps this many free hbm slots leased (one Allocate per so many pages); a worker
# holding more would starve the other workers of the namespace's hbm.
DEFAULT_PUT_SLOTS = 8
MAX_PUT_SLOTS = 256


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for calls answered UNAVAILABLE (daemon restarting).

    Attempt ``n`` (from 1) waits ``min(max_backoff_s, initial_backoff_s * multiplier**(n-1))``,
    scaled by a random factor in ``[1 - jitter, 1 + jitter]``, before attempt ``n + 1``.
    """

    max_attempts: int = 6
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidArgumentError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise InvalidArgumentError(
                f"need 0 <= initial_backoff_s <= max_backoff_s, got {self.initial_backoff_s} "
                f"and {self.max_backoff_s}")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise InvalidArgumentError(f"need multiplier >= 1 and 0 <= jitter < 1, got "
                                       f"{self.multiplier} and {self.jitter}")

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        spread = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return base * spread


@dataclass(frozen=True)
class ClientOptions:
    """Everything a client can tune; the defaults suit a worker on the daemon's node.

    ``token``: the tenant token, sent on every call (Session stream included) as metadata
    ``authorization: Bearer <token>``; ``None`` falls back to ``$TIERD_TOKEN``, and without
    either no token is sent (a daemon without tenants needs none).
    ``metadata``: extra (key, value) pairs sent on every call.
    ``rpc_timeout_s``: deadline of each RPC (Acquire adds its own ``timeout_s`` to it).
    ``tls_ca``: PEM file of the CA that signed the daemon's certificate: TLS for a TCP target
    (unset: plaintext, as for the unix socket and loopback TCP); ``tls_cert`` + ``tls_key``: this
    client's certificate for mTLS.
    ``local_data_path``: when the daemon shares this machine (its regions can be mapped), ``get``
    and ``get_into`` read resident pages straight from the mapped regions through the daemon's
    page index (no RPC), and ``put`` (when the page socket is not used, or it waits for disk)
    writes pages into leased slots and commits them with one RPC; ``False`` sends every page over
    the byte path.
    ``page_socket``: when the daemon shares this machine, byte-path gets and puts (``get``, ``put``
    and what the local data path leaves to them) go over its page socket, outside gRPC, when it
    serves one; so does every ``put`` that does not wait for disk (faster than leased slots and a
    Commit). ``False``: gRPC GetPages / PutPages, and local puts into leased slots.
    ``put_slots``: free slots a local ``put`` (``page_socket=False``) keeps leased ahead of need
    (one Allocate per that many pages), at most 1/64 of the region's slots (none in a region of
    fewer than 64 slots).
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_inflight_rpcs: int = DEFAULT_MAX_INFLIGHT_RPCS
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rpc_timeout_s: float = 60.0
    client_name: str = ""
    token: str | None = field(default=None, repr=False)  # a secret: kept out of reprs and logs
    metadata: tuple[tuple[str, str], ...] = ()
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    local_data_path: bool = True
    put_slots: int = DEFAULT_PUT_SLOTS
    page_socket: bool = True

    def __post_init__(self) -> None:
        if self.max_message_bytes <= MESSAGE_OVERHEAD_BYTES:
            raise InvalidArgumentError(f"max_message_bytes must exceed {MESSAGE_OVERHEAD_BYTES}, "
                                       f"got {self.max_message_bytes}")
        if self.max_inflight_rpcs < 1:
            raise InvalidArgumentError(
                f"max_inflight_rpcs must be at least 1, got {self.max_inflight_rpcs}")
        if not 1 <= self.put_slots <= MAX_PUT_SLOTS:
            raise InvalidArgumentError(f"put_slots must be in 1..{MAX_PUT_SLOTS}, got {self.put_slots}")
        if self.rpc_timeout_s <= 0:
            raise InvalidArgumentError(f"rpc_timeout_s must be positive, got {self.rpc_timeout_s}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgumentError("tls_cert and tls_key go together: set both or neither")
        if self.tls_cert is not None and self.tls_ca is None:
            raise InvalidArgumentError("tls_cert (mTLS) needs tls_ca, the CA of the daemon's "
                                       "certificate")
        if self.token is not None:
            _check_token(self.token, "ClientOptions.token")
        if any(key.lower() == AUTH_METADATA_KEY for key, _value in self.metadata):
            raise InvalidArgumentError("send the tenant token as ClientOptions(token=...), not "
                                       "as an authorization entry of metadata")

    def call_metadata(self, env: Mapping[str, str] | None = None) -> tuple[tuple[str, str], ...]:
        """The metadata of every call: ``metadata`` plus the bearer token (``token``, else
        ``$TIERD_TOKEN`` from ``env``, default ``os.environ``), if there is one."""
        token = self.token
        if token is None:
            token = (os.environ if env is None else env).get(TOKEN_ENV) or None
            if token is not None:
                token = token.strip()
                _check_token(token, f"${TOKEN_ENV}")
        if token is None:
            return self.metadata
        return self.metadata + ((AUTH_METADATA_KEY, f"Bearer {token}"),)


def bearer_token(metadata: tuple[tuple[str, str], ...]) -> str:
    """The token of ``call_metadata``'s authorization entry; ``""`` without one."""
    for key, value in metadata:
        if key == AUTH_METADATA_KEY:
            return value.partition(" ")[2]
    return ""


def _check_token(token: str, where: str) -> None:
    """A token must be one printable ASCII word: it is sent as a metadata value."""
    if not token or not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        # Never echo the token: it is a secret.
        got = f"a value of {len(token)} characters that is not" if token else "an empty value"
        raise InvalidArgumentError(f"{where} must be one word of printable ASCII characters "
                                   f"(no spaces), got {got}")


def grpc_target(socket_or_address: str | os.PathLike[str] | None) -> str:
    """A gRPC target from a unix socket path, ``unix:PATH`` or ``host:port``.

    ``None`` means ``$TIERD_SOCKET`` or ``/run/tierd/tierd.sock``.
    """
    if socket_or_address is None:
        socket_or_address = os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET_PATH
    text = os.fspath(socket_or_address)
    if not text:
        raise InvalidArgumentError("the daemon's socket path is empty")
    if text.startswith(("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")):
        return text
    if "/" in text or text.endswith(".sock") or ":" not in text:
        return "unix:" + os.path.abspath(text)
    return text
