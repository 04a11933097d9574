"""The page socket's protocol: byte-path gets and puts as binary frames, outside gRPC.

A shared module (the daemon serves it, ``tierd_client.page_socket`` speaks it): the frames'
values, and how both ends put them on a socket (``send_frame``, ``set_kernel_timeout``). A
connection carries many requests, one at a time; every integer is little-endian::

    request  MAGIC | op (1) | tier (1) | flags (2) | num_keys (4) | ns_id (8) | payload_bytes (8)
             then num_keys keys of KEY_BYTES, then (PUT with HAS_PARENT) the parent key,
             then payload_bytes of payload
    reply    MAGIC | status (1) | 0 (1) | flags (2) | count (4) | value (8) | payload_bytes (8)
             then payload_bytes of payload

The first request of a connection is ``HELLO`` (payload: the tenant token, UTF-8, empty on a
daemon without tenants); its reply's payload is the daemon run's epoch (``RegionHandle.epoch``),
so a client tells this daemon from another one serving the same path. ``GET``'s answer is one or
more frames of whole pages (``count`` pages of ``value`` bytes each; ``MORE``: another follows):
the pages of the longest cached prefix of the keys, in order. ``PUT``'s payload is one page per
key; its answer's ``count`` is the pages stored, ``value`` those skipped (already cached), and its
payload the durability ticket (8 bytes; 0: nothing was queued for disk). ``status`` is a gRPC
status code (0: OK); a failed request's payload is its message (UTF-8) and the connection stays
usable, except after a malformed frame, when the daemon closes it.
"""

from __future__ import annotations

import enum
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from tierd.errors import InvalidArgument
from tierd.keys import KEY_BYTES

MAGIC = b"TPG1"
# A HELLO's token and a failed request's message are at most this long.
MAX_TEXT_BYTES = 4096
TICKET_BYTES = 8
STATUS_OK = 0
_REQUEST = struct.Struct("<4sBBHIQQ")
_REPLY = struct.Struct("<4sBxHIQQ")
_TICKET = struct.Struct("<Q")
_TIMEVAL = struct.Struct("@ll")  # struct timeval: seconds, microseconds
REQUEST_HEAD_BYTES = _REQUEST.size
REPLY_HEAD_BYTES = _REPLY.size


class PageOp(enum.IntEnum):
    HELLO = 1  # authenticate the connection; the reply carries the daemon's epoch
    GET = 2    # the pages of the longest cached prefix of the keys
    PUT = 3    # store one page per key


class RequestFlag(enum.IntFlag):
    NONE = 0
    HAS_PARENT = 1  # PUT: the key of the page before keys[0] follows the keys


class ReplyFlag(enum.IntFlag):
    NONE = 0
    MORE = 1  # GET: another frame of pages follows this one


@dataclass(frozen=True)
class RequestHead:
    """A request's fixed part. ``tier``: ``tierd.tier.Tier`` value (PUT); ``payload_bytes``: what
    follows the keys (and parent)."""

    op: PageOp
    ns_id: int = 0
    num_keys: int = 0
    payload_bytes: int = 0
    tier: int = 0
    flags: RequestFlag = RequestFlag.NONE

    @property
    def keys_bytes(self) -> int:
        """Bytes of keys (and parent key) between the head and the payload."""
        parent = KEY_BYTES if self.flags & RequestFlag.HAS_PARENT else 0
        return self.num_keys * KEY_BYTES + parent

    def encode(self) -> bytes:
        return _REQUEST.pack(MAGIC, int(self.op), self.tier, int(self.flags), self.num_keys,
                             self.ns_id, self.payload_bytes)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> RequestHead:
        """``InvalidArgument`` for anything but a well-formed head."""
        if len(data) != REQUEST_HEAD_BYTES:
            raise InvalidArgument(f"a page request head is {REQUEST_HEAD_BYTES} bytes, got {len(data)}")
        magic, op, tier, flags, num_keys, ns_id, payload_bytes = _REQUEST.unpack(data)
        if magic != MAGIC:
            raise InvalidArgument(f"not a tierd page request (magic {bytes(magic)!r}, expected "
                                  f"{MAGIC!r})")
        try:
            page_op = PageOp(op)
        except ValueError:
            raise InvalidArgument(f"unknown page op {op}") from None
        if flags & ~int(RequestFlag.HAS_PARENT):
            raise InvalidArgument(f"unknown page request flags {flags:#x}")
        return cls(page_op, ns_id, num_keys, payload_bytes, tier, RequestFlag(flags))


@dataclass(frozen=True)
class ReplyHead:
    """A reply's fixed part; ``status`` a gRPC status code (0: OK)."""

    status: int = STATUS_OK
    count: int = 0
    value: int = 0
    payload_bytes: int = 0
    flags: ReplyFlag = ReplyFlag.NONE

    def encode(self) -> bytes:
        return _REPLY.pack(MAGIC, self.status, int(self.flags), self.count, self.value,
                           self.payload_bytes)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> ReplyHead:
        """``InvalidArgument`` for a head that is cut short or not tierd's."""
        if len(data) != REPLY_HEAD_BYTES:
            raise InvalidArgument(f"a page reply head is {REPLY_HEAD_BYTES} bytes, got {len(data)}")
        magic, status, flags, count, value, payload_bytes = _REPLY.unpack(data)
        if magic != MAGIC:
            raise InvalidArgument(f"not a tierd page reply (magic {bytes(magic)!r})")
        if flags & ~int(ReplyFlag.MORE):
            raise InvalidArgument(f"unknown page reply flags {flags:#x}")
        return cls(status, count, value, payload_bytes, ReplyFlag(flags))


def error_reply(status: int, message: str) -> bytes:
    """A failed request's whole reply: head and message."""
    text = message.encode("utf-8", "replace")[:MAX_TEXT_BYTES]
    return ReplyHead(status, payload_bytes=len(text)).encode() + text


def encode_ticket(ticket: int | None) -> bytes:
    return _TICKET.pack(ticket or 0)


def decode_ticket(data: bytes | bytearray | memoryview) -> int:
    if len(data) != TICKET_BYTES:
        raise InvalidArgument(f"a durability ticket is {TICKET_BYTES} bytes, got {len(data)}")
    ticket: int = _TICKET.unpack(data)[0]
    return ticket


def send_frame(sock: socket.socket, parts: Sequence[bytes | memoryview]) -> None:
    """Send ``parts`` in order with as few system calls as the socket allows (no joining copy);
    both ends send every frame so."""
    views = [memoryview(part).cast("B") for part in parts if len(part)]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def set_kernel_timeout(sock: socket.socket, option: int, seconds: int) -> None:
    """``SO_RCVTIMEO`` / ``SO_SNDTIMEO`` on a blocking socket: the socket stays blocking (Python's
    own timeouts poll before every call, and MSG_WAITALL then returns early)."""
    sock.setsockopt(socket.SOL_SOCKET, option, _TIMEVAL.pack(seconds, 0))
