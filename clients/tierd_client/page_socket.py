"""The client side of the page socket (``tierd.page_wire``): byte-path gets and puts without gRPC.

A daemon on this machine names its page socket and its run's epoch in every Register answer
(``NamespaceHandle.page_socket``). A client keeps idle connections to it, one taken per call (so
threads never share one and no call waits on a lock), and sends each GetPages / PutPages call as
one frame: page bytes go from the caller's buffers to the kernel and from the kernel into the
pages returned, with no message framing, chunking or reassembly copies.

A socket that cannot be reached, answers another daemon run's epoch, or is busy is not an error:
``PageSockets.connection`` answers ``None`` and the call goes over gRPC (the same limits, checks
and errors). A connection that breaks during a call is dropped and the call goes over gRPC too
(gets and puts may be repeated). The daemon's answers to a request it refused (a namespace of
another tenant, a full tier) are raised as the ``TierdRpcError`` gRPC would have given.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from tierd.errors import InvalidArgument
from tierd.page_wire import (
    MAX_TEXT_BYTES,
    REPLY_HEAD_BYTES,
    STATUS_OK,
    PageOp,
    ReplyFlag,
    ReplyHead,
    RequestFlag,
    RequestHead,
    decode_ticket,
    send_frame,
    set_kernel_timeout,
)
from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd_client.errors import DeadlineExceededError, TierdRpcError, error_for
from tierd_client.requests import Call, PutBatch
from tierd_client.types import PageSocketAddress

log = logging.getLogger(__name__)

_CODES = {code.value[0]: code for code in grpc.StatusCode}
# Idle connections kept per daemon address; more are closed when given back.
MAX_IDLE_CONNECTIONS = 16


@dataclass(frozen=True)
class PutReply:
    """What a PUT stored: ``num_stored``, ``num_skipped`` (cached already), ``ticket`` (0: none)."""

    num_stored: int
    num_skipped: int
    ticket: int


class PageSocketBroken(Exception):
    """The connection broke or answered nonsense: drop it; the call goes over gRPC."""


class HelloRefused(PageSocketBroken):
    """The daemon turned the connection away (``code``: UNAVAILABLE when it is busy)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


def _refusal(head: ReplyHead, message: bytes, rpc: str) -> TierdRpcError:
    code = _CODES.get(head.status, grpc.StatusCode.UNKNOWN)
    return error_for(code, message.decode("utf-8", "replace"), rpc)


def _get_frame(ns_id: int, keys: Sequence[bytes]) -> list[bytes | memoryview]:
    return [RequestHead(PageOp.GET, ns_id, len(keys)).encode(), b"".join(keys)]


def _put_frame(ns_id: int, tier: Tier, keys: Sequence[bytes], pages: Sequence[memoryview],
               parent: bytes | None) -> list[bytes | memoryview]:
    flags = RequestFlag.HAS_PARENT if parent is not None else RequestFlag.NONE
    payload_bytes = sum(len(page) for page in pages)
    head = RequestHead(PageOp.PUT, ns_id, len(keys), payload_bytes, int(tier), flags)
    return [head.encode(), b"".join(keys), parent or b"", *pages]


def _reply_head(data: bytes | bytearray) -> ReplyHead:
    try:
        head = ReplyHead.decode(data)
    except InvalidArgument as exc:
        raise PageSocketBroken(str(exc)) from None
    if head.status != STATUS_OK and head.payload_bytes > MAX_TEXT_BYTES:
        raise PageSocketBroken(f"a refusal of {head.payload_bytes} bytes")
    return head


class PageConnection:
    """One blocking connection, authenticated; used by one thread at a time."""

    def __init__(self, address: PageSocketAddress, token: str, timeout_s: float) -> None:
        self.address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout_s)
            self._sock.connect(address.path)
            # Blocking with kernel timeouts (not Python's): MSG_WAITALL then fills a page in one call.
            self._sock.settimeout(None)
            for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
                set_kernel_timeout(self._sock, option, max(1, int(timeout_s)))
            send_frame(self._sock, [RequestHead(PageOp.HELLO, payload_bytes=len(token)).encode(), token.encode()])
            head = self._head()
            epoch = self._recv(head.payload_bytes)
            if head.status != STATUS_OK:
                refusal = _refusal(head, epoch, "page socket")
                raise HelloRefused(refusal.code, refusal.details)
            if epoch != address.epoch:
                raise PageSocketBroken("another daemon run serves it")
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def _recv(self, num_bytes: int) -> bytes:
        data = self._sock.recv(num_bytes, socket.MSG_WAITALL) if num_bytes else b""
        if len(data) == num_bytes:
            return data  # the usual case: the bytes object is the page, no copy
        parts = [data]
        got = len(data)
        while got < num_bytes:
            chunk = self._sock.recv(num_bytes - got, socket.MSG_WAITALL)
            if not chunk:
                raise PageSocketBroken("the daemon closed the connection")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _head(self) -> ReplyHead:
        return _reply_head(self._recv(REPLY_HEAD_BYTES))

    def get(self, ns_id: int, keys: Sequence[bytes], page_bytes: int) -> list[bytes]:
        """The pages of the longest cached prefix of ``keys``."""
        send_frame(self._sock, _get_frame(ns_id, keys))
        pages: list[bytes] = []
        while True:
            head = self._head()
            if head.status != STATUS_OK:
                raise _refusal(head, self._recv(head.payload_bytes), "GetPages")
            if head.value != page_bytes or head.payload_bytes != head.count * page_bytes \
                    or len(pages) + head.count > len(keys):
                raise PageSocketBroken(f"a GET answer of {head.count} pages of {head.value} bytes")
            pages.extend(self._recv(page_bytes) for _ in range(head.count))
            if not head.flags & ReplyFlag.MORE:
                return pages

    def put(self, ns_id: int, tier: Tier, keys: Sequence[bytes], pages: Sequence[memoryview],
            parent: bytes | None) -> PutReply:
        send_frame(self._sock, _put_frame(ns_id, tier, keys, pages, parent))
        head = self._head()
        payload = self._recv(head.payload_bytes)
        if head.status != STATUS_OK:
            raise _refusal(head, payload, "PutPages")
        return PutReply(head.count, head.value, _ticket(payload))


