"""Where the daemon listens: a unix socket (mode 0660 by default) and, when configured, TCP.

TCP is TLS (mTLS when ``tls_client_ca`` is set) unless the address is loopback; the config
refuses anything else before we get here. What is served is decided elsewhere (``tierd.server``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import grpc

from tierd.daemon.config import ServerSettings
from tierd.server.unix_socket import remove_stale_socket

log = logging.getLogger(__name__)


class ListenError(RuntimeError):
    """A listening address could not be bound; the message names it and why."""


def unix_target(path: Path) -> str:
    return f"unix:{path.absolute()}"


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials:
    """TLS credentials from the configured PEM files; client certs required when a CA is set."""
    if settings.tls_cert is None or settings.tls_key is None:
        raise ListenError("TLS needs server.tls_cert and server.tls_key")
    key, cert = settings.tls_key.read_bytes(), settings.tls_cert.read_bytes()
    ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=ca is not None)


def bind(server: grpc.aio.Server, settings: ServerSettings) -> list[str]:
    """Add every configured port to ``server`` (before it starts); the targets bound.

    ``ListenError`` when one cannot be bound.
    """
    bound: list[str] = []
    if settings.socket is not None:
        path = settings.socket
        remove_stale_socket(path)
        target = unix_target(path)
        _add_port(server.add_insecure_port, target)
        # The socket exists from here on; give it the configured mode (umask may have been stricter).
        os.chmod(path, settings.socket_mode)
        bound.append(target)
    if settings.tcp is not None:
        if settings.tls_cert is not None:
            credentials = server_credentials(settings)
            port = _add_port(lambda target: server.add_secure_port(target, credentials), settings.tcp)
            mode = "mTLS" if settings.tls_client_ca is not None else "TLS"
        else:
            port = _add_port(server.add_insecure_port, settings.tcp)
            mode = "plaintext, loopback only"
        host = settings.tcp.rpartition(":")[0]
        bound.append(f"{host}:{port} ({mode})")  # the real port when the config said 0
    return bound


def _add_port(add: Callable[[str], int], target: str) -> int:
    """The port bound; ``ListenError`` when grpc could not bind ``target``."""
    try:
        port = add(target)
    except RuntimeError as exc:
        raise ListenError(f"cannot listen on {target}: {exc}") from None
    if port == 0:
        raise ListenError(f"cannot listen on {target}: the address is in use or not allowed")
    return port


def unlink_socket(settings: ServerSettings) -> None:
    """Remove our socket file on a clean exit, so the next start finds no leftover."""
    if settings.socket is not None:
        remove_stale_socket(settings.socket)
