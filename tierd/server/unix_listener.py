"""A listening unix socket and the thread that accepts on it: what the region and page sockets share.

``on_accept(conn)`` runs on the accept thread for each connection and must not block (it hands
the connection to a pool or a thread of its own). ``start``/``close`` are idempotent; ``close``
stops accepting, closes the socket and removes its file if it is still this listener's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from tierd.server.unix_socket import listen_unix

log = logging.getLogger(__name__)


class UnixListener:
    """Owns the listening socket at ``path`` (mode ``mode``; errors name ``setting``) and its thread."""

    def __init__(self, path: Path, mode: int, setting: str,
                 on_accept: Callable[[socket.socket], None], thread_name: str) -> None:
        self._path = path
        self._mode = mode
        self._setting = setting
        self._on_accept = on_accept
        self._thread_name = thread_name
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._inode = 0
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        """Bind (``ConfigError`` if another process serves the path), then accept on a thread."""
        with self._lock:
            if self._listener is not None or self._closed:
                return
            self._listener = listen_unix(self._path, self._mode, self._setting)
            self._inode = os.stat(self._path).st_ino
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(target=self._accept_loop, args=(self._listener,),
                                            name=self._thread_name, daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop accepting (``on_accept`` is not called again) and remove the socket file."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            listener, thread = self._listener, self._thread
        if listener is None or thread is None:
            return
        os.write(self._wake_w, b"x")
        thread.join()
        listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self._path).st_ino == self._inode:
                os.unlink(self._path)

    def _accept_loop(self, listener: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                events = selector.select()
                if any(key.fd == self._wake_r for key, _ in events):
                    return
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue  # the peer gave up between select and accept
                try:
                    self._on_accept(conn)
                except Exception:  # one connection's trouble must not stop the accepting
                    log.exception("handing over a connection on %s failed", self._path)
                    conn.close()