def _ticket(payload: bytes) -> int:
    try:
        return decode_ticket(payload)
    except InvalidArgument as exc:
        raise PageSocketBroken(str(exc)) from None


class PageSockets:
    """The page-socket connections of one client: idle ones per address, addresses that failed.

    Connections are taken and given back through deques (atomic in CPython), so concurrent
    calls share no lock. ``close`` closes the idle ones; one in use is closed when given back.
    """

    def __init__(self, token: str, timeout_s: float) -> None:
        self._token = token
        self._timeout_s = timeout_s
        self._idle: dict[PageSocketAddress, collections.deque[PageConnection]] = {}
        self._unusable: set[PageSocketAddress] = set()
        self._closed = False
        self.calls = 0      # answered over the page socket
        self.fallbacks = 0  # sent over gRPC instead

    def connection(self, address: PageSocketAddress | None) -> PageConnection | None:
        """An idle or new connection to ``address``; ``None``: use gRPC for this call."""
        if address is None or self._closed or address in self._unusable:
            return None
        idle = self._idle.setdefault(address, collections.deque())
        with contextlib.suppress(IndexError):
            return idle.pop()
        try:
            return PageConnection(address, self._token, self._timeout_s)
        except (OSError, PageSocketBroken) as exc:
            if not _is_busy(exc):
                self._unusable.add(address)  # until the namespace is registered again
            log.debug("page socket %s not used: %s", address.path, exc)
            return None

    def give_back(self, conn: PageConnection) -> None:
        idle = self._idle.setdefault(conn.address, collections.deque())
        if self._closed or len(idle) >= MAX_IDLE_CONNECTIONS:
            conn.close()
        else:
            idle.append(conn)

    def drop(self, conn: PageConnection, exc: BaseException) -> None:
        log.debug("page socket connection to %s dropped: %s", conn.address.path, exc)
        conn.close()

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, HelloRefused) and exc.code is grpc.StatusCode.UNAVAILABLE


def page_request(call: Call) -> PageRequest | None:
    """What ``call`` (GetPages or PutPages) sends over the page socket; ``None``: it cannot."""
    if call.page_socket is None:
        return None
    if call.rpc == "GetPages":
        return PageRequest(call.page_socket, call.rpc, call.request.ns_id, list(call.request.keys),
                           page_bytes=call.page_bytes)
    if call.rpc == "PutPages":
        put: PutBatch = call.request
        return PageRequest(call.page_socket, call.rpc, put.ns_id, put.keys, put.pages, put.tier,
                           put.parent)
    return None


@dataclass(frozen=True)
class PageRequest:
    """One GetPages (``page_bytes``) or PutPages (``pages``, ``tier``, ``parent``) call."""

    address: PageSocketAddress
    rpc: str
    ns_id: int
    keys: Sequence[bytes]
    pages: Sequence[memoryview] = ()
    tier: Tier = Tier.DRAM
    parent: bytes | None = None
    page_bytes: int = 0

    def answer(self, conn: PageConnection) -> list[bytes] | pb.PutPagesResponse:
        """The answer the call's steps expect (as GetPages / PutPages over gRPC would give)."""
        if self.rpc == "GetPages":
            return conn.get(self.ns_id, self.keys, self.page_bytes)
        reply = conn.put(self.ns_id, self.tier, self.keys, self.pages, self.parent)
        response = pb.PutPagesResponse(num_stored=reply.num_stored, num_skipped=reply.num_skipped)
        if reply.ticket:
            response.durable_ticket = reply.ticket
        return response


def run_blocking(sockets: PageSockets, request: PageRequest) -> list[bytes] | pb.PutPagesResponse | None:
    """``request`` over the page socket; ``None`` when it must go over gRPC instead."""
    conn = sockets.connection(request.address)
    if conn is None:
        sockets.fallbacks += 1
        return None
    rpc = request.rpc
    try:
        answer = request.answer(conn)
    except TierdRpcError:
        sockets.calls += 1
        sockets.give_back(conn)  # refused: the frame was read whole, the connection is sound
        raise
    except (OSError, PageSocketBroken) as exc:
        sockets.drop(conn, exc)
        if isinstance(exc, TimeoutError | BlockingIOError):
            raise DeadlineExceededError(f"the page socket did not answer {rpc} in time",
                                        rpc=rpc) from None
        sockets.fallbacks += 1
        return None
    sockets.calls += 1
    sockets.give_back(conn)
    return answer


async def run_async(sockets: PageSockets,
                    request: PageRequest) -> list[bytes] | pb.PutPagesResponse | None:
    """``run_blocking`` for an event loop: the exchange runs on a worker thread (it blocks)."""
    return await asyncio.to_thread(run_blocking, sockets, request)
