"""The region socket's protocol: how a worker trades a region's grant for its file descriptor.

A shared value module (the daemon serves it, ``tierd_client.shm`` speaks it). One request per
connection, fixed size::

    request  MAGIC (4 bytes) | op (1 byte) | grant (GRANT_BYTES)
    reply    status (1 byte) | message length (2 bytes, big-endian) | message (UTF-8)

An ``OPEN`` answered ``OK`` carries the region's memfd as SCM_RIGHTS ancillary data (an
``OPEN_INDEX``, the memfd of its read-only page index); ``CHECK``
only says whether the grant still opens a region. The grant is the whole capability: it is
handed out only in Register answers to the namespace's own tenant.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from tierd.errors import InvalidArgument

MAGIC = b"TRG1"
GRANT_BYTES = 32
MAX_MESSAGE_BYTES = 1024
_REQUEST = struct.Struct(f">4sB{GRANT_BYTES}s")
_REPLY_HEAD = struct.Struct(">BH")
REQUEST_BYTES = _REQUEST.size
REPLY_HEAD_BYTES = _REPLY_HEAD.size
MAX_REPLY_BYTES = REPLY_HEAD_BYTES + MAX_MESSAGE_BYTES


class RegionOp(enum.IntEnum):
    OPEN = 1    # send me the region's file descriptor
    CHECK = 2   # does this grant still open a region?
    OPEN_INDEX = 3  # send me the region's page index (a read-only memfd; tierd.page_index)


class RegionStatus(enum.IntEnum):
    OK = 0
    NOT_FOUND = 1     # no open region has this grant (closed, or the daemon restarted)
    INVALID = 2       # the request is malformed
    UNAVAILABLE = 3   # the daemon is shutting down or too busy


@dataclass(frozen=True)
class RegionRequest:
    op: RegionOp
    grant: bytes = b""

    def encode(self) -> bytes:
        if len(self.grant) != GRANT_BYTES:
            raise InvalidArgument(f"a region grant is {GRANT_BYTES} bytes, got {len(self.grant)}: "
                                  f"use the grant of a RegionHandle from Register")
        return _REQUEST.pack(MAGIC, int(self.op), self.grant)

    @classmethod
    def decode(cls, data: bytes) -> RegionRequest:
        """``InvalidArgument`` for anything but a well-formed request."""
        if len(data) != REQUEST_BYTES:
            raise InvalidArgument(f"a region request is {REQUEST_BYTES} bytes, got {len(data)}")
        magic, op, grant = _REQUEST.unpack(data)
        if magic != MAGIC:
            raise InvalidArgument(f"not a tierd region request (magic {magic!r}, expected {MAGIC!r})")
        try:
            return cls(RegionOp(op), grant)
        except ValueError:
            raise InvalidArgument(f"unknown region op {op}") from None


@dataclass(frozen=True)
class RegionReply:
    status: RegionStatus
    message: str = ""

    def encode(self) -> bytes:
        text = self.message.encode("utf-8", "replace")[:MAX_MESSAGE_BYTES]
        return _REPLY_HEAD.pack(int(self.status), len(text)) + text

    @classmethod
    def decode(cls, data: bytes) -> RegionReply:
        """``InvalidArgument`` for a reply that is cut short or has an unknown status."""
        if len(data) < REPLY_HEAD_BYTES:
            raise InvalidArgument(f"region reply of {len(data)} bytes is shorter than its header")
        status, length = _REPLY_HEAD.unpack_from(data)
        text = data[REPLY_HEAD_BYTES:]
        if length > MAX_MESSAGE_BYTES or len(text) != length:
            raise InvalidArgument(f"region reply message is {len(text)} bytes, header says {length}")
        try:
            return cls(RegionStatus(status), text.decode("utf-8", "replace"))
        except ValueError:
            raise InvalidArgument(f"unknown region reply status {status}") from None
