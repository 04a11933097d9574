"""What the page socket serves on one connection: HELLO, then byte-path GETs and PUTs (``tierd.page_wire``).

Each request is checked as GetPages and PutPages are (tenant, namespace, ``max_keys_per_request``,
``max_get_bytes``, ``max_put_bytes``), and nothing is read before its size is known to be within
them. A GET hands the kernel the pages' own slots, ``chunk_bytes`` of pages at a time, pinned
while they are sent (``PageStore.read_pinned``: no copy in the daemon, and no page evicted,
overwritten or deleted mid-send); a PUT is received straight into one buffer and stored with
one ``put``. The caller (``PageSocket``) owns the connection and
its thread; this owns nothing.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

import grpc

from tierd.errors import InvalidArgument, TierdError, Unauthenticated
from tierd.keys import KEY_BYTES, PageKey, check_keys
from tierd.page_wire import (
    MAX_TEXT_BYTES,
    REQUEST_HEAD_BYTES,
    PageOp,
    ReplyFlag,
    ReplyHead,
    RequestFlag,
    RequestHead,
    encode_ticket,
    error_reply,
    send_frame,
)
from tierd.server.auth import AUTH_METADATA_KEY, Authenticator, Caller
from tierd.server.settings import ServingSettings
from tierd.server.status import status_code_of
from tierd.server.unix_socket import peer_name
from tierd.store import PageStore
from tierd.tier import MEMORY_TIERS, Tier

log = logging.getLogger(__name__)

# Bytes a connection reads ahead: a request's head and up to 4000 keys in one system call.
INBOX_BYTES = 64 << 10


class FrameError(InvalidArgument):
    """A frame the daemon cannot read on from (bad head, sizes past the limits): answered, then
    the connection is closed."""


class PeerGone(Exception):
    """The client closed the connection (between requests: its normal end)."""


def recv_into_exactly(conn: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``conn``; ``PeerGone`` if the peer closes first."""
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:], len(view) - got, socket.MSG_WAITALL)
        if n == 0:
            raise PeerGone
        got += n


class Inbox:
    """What a connection has received ahead of the request being read. A request's head and keys
    arrive in one send, so they are read with one system call; larger parts go straight from the
    socket into their destination."""

    def __init__(self, conn: socket.socket, capacity_bytes: int) -> None:
        self._conn = conn
        self._data = bytearray(capacity_bytes)
        self._view = memoryview(self._data)
        self._start = self._end = 0

    def take(self, num_bytes: int) -> bytes:
        """The next ``num_bytes``; ``PeerGone`` if the peer closes first."""
        if num_bytes > len(self._data):
            out = bytearray(num_bytes)
            self.fill(memoryview(out))
            return bytes(out)
        if self._end - self._start < num_bytes:
            kept = self._end - self._start
            self._data[:kept] = self._data[self._start:self._end]  # a copy: the ranges overlap
            self._start, self._end = 0, kept
            while self._end < num_bytes:
                got = self._conn.recv_into(self._view[self._end:])
                if got == 0:
                    raise PeerGone
                self._end += got
        out_bytes = bytes(self._view[self._start:self._start + num_bytes])
        self._start += num_bytes
        return out_bytes

    def fill(self, view: memoryview) -> None:
        """Fill ``view`` with the next bytes: what is here already, then from the socket."""
        here = min(len(view), self._end - self._start)
        view[:here] = self._view[self._start:self._start + here]
        self._start += here
        if here < len(view):
            recv_into_exactly(self._conn, view[here:])


@dataclass
class _Buffer:
    """The bytes a connection reuses across requests: at most ``keep_bytes`` are kept."""

    keep_bytes: int
    data: bytearray | None = None

    def view(self, num_bytes: int) -> memoryview:
        if num_bytes > self.keep_bytes:
            return memoryview(bytearray(num_bytes))  # freed after the request
        if self.data is None:
            self.data = bytearray(self.keep_bytes)
        return memoryview(self.data)[:num_bytes]


