"""The client's session with the daemon: one ``Session`` stream per client, opened on first need.

The daemon ends every lease taken under a session id when that stream ends, so a worker that
crashes (or whose connection breaks) never pins pages. Lease RPCs carry the id as metadata
``tierd-session``. If the stream ends while the client lives (daemon restart), the next lease
RPC opens a new session; leases of the old one are gone with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from tierd.v1 import tierd_pb2 as pb
from tierd_client.convert import limits_from_wire
from tierd_client.errors import TierdRpcError, from_grpc
from tierd_client.types import ServerLimits

log = logging.getLogger(__name__)

SESSION_METADATA_KEY = "tierd-session"


class ClientSession:
    """Owns one ``Session`` stream and its reader task; lives on the client's event loop."""

    def __init__(self, open_stream: Callable[[pb.SessionRequest], Any], client_name: str,
                 retry: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]) -> None:
        """``open_stream(request)`` starts the RPC; ``retry(name, attempt)`` runs ``attempt``
        with the client's UNAVAILABLE backoff."""
        self._open_stream = open_stream
        self._client_name = client_name
        self._retry = retry
        self._lock = asyncio.Lock()
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._session_id = ""
        self._limits: ServerLimits | None = None
        self._closed = False

    @property
    def session_id(self) -> str:
        """The current id, or ``""`` when no session is open."""
        return self._session_id if self._alive() else ""

    @property
    def limits(self) -> ServerLimits | None:
        return self._limits

    def _alive(self) -> bool:
        return bool(self._session_id) and self._reader is not None and not self._reader.done()

    def is_open(self, session_id: str) -> bool:
        """Whether ``session_id`` is still this client's open session (its stream has not ended)."""
        return self._alive() and session_id == self._session_id

    async def metadata(self) -> tuple[tuple[str, str], ...]:
        """``(("tierd-session", id),)`` of a live session, opening one if needed."""
        async with self._lock:
            if self._closed:
                raise TierdRpcError("the client is closed", code=grpc.StatusCode.CANCELLED)
            if not self._alive():
                await self._retry("Session", self._open)
            return ((SESSION_METADATA_KEY, self._session_id),)

    async def _open(self) -> None:
        request = pb.SessionRequest(client_name=self._client_name, client_pid=os.getpid())
        call = self._open_stream(request)
        try:
            first = await call.read()
        except grpc.RpcError:
            call.cancel()
            raise
        if first is grpc.aio.EOF or not first.session_id:
            call.cancel()
            raise TierdRpcError("the daemon closed the Session stream without a session id",
                                code=grpc.StatusCode.UNAVAILABLE, rpc="Session")
        self._call = call
        self._session_id = first.session_id
        if first.HasField("limits"):
            self._limits = limits_from_wire(first.limits)
        self._reader = asyncio.get_running_loop().create_task(
            self._read_heartbeats(call, first.session_id), name=f"tierd-session-{first.session_id}")
        log.debug("opened tierd session %s", first.session_id)

    async def _read_heartbeats(self, call: Any, session_id: str) -> None:
        # Task boundary: the stream's end is an expected event, logged, never raised.
        try:
            # read() rather than `async for`: grpc.aio forbids mixing the two on one call.
            while await call.read() is not grpc.aio.EOF:
                pass
            log.info("tierd ended session %s; its leases are released", session_id)
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                log.warning("tierd session %s ended: %s", session_id, from_grpc(exc, "Session"))
        except Exception:
            log.exception("tierd session %s reader failed", session_id)

    async def close(self) -> None:
        """End the session (the daemon releases its leases); idempotent."""
        async with self._lock:
            self._closed = True
            call, self._call = self._call, None
            reader, self._reader = self._reader, None
            self._session_id = ""
        if call is not None:
            call.cancel()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
