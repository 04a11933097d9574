"""RESP on one Redis connection: commands packed by hand, pipelined, replies read by the deadline.

``exchange`` sends a batch of packed commands on a connection of a redis-py pool and reads every
reply, error replies as values. When every command of the batch is an ``MGET head body`` with a
``sink`` (the page's buffer), the replies are read straight off the socket and each body is
received into its sink (``recv_into``): no parser buffer, no bytes object, no copy of the payload
(redis-py's parser would copy it twice before the caller copies it once more).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis

SMALL_CHUNK = 64 << 10           # small packed commands are sent in one write
READ_CHUNK = 64 << 10            # socket reads of reply headers and small values
ASKING = b"*1\r\n$6\r\nASKING\r\n"


def byte_view(view: memoryview) -> memoryview:
    """A flat unsigned-byte view, so lengths and slices count bytes whatever the caller's format."""
    view = memoryview(view)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


Chunk = bytes | memoryview


def pack(*args: Chunk) -> tuple[Chunk, ...]:
    """One command in RESP, as chunks to send: small arguments copied into the framing, large
    ones (``SMALL_CHUNK`` and up, page payloads) referenced as they are, never copied. The caller
    keeps them unchanged until the call returns (a write still under way when its deadline cut
    the call off may read them a little longer: the buffer stays alive, a change would only make
    the value fail its checksum)."""
    chunks: list[Chunk] = []
    run = [b"*%d\r\n" % len(args)]
    for arg in args:
        run.append(b"$%d\r\n" % len(arg))
        if len(arg) >= SMALL_CHUNK:
            chunks += (b"".join(run), arg)
            run = []
        else:
            run.append(bytes(arg))
        run.append(b"\r\n")
    chunks.append(b"".join(run))
    return tuple(chunks)


def coalesce(chunks: Sequence[Chunk]) -> list[Chunk]:
    """Join runs of small chunks (one write instead of one per command); large ones go as they are."""
    out: list[Chunk] = []
    run: list[Chunk] = []
    size = 0
    for chunk in chunks:
        if len(chunk) >= SMALL_CHUNK:
            if run:
                out.append(b"".join(run))
                run, size = [], 0
            out.append(chunk)
            continue
        run.append(chunk)
        size += len(chunk)
        if size >= SMALL_CHUNK:
            out.append(b"".join(run))
            run, size = [], 0
    if run:
        out.append(b"".join(run))
    return out


@dataclass(frozen=True)
class Cmd:
    """One packed command; ``target`` overrides the slot owner after a MOVED or ASK; ``sink``
    (``MGET head body`` only) is where the body is received."""

    key: bytes
    packet: tuple[Chunk, ...]
    target: tuple[str, int] | None = None
    asking: bool = False
    sink: memoryview | None = None


@dataclass(frozen=True)
class InSink:
    """A body received into its command's sink: the sink's first ``nbytes`` bytes hold it."""

    nbytes: int


def exchange(client: Redis, cmds: Sequence[Cmd], deadline: float) -> list[object]:
    """Pipeline ``cmds`` on one master's connection; error replies come back as values."""
    from redis.exceptions import TimeoutError as RedisTimeout

    if time.monotonic() >= deadline:
        raise RedisTimeout("deadline passed before the request was sent")
    pool = client.connection_pool
    conn: Any = pool.get_connection()   # redis-py's Connection is only partly annotated
    try:
        chunks: list[Chunk] = []
        for cmd in cmds:
            if cmd.asking:
                chunks.append(ASKING)
            chunks += cmd.packet
        conn.send_packed_command(coalesce(chunks), check_health=False)
        if all(cmd.sink is not None for cmd in cmds):
            return _read_into_sinks(conn, cmds, deadline)
        return _read_replies(conn, cmds, deadline)
    finally:
        pool.release(conn)


def _read_replies(conn: Any, cmds: Sequence[Cmd], deadline: float) -> list[object]:
    from redis.exceptions import ResponseError
    from redis.exceptions import TimeoutError as RedisTimeout

    replies: list[object] = []
    for cmd in cmds:
        for is_asking in (True, False) if cmd.asking else (False,):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                conn.disconnect()   # replies still in flight: the connection is out of step
                raise RedisTimeout(f"no reply from {conn.host}:{conn.port} by the deadline")
            try:
                reply = conn.read_response(timeout=remaining)
            except ResponseError as e:   # a whole error reply was read: still in step
                reply = e
            if not is_asking:
                replies.append(reply)
    return replies