class PageService:
    """Serves page-socket connections of one ``PageStore``; loop-free, thread-safe (each
    connection on its own thread)."""

    def __init__(self, store: PageStore, settings: ServingSettings, epoch: bytes) -> None:
        self._store = store
        self._settings = settings
        self._auth = Authenticator(settings.tenant_tokens)
        self._epoch = epoch

    def serve(self, conn: socket.socket) -> None:
        """Answer requests on ``conn`` until the peer closes it or sends a malformed frame."""
        inbox = Inbox(conn, INBOX_BYTES)
        try:
            caller = self._hello(conn, inbox)
            if caller is None:
                return
            buffer = _Buffer(max(self._settings.chunk_bytes, 1))
            while True:
                head = RequestHead.decode(inbox.take(REQUEST_HEAD_BYTES))
                self._one(conn, inbox, head, caller, buffer)
        except PeerGone:
            return
        except FrameError as exc:
            log.info("page socket: closing the connection of %s: %s", peer_name(conn), exc)
            send_frame(conn, [error_reply(status_code_of(exc).value[0], str(exc))])
        except InvalidArgument as exc:  # RequestHead.decode
            log.info("page socket: closing the connection of %s: %s", peer_name(conn), exc)
            send_frame(conn, [error_reply(grpc.StatusCode.INVALID_ARGUMENT.value[0], str(exc))])
        except OSError:
            raise  # the peer went away mid-request: PageSocket notes it
        except Exception:  # a bug: the client gets INTERNAL, the log the traceback
            log.exception("page socket request of %s failed", peer_name(conn))
            send_frame(conn, [error_reply(grpc.StatusCode.INTERNAL.value[0], "internal error "
                                          "on the page socket; the daemon log has the traceback")])

    def _hello(self, conn: socket.socket, inbox: Inbox) -> Caller | None:
        head = RequestHead.decode(inbox.take(REQUEST_HEAD_BYTES))
        if head.op is not PageOp.HELLO or head.num_keys or head.payload_bytes > MAX_TEXT_BYTES:
            raise FrameError(f"a page socket connection starts with one HELLO carrying at most "
                             f"{MAX_TEXT_BYTES} bytes of token, got {head.op.name} with "
                             f"{head.num_keys} keys and {head.payload_bytes} bytes")
        token = inbox.take(head.payload_bytes).decode("utf-8", "replace")
        metadata = [(AUTH_METADATA_KEY, f"Bearer {token}")] if token else []
        try:
            caller = self._auth.caller(metadata)
        except Unauthenticated as exc:
            log.info("page socket: %s refused: %s", peer_name(conn), exc)
            send_frame(conn, [error_reply(grpc.StatusCode.UNAUTHENTICATED.value[0], str(exc))])
            return None
        send_frame(conn, [ReplyHead(payload_bytes=len(self._epoch)).encode(), self._epoch])
        return caller

    def _one(self, conn: socket.socket, inbox: Inbox, head: RequestHead, caller: Caller,
             buffer: _Buffer) -> None:
        """One request, answered; a ``TierdError`` of the store or the checks becomes its reply."""
        if head.op is PageOp.HELLO:
            raise FrameError("HELLO comes once, first on a connection")
        if head.num_keys > self._settings.max_keys_per_request:
            raise FrameError(f"a page request carries {head.num_keys} keys; at most "
                             f"{self._settings.max_keys_per_request} (server.max_keys_per_request)")
        limit = self._settings.max_put_bytes if head.op is PageOp.PUT else 0
        if head.payload_bytes > limit:
            raise FrameError(f"a {head.op.name} carries {head.payload_bytes} bytes of payload; at "
                             f"most {limit} (server.max_put_bytes for PUT, none for GET)")
        raw_keys = inbox.take(head.keys_bytes)
        try:
            if head.op is PageOp.GET:
                self._get(conn, head, caller, raw_keys)
            else:
                self._put(conn, inbox, head, caller, raw_keys, buffer)
        except TierdError as exc:
            log.debug("page socket %s rejected: %s", head.op.name, exc)
            send_frame(conn, [error_reply(status_code_of(exc).value[0], str(exc))])

    def _checked(self, head: RequestHead, caller: Caller, raw_keys: bytes) -> tuple[list[PageKey], int]:
        """The request's keys and its namespace's page size, once the caller may use it."""
        ns = self._store.namespace(head.ns_id)
        caller.check_namespace(ns)
        keys = check_keys([raw_keys[i * KEY_BYTES:(i + 1) * KEY_BYTES] for i in range(head.num_keys)])
        return keys, ns.page_bytes

    def _get(self, conn: socket.socket, head: RequestHead, caller: Caller, raw_keys: bytes) -> None:
        keys, page_bytes = self._checked(head, caller, raw_keys)
        limit = self._settings.max_get_bytes
        if len(keys) * page_bytes > limit:
            raise InvalidArgument(
                f"a GET asks for {len(keys)} pages of {page_bytes} bytes; one request may ask for "
                f"at most {limit // page_bytes} (server.max_get_bytes = {limit}): split it")
        per_frame = max(1, self._settings.chunk_bytes // page_bytes)
        done = 0
        while True:
            group = keys[done:done + per_frame]
            # Resident pages go from their pinned slots to the kernel: no copy in the daemon.
            with self._store.read_pinned(head.ns_id, group) as pages:
                got = len(pages)
                done += got
                more = got == len(group) and done < len(keys)
                reply = ReplyHead(count=got, value=page_bytes, payload_bytes=got * page_bytes,
                                  flags=ReplyFlag.MORE if more else ReplyFlag.NONE)
                send_frame(conn, [reply.encode(), *pages])
            if not more:
                return

    def _put(self, conn: socket.socket, inbox: Inbox, head: RequestHead, caller: Caller,
             raw_keys: bytes, buffer: _Buffer) -> None:
        payload = buffer.view(head.payload_bytes)
        inbox.fill(payload)  # first: a refused PUT leaves the connection usable
        keys, page_bytes = self._checked(head, caller, raw_keys[:head.num_keys * KEY_BYTES])
        parent = (check_keys([raw_keys[-KEY_BYTES:]])[0]
                  if head.flags & RequestFlag.HAS_PARENT else None)
        if head.tier not in (int(tier) for tier in MEMORY_TIERS):
            raise InvalidArgument(f"a PUT targets a memory tier ({', '.join(t.label for t in MEMORY_TIERS)}), "
                                  f"not tier value {head.tier}")
        if head.payload_bytes != len(keys) * page_bytes:
            raise InvalidArgument(f"a PUT carried {head.payload_bytes} bytes for {len(keys)} keys "
                                  f"of {page_bytes}-byte pages; expected {len(keys) * page_bytes}")
        pages = [payload[i * page_bytes:(i + 1) * page_bytes] for i in range(len(keys))]
        result = self._store.put(head.ns_id, keys, pages, Tier(head.tier), parent)
        ticket = encode_ticket(result.durable_ticket)
        send_frame(conn, [ReplyHead(count=result.stored, value=result.skipped,
                                    payload_bytes=len(ticket)).encode(), ticket])
