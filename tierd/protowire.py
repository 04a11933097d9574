"""protobuf's wire format, the few pieces the byte path encodes and scans by hand.

A shared value module: the daemon's GetPages/PutPages codec (``tierd.server.bytepath``) and the
client's GetPagesResponse decoder (``tierd_client.wire_pages``) both use it.
"""

from __future__ import annotations

import enum


class WireType(enum.IntEnum):
    VARINT = 0
    I64 = 1
    LEN = 2
    START_GROUP = 3
    END_GROUP = 4
    I32 = 5


# protobuf reads a tag in at most 5 bytes and a value in at most 10 (the 10th's high bits dropped).
MAX_TAG_BYTES = 5
MAX_VARINT_BYTES = 10


class WireError(ValueError):
    """Bytes that are not protobuf's wire format (the message says where)."""


def encode_varint(value: int) -> bytes:
    """``value`` (>= 0) as a base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_tag(field: int, wire_type: int) -> bytes:
    return encode_varint(field << 3 | wire_type)


def read_varint(raw: bytes, pos: int, max_bytes: int = MAX_VARINT_BYTES) -> tuple[int, int]:
    """The varint at ``pos`` (at most ``max_bytes`` long) and the position after it;
    ``WireError`` when it is longer or the bytes end inside it."""
    value = shift = 0
    for at in range(pos, min(len(raw), pos + max_bytes)):
        byte = raw[at]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at + 1
        shift += 7
    if pos + max_bytes <= len(raw):
        raise WireError(f"a varint at byte {pos} is longer than {max_bytes} bytes")
    raise WireError(f"the message ends inside a varint at byte {pos}")
