"""The client's session with the daemon: one ``Session`` stream per client, opened on first need.

The daemon ends every lease taken under a session id when that stream ends, so a worker that
crashes (or whose connection breaks) never pins pages. Lease RPCs carry the id as metadata
``tierd-session``. If the stream ends while the client lives (daemon restart), the next lease
RPC opens a new session; leases of the old one are gone with it. ``ClientSession`` reads the
stream in a task of the async client's loop, ``SyncSession`` in a daemon thread.

Each stream's first event names the daemon run (``server_epoch``, 16 random bytes per start):
the session keeps it as ``epoch`` and calls ``on_epoch(epoch)`` when it changes (the first
session, a restarted daemon), so the client can drop mappings of a dead run's regions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from tierd.v1 import tierd_pb2 as pb
from tierd_client.convert import limits_from_wire
from tierd_client.errors import TierdRpcError, UnavailableError, from_grpc
from tierd_client.types import ServerLimits

log = logging.getLogger(__name__)

SESSION_METADATA_KEY = "tierd-session"
# How long close() waits for the reader thread of a cancelled stream.
_READER_JOIN_S = 5.0


def session_request(client_name: str) -> pb.SessionRequest:
    return pb.SessionRequest(client_name=client_name, client_pid=os.getpid())


def opened(first: pb.SessionEvent | None) -> tuple[str, ServerLimits | None]:
    """The session id and limits of a stream's first event (``None``: it ended before one)."""
    if first is None or not first.session_id:
        raise TierdRpcError("the daemon closed the Session stream without a session id",
                            code=grpc.StatusCode.UNAVAILABLE, rpc="Session")
    limits = limits_from_wire(first.limits) if first.HasField("limits") else None
    return first.session_id, limits


def epoch_of(first: pb.SessionEvent | None) -> bytes:
    """The daemon run's epoch in a stream's first event (``b""`` from a daemon that sends none)."""
    return b"" if first is None else bytes(first.server_epoch)


class _EpochTracker:
    """The current daemon run's epoch and who is told when it changes (a client callback)."""

    def __init__(self, on_epoch: Callable[[bytes], None] | None) -> None:
        self._on_epoch = on_epoch
        self.epoch = b""

    def observe(self, epoch: bytes) -> None:
        if not epoch or epoch == self.epoch:
            return
        self.epoch = epoch
        if self._on_epoch is not None:
            self._on_epoch(epoch)


def session_metadata(session_id: str) -> tuple[tuple[str, str], ...]:
    return ((SESSION_METADATA_KEY, session_id),)


def session_lost(exc: grpc.RpcError, still_open: bool, rpc: str) -> UnavailableError | None:
    """NOT_FOUND for a lease RPC whose session has ended since it was sent: the daemon
    restarted and knows neither the session nor its leases. UNAVAILABLE (retried, in a new
    session); ``None`` for any other error (raise it as it is)."""
    if exc.code() == grpc.StatusCode.NOT_FOUND and not still_open:
        return UnavailableError(f"the session ended ({exc.details()})", rpc=rpc)
    return None


def _log_end(session_id: str, exc: BaseException | None) -> None:
    """The stream's end is an expected event: logged, never raised."""
    if exc is None:
        log.info("tierd ended session %s; its leases are released", session_id)
    elif isinstance(exc, grpc.RpcError):
        if exc.code() != grpc.StatusCode.CANCELLED:
            log.warning("tierd session %s ended: %s", session_id, from_grpc(exc, "Session"))
    else:
        log.error("tierd session %s reader failed", session_id, exc_info=exc)


def _closed_error() -> TierdRpcError:
    return TierdRpcError("the client is closed", code=grpc.StatusCode.CANCELLED)


