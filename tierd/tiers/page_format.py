"""On-disk page format of the ``disk`` tier: a fixed header in front of every stored payload.

Layout of one LMDB value (little-endian)::

    offset size field
         0    4 magic            b"TDPG"
         4    2 format version   1
         6    2 header length    HEADER_BYTES (40)
         8    4 namespace id
        12    4 reserved         0
        16    8 payload length   bytes after the header
        24    8 sequence number  store-wide counter; rebuilds recency on warm restart
        32    8 checksum         xxh3-64 over bytes [0, 32) of the header, then the payload
        40    - payload          stored verbatim

The LMDB key of a page is the namespace id (4 bytes, big-endian, so one namespace's pages are
contiguous in key order) followed by the 16-byte page key.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import xxhash

from tierd.buffers import byte_view
from tierd.errors import InvalidArgument
from tierd.keys import KEY_BYTES, check_key

MAGIC = b"TDPG"
FORMAT_VERSION = 1

# The header without its checksum field: the checksum covers exactly these bytes.
_PREFIX = struct.Struct("<4sHHIIQQ")
_CHECKSUM = struct.Struct("<Q")
CHECKED_HEADER_BYTES = _PREFIX.size
HEADER_BYTES = _PREFIX.size + _CHECKSUM.size

NS_ID_BYTES = 4
DISK_KEY_BYTES = NS_ID_BYTES + KEY_BYTES
MAX_NS_ID = 2**32 - 1
MAX_SEQ = 2**64 - 1


@dataclass(frozen=True)
class PageHeader:
    """A decoded header; ``header_bytes + payload_bytes`` is the size of the stored value."""

    version: int
    header_bytes: int
    ns_id: int
    payload_bytes: int
    seq: int
    checksum: int


def _check_ns_id(ns_id: int) -> None:
    if isinstance(ns_id, bool) or not isinstance(ns_id, int) or not 0 <= ns_id <= MAX_NS_ID:
        raise InvalidArgument(f"namespace id must be an integer in 0..{MAX_NS_ID}, got {ns_id!r}")


def encode_header(ns_id: int, payload_len: int, seq: int,
                  payload: bytes | bytearray | memoryview) -> bytes:
    """The ``HEADER_BYTES``-byte header for ``payload`` (``payload_len`` bytes) of ``ns_id``."""
    _check_ns_id(ns_id)
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise InvalidArgument(f"sequence number must be an integer in 0..{MAX_SEQ}, got {seq!r}")
    view = byte_view(payload, what="payload")
    if payload_len != view.nbytes:
        raise InvalidArgument(f"payload_len says {payload_len} bytes but the payload holds "
                              f"{view.nbytes} bytes")
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, HEADER_BYTES, ns_id, 0, payload_len, seq)
    digest = xxhash.xxh3_64(prefix)
    digest.update(view)
    return prefix + _CHECKSUM.pack(digest.intdigest())


def decode_header(buf: bytes | bytearray | memoryview) -> PageHeader | None:
    """The header at the start of ``buf``, or ``None`` if too short, bad magic or unknown version.

    Only the first ``HEADER_BYTES`` bytes are read; the checksum is not checked (see ``verify``).
    """
    view = byte_view(buf, what="page buffer")
    if view.nbytes < HEADER_BYTES:
        return None
    magic, version, header_len, ns_id, _reserved, payload_len, seq = _PREFIX.unpack_from(view)
    if magic != MAGIC or version != FORMAT_VERSION or header_len != HEADER_BYTES:
        return None
    (checksum,) = _CHECKSUM.unpack_from(view, CHECKED_HEADER_BYTES)
    return PageHeader(version=version, header_bytes=header_len, ns_id=ns_id,
                      payload_bytes=payload_len, seq=seq, checksum=checksum)


def verify(buf: bytes | bytearray | memoryview, expected_ns_id: int,
           expected_payload_len: int) -> PageHeader | None:
    """The header of a whole stored value if every field and the checksum match, else ``None``.

    ``buf`` is header + payload; a memoryview (e.g. of the LMDB map) is hashed in place, the
    payload is never copied.
    """
    view = byte_view(buf, what="page buffer")
    header = decode_header(view)
    if (header is None or header.ns_id != expected_ns_id
            or header.payload_bytes != expected_payload_len
            or view.nbytes != header.header_bytes + header.payload_bytes):
        return None
    digest = xxhash.xxh3_64(view[:CHECKED_HEADER_BYTES])
    digest.update(view[header.header_bytes:])
    return header if digest.intdigest() == header.checksum else None


def disk_key(ns_id: int, key: bytes) -> bytes:
    """The 20-byte LMDB key of page ``key`` in namespace ``ns_id``."""
    _check_ns_id(ns_id)
    return ns_id.to_bytes(NS_ID_BYTES, "big") + check_key(key)


def split_disk_key(dkey: bytes | memoryview) -> tuple[int, bytes]:
    """``(ns_id, key)`` of an LMDB key made by ``disk_key``."""
    raw = bytes(dkey)
    if len(raw) != DISK_KEY_BYTES:
        raise InvalidArgument(f"a disk key must be {DISK_KEY_BYTES} bytes (namespace id + page "
                              f"key), got {len(raw)} bytes")
    return int.from_bytes(raw[:NS_ID_BYTES], "big"), raw[NS_ID_BYTES:]
