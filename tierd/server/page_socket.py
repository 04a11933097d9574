"""The page socket: the byte path (get and put of page bytes) on a unix socket of its own, outside gRPC.

gRPC's transport costs a 2 MiB page several copies and tens of context switches; here a page
is one frame (``tierd.page_wire``) that the kernel moves between the daemon's buffer and the
client's. What is served, and checked, is ``PageService``'s; this owns the listening socket,
the accept thread and one thread per connection (connections are long-lived: a client keeps
one per thread that calls it). At most ``max_connections`` at once; more are answered
UNAVAILABLE and closed, and the client then uses GetPages/PutPages. The socket's mode is the
gRPC socket's. ``start``/``close`` are idempotent; ``close`` ends every connection (a request
in progress finishes its store call first) and removes the socket file.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from tierd.page_wire import error_reply, send_frame, set_kernel_timeout
from tierd.server.page_service import PageService
from tierd.server.unix_listener import UnixListener
from tierd.server.unix_socket import peer_name

log = logging.getLogger(__name__)

SETTING_NAME = "server.page_socket"


@dataclass(frozen=True)
class PageSocketSettings:
    """Where and how: ``path`` gets ``mode``; ``send_buffer_bytes`` is asked of the kernel for
    each connection (it may give less: ``net.core.wmem_max``); a client that reads nothing of an
    answer for ``send_timeout_s`` loses its connection (the pages sent from stay pinned meanwhile)."""

    path: Path
    mode: int = 0o660
    max_connections: int = 256
    send_buffer_bytes: int = 4 << 20
    send_timeout_s: int = 30


class PageSocket:
    """Serves ``service`` on a unix socket. Owns the socket, its threads and their connections."""

    def __init__(self, settings: PageSocketSettings, service: PageService) -> None:
        self._settings = settings
        self._service = service
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._listener = UnixListener(settings.path, settings.mode, SETTING_NAME, self._dispatch,
                                      "tierd-page-accept")
        self._started = False

    @property
    def path(self) -> Path:
        return self._settings.path

    @property
    def num_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def start(self) -> None:
        """Bind (``ConfigError`` if another process serves the path), then accept on a thread."""
        self._listener.start()
        if not self._started:
            self._started = True
            log.info("page socket on %s", self._settings.path)

    def close(self) -> None:
        """Stop accepting, end every connection, remove the socket file."""
        self._listener.close()  # no connection is added after this
        with self._lock:
            conns = dict(self._conns)
        for conn in conns:  # wakes a thread blocked in recv; a store call runs to its end first
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for conn_thread in conns.values():
            conn_thread.join()

    def __enter__(self) -> PageSocket:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _dispatch(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._settings.send_buffer_bytes)
        set_kernel_timeout(conn, socket.SO_SNDTIMEO, self._settings.send_timeout_s)
        thread = threading.Thread(target=self._serve, args=(conn,), name="tierd-page-conn",
                                  daemon=True)
        with self._lock:
            busy = len(self._conns) >= self._settings.max_connections
            if not busy:
                self._conns[conn] = thread
        if busy:
            with contextlib.suppress(OSError):
                send_frame(conn, [error_reply(grpc.StatusCode.UNAVAILABLE.value[0],
                                              f"the page socket serves {self._settings.max_connections} "
                                              "connections already; use GetPages/PutPages or retry")])
            conn.close()
            return
        thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._service.serve(conn)
        except OSError as exc:  # the peer went away mid-request
            log.debug("page socket connection of %s ended early: %s", peer_name(conn), exc)
        except Exception:  # one bad connection must not take the socket down
            log.exception("page socket connection of %s failed", peer_name(conn))
        finally:
            with self._lock:
                self._conns.pop(conn, None)
