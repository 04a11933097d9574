"""The region socket: hands a region's memory (its memfd) to a worker that presents its grant.

Regions are unnamed memory, so the only way into one is its descriptor, and the only way to get
that is this socket: the worker sends ``RegionRequest(OPEN, grant)`` (``tierd.region_wire``) and
gets the descriptor back as SCM_RIGHTS ancillary data. Grants are random secrets sent only in
Register answers to the namespace's own tenant, so what a process can map is what its tenant's
token registered, whatever OS group it runs in. The socket's mode is the gRPC socket's.

One short exchange per connection, each bounded by ``timeout_s``; at most ``max_connections`` in
progress (more are closed at once, so a flood of idle connections cannot stall the others). The
accept loop runs on a thread of its own and the exchanges on a small pool: never on the event loop.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from tierd.errors import InvalidArgument
from tierd.region_wire import REQUEST_BYTES, RegionOp, RegionReply, RegionRequest, RegionStatus
from tierd.server.unix_listener import UnixListener
from tierd.server.unix_socket import peer_name

log = logging.getLogger(__name__)

# Looks a grant up: a descriptor valid inside the ``with``, or None.
# lookup(grant) -> the region's fd; lookup(grant, index=True) -> its page index's fd (None: no such).
FdLookup = Callable[..., AbstractContextManager[int | None]]
SETTING_NAME = "server.region_socket"


@dataclass(frozen=True)
class RegionSocketSettings:
    """Where and how: ``path`` gets ``mode``; each exchange has ``timeout_s``."""

    path: Path
    mode: int = 0o660
    timeout_s: float = 5.0
    max_connections: int = 64
    threads: int = 4


class RegionSocket:
    """Serves region descriptors over a unix socket. Owns the socket, its thread and its pool;
    ``start``/``close`` are idempotent and ``close`` removes the socket file."""

    def __init__(self, settings: RegionSocketSettings, lookup: FdLookup) -> None:
        self._settings = settings
        self._lookup = lookup
        self._lock = threading.Lock()
        self._in_progress = 0
        self._pool = cf.ThreadPoolExecutor(settings.threads, thread_name_prefix="tierd-region-socket")
        self._listener = UnixListener(settings.path, settings.mode, SETTING_NAME, self._dispatch,
                                      "tierd-region-accept")
        self._started = False

    @property
    def path(self) -> Path:
        return self._settings.path

    def start(self) -> None:
        """Bind (``ConfigError`` if another process serves the path), then accept on a thread."""
        self._listener.start()
        if not self._started:
            self._started = True
            log.info("region socket on %s", self._settings.path)

    def close(self) -> None:
        """Stop accepting, finish the exchanges in progress, remove the socket file."""
        self._listener.close()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> RegionSocket:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _dispatch(self, conn: socket.socket) -> None:
        with self._lock:
            busy = self._in_progress >= self._settings.max_connections
            if not busy:
                self._in_progress += 1
        if busy:
            _reply(conn, RegionReply(RegionStatus.UNAVAILABLE, "the region socket is busy; retry"))
            conn.close()
            return
        self._pool.submit(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(self._settings.timeout_s)
                self._exchange(conn)
        except OSError as exc:  # the peer went away or stalled past the timeout
            log.debug("region socket exchange with %s ended early: %s", peer_name(conn), exc)
        except Exception:  # one bad exchange must not take the socket down
            log.exception("region socket exchange with %s failed", peer_name(conn))
        finally:
            with self._lock:
                self._in_progress -= 1

    def _exchange(self, conn: socket.socket) -> None:
        try:
            request = RegionRequest.decode(_recv_exactly(conn, REQUEST_BYTES))
        except InvalidArgument as exc:
            _reply(conn, RegionReply(RegionStatus.INVALID, f"{exc}"))
            return
        lookup = (self._lookup(request.grant, index=True) if request.op is RegionOp.OPEN_INDEX
                  else self._lookup(request.grant))
        with lookup as fd:
            if fd is None:
                log.info("region socket: %s presented a grant that opens no region", peer_name(conn))
                _reply(conn, RegionReply(RegionStatus.NOT_FOUND,
                                         "no open region has this grant: the daemon closed the "
                                         "region or restarted; register the namespace again"))
            elif request.op is RegionOp.CHECK:
                _reply(conn, RegionReply(RegionStatus.OK))
            else:
                socket.send_fds(conn, [RegionReply(RegionStatus.OK).encode()], [fd])
                log.debug("region socket: sent a region to %s", peer_name(conn))


def _recv_exactly(conn: socket.socket, num_bytes: int) -> bytes:
    data = bytearray()
    while len(data) < num_bytes:
        chunk = conn.recv(num_bytes - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _reply(conn: socket.socket, reply: RegionReply) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(reply.encode())