class ClientSession:
    """Owns one ``Session`` stream and its reader task; lives on the client's event loop."""

    def __init__(self, open_stream: Callable[[pb.SessionRequest], Any], client_name: str,
                 retry: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]],
                 on_epoch: Callable[[bytes], None] | None = None) -> None:
        """``open_stream(request)`` starts the RPC; ``retry(name, attempt)`` runs ``attempt``
        with the client's UNAVAILABLE backoff; ``on_epoch(epoch)`` runs on the loop when a new
        stream names another daemon run than the last one."""
        self._epochs = _EpochTracker(on_epoch)
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

    @property
    def epoch(self) -> bytes:
        """The epoch of the daemon run last reached (``b""`` before the first session)."""
        return self._epochs.epoch

    def _alive(self) -> bool:
        return bool(self._session_id) and self._reader is not None and not self._reader.done()

    def is_open(self, session_id: str) -> bool:
        """Whether ``session_id`` is still this client's open session (its stream has not ended)."""
        return self._alive() and session_id == self._session_id

    async def metadata(self) -> tuple[tuple[str, str], ...]:
        """``(("tierd-session", id),)`` of a live session, opening one if needed."""
        if self._alive() and not self._closed:
            return session_metadata(self._session_id)
        async with self._lock:
            if self._closed:
                raise _closed_error()
            if not self._alive():
                await self._retry("Session", self._open)
            return session_metadata(self._session_id)

    async def _open(self) -> None:
        call = self._open_stream(session_request(self._client_name))
        try:
            read = await call.read()
            first = None if read is grpc.aio.EOF else read
            session_id, limits = opened(first)
        except (grpc.RpcError, TierdRpcError):
            call.cancel()
            raise
        self._epochs.observe(epoch_of(first))
        self._call = call
        self._session_id = session_id
        self._limits = limits or self._limits
        self._reader = asyncio.get_running_loop().create_task(
            self._read_heartbeats(call, session_id), name=f"tierd-session-{session_id}")
        log.debug("opened tierd session %s", session_id)

    async def _read_heartbeats(self, call: Any, session_id: str) -> None:
        # Task boundary: the stream's end is an expected event, logged, never raised.
        try:
            # read() rather than `async for`: grpc.aio forbids mixing the two on one call.
            while await call.read() is not grpc.aio.EOF:
                pass
            _log_end(session_id, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log_end(session_id, exc)

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


@dataclass
class _Stream:
    """One open Session stream of a ``SyncSession`` and the thread reading it."""

    call: Any
    session_id: str
    metadata: tuple[tuple[str, str], ...]
    ended: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    def alive(self) -> bool:
        return not self.ended.is_set()


class SyncSession:
    """The blocking client's session: its stream is read by a daemon thread. Thread-safe; a live
    session's metadata costs no lock."""

    def __init__(self, open_stream: Callable[[pb.SessionRequest], Any], client_name: str,
                 retry: Callable[[str, Callable[[], None]], None],
                 on_epoch: Callable[[bytes], None] | None = None) -> None:
        """As ``ClientSession``, with blocking ``open_stream`` and ``retry`` (``on_epoch`` runs
        in the thread that opens the stream, under the session's lock)."""
        self._epochs = _EpochTracker(on_epoch)
        self._open_stream = open_stream
        self._client_name = client_name
        self._retry = retry
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self._limits: ServerLimits | None = None
        self._closed = False

    @property
    def session_id(self) -> str:
        """The current id, or ``""`` when no session is open."""
        stream = self._stream
        return stream.session_id if stream is not None and stream.alive() else ""

    @property
    def limits(self) -> ServerLimits | None:
        return self._limits

    @property
    def epoch(self) -> bytes:
        """The epoch of the daemon run last reached (``b""`` before the first session)."""
        return self._epochs.epoch

    def is_open(self, session_id: str) -> bool:
        """Whether ``session_id`` is still this client's open session (its stream has not ended)."""
        stream = self._stream
        return stream is not None and stream.alive() and stream.session_id == session_id

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """``(("tierd-session", id),)`` of a live session, opening one if needed."""
        stream = self._stream
        if stream is not None and stream.alive():
            return stream.metadata
        with self._lock:
            if self._closed:
                raise _closed_error()
            if self._stream is None or not self._stream.alive():
                self._retry("Session", self._open)
            assert self._stream is not None
            return self._stream.metadata

    def _open(self) -> None:
        call = self._open_stream(session_request(self._client_name))
        try:
            first = next(call, None)
            session_id, limits = opened(first)
        except (grpc.RpcError, TierdRpcError):
            call.cancel()
            raise
        self._epochs.observe(epoch_of(first))
        stream = _Stream(call, session_id, session_metadata(session_id))
        stream.reader = threading.Thread(target=self._read_heartbeats, args=(stream,),
                                         name=f"tierd-session-{session_id}", daemon=True)
        self._limits = limits or self._limits
        self._stream = stream
        stream.reader.start()
        log.debug("opened tierd session %s", session_id)

    @staticmethod
    def _read_heartbeats(stream: _Stream) -> None:
        # Thread boundary: the stream's end is an expected event, logged, never raised.
        try:
            for _event in stream.call:
                pass
            _log_end(stream.session_id, None)
        except Exception as exc:
            _log_end(stream.session_id, exc)
        finally:
            stream.ended.set()

    def close(self) -> None:
        """End the session (the daemon releases its leases); idempotent."""
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.call.cancel()
            if stream.reader is not None and stream.reader is not threading.current_thread():
                stream.reader.join(_READER_JOIN_S)