def _read_into_sinks(conn: Any, cmds: Sequence[Cmd], deadline: float) -> list[object]:
    """The replies of ``MGET head body`` commands, each body received into its sink."""
    reader = _SocketReader(conn, deadline)
    try:
        replies: list[object] = []
        for cmd in cmds:
            if cmd.asking:
                reader.status()
            replies.append(reader.mget_into(cmd.sink))
        return replies
    except BaseException:
        conn.disconnect()   # a reply left half read: the connection is out of step
        raise
    finally:
        reader.restore_timeout()


class _SocketReader:
    """Reads RESP2 or RESP3 replies off a connection's socket (its parser's buffer is empty:
    redis-py's pool checks that a connection it hands out has no unread data)."""

    def __init__(self, conn: Any, deadline: float) -> None:
        self._conn = conn
        self._sock = conn._sock
        self._deadline = deadline
        self._buf = bytearray()
        self._scratch = bytearray(READ_CHUNK)

    def restore_timeout(self) -> None:
        if self._sock is not None and self._conn._sock is self._sock:
            self._sock.settimeout(self._conn.socket_timeout)

    def _recv_into(self, dst: memoryview) -> int:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeout

        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise RedisTimeout(f"no reply from {self._conn.host}:{self._conn.port} by the deadline")
        self._sock.settimeout(remaining)
        try:
            got: int = self._sock.recv_into(dst)
        except TimeoutError as e:
            raise RedisTimeout(f"no reply from {self._conn.host}:{self._conn.port} by the deadline") from e
        except OSError as e:
            raise RedisConnectionError(f"reading from {self._conn.host}:{self._conn.port}: {e}") from e
        if got == 0:
            raise RedisConnectionError(f"{self._conn.host}:{self._conn.port} closed the connection")
        return got

    def _more(self) -> None:
        got = self._recv_into(memoryview(self._scratch))
        self._buf += memoryview(self._scratch)[:got]

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            self._more()
        line = bytes(self._buf[:end])
        del self._buf[:end + 2]
        return line

    def _take(self, nbytes: int) -> bytes:
        while len(self._buf) < nbytes + 2:
            self._more()
        data = bytes(self._buf[:nbytes])
        del self._buf[:nbytes + 2]
        return data

    def _into(self, dst: memoryview) -> None:
        """``len(dst)`` bytes into ``dst`` (buffered ones first, the rest straight off the socket),
        then the CRLF after them."""
        have = min(len(self._buf), len(dst))
        dst[:have] = self._buf[:have]
        del self._buf[:have]
        while have < len(dst):
            have += self._recv_into(dst[have:])
        self._take(0)

    def _error(self, line: bytes) -> Exception:
        """The exception of an error reply: ``-MESSAGE`` (RESP2 and 3) or RESP3's ``!LENGTH``."""
        from redis._parsers.base import BaseParser

        message = self._take(int(line[1:])) if line[:1] == b"!" else line[1:]
        error: Exception = BaseParser.parse_error(  # type: ignore[no-untyped-call]
            message.decode("utf-8", "replace"))
        return error

    def status(self) -> None:
        """A simple reply (ASKING's ``+OK``); an error reply raises."""
        line = self._line()
        if line[:1] in b"-!":
            raise self._error(line)

    def mget_into(self, sink: memoryview | None) -> object:
        """``[head, body]`` of an ``MGET head body``: head ``bytes | None``; body ``InSink`` (it is
        in ``sink``), ``None``, or ``bytes`` when longer than the sink; an error reply as a value."""
        from redis.exceptions import InvalidResponse

        line = self._line()
        if line[:1] in b"-!":
            return self._error(line)
        if line != b"*2":
            raise InvalidResponse(f"MGET of two keys answered {line[:32]!r}")
        return [self._bulk(None), self._bulk(sink)]

    def _bulk(self, sink: memoryview | None) -> bytes | InSink | None:
        from redis.exceptions import InvalidResponse

        line = self._line()
        if line == b"_":  # RESP3's null
            return None
        if line[:1] != b"$":
            raise InvalidResponse(f"expected a bulk string, got {line[:32]!r}")
        nbytes = int(line[1:])
        if nbytes < 0:
            return None
        if sink is None or nbytes > len(sink):
            return self._take(nbytes)
        self._into(sink[:nbytes])
        return InSink(nbytes)
