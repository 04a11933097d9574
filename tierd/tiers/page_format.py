"""On-disk page format of the ``disk`` tier: a fixed header in front of every stored payload.

Layout of one LMDB value (little-endian), format version 2::

    offset size field
         0    4 magic            b"TDPG"
         4    2 format version   2
         6    2 header length    HEADER_BYTES (40)
         8    4 namespace id
        12    4 encoding         0 exact; 1 fp8_e4m3, 2 fp8_e4m3_kivi (``ENCODINGS``: a cold format)
        16    8 payload length   bytes after the header
        24    8 sequence number  store-wide counter; rebuilds recency on warm restart
        32    8 checksum         xxh3-64 over bytes [0, 32) of the header, the 16-byte page key,
                                 the 16-byte namespace fingerprint, then the payload
        40    - payload          the page verbatim, or its cold form (``tierd.tiers.fp8_pages``)

The page key and the namespace fingerprint are not stored in the value (the key is in the LMDB
key, the fingerprint in the namespace's record) but the checksum covers them: a value stored
under the wrong key or namespace (a misdirected write, two values exchanged) fails ``verify``.

Version 1 had the same layout, but its checksum covered only the header and the payload. A data
dir of version 1 is migrated when it opens (``tierd.tiers.disk_format``); ``verify_v1`` is only
for that migration: nothing reads a version-1 page as a page.

The LMDB key of a page is the namespace id (4 bytes, big-endian, so one namespace's pages are
contiguous in key order) followed by the 16-byte page key.

The encoding field was reserved (always 0) before cold formats: pages written then read as exact.
A reader expects the encoding of the namespace's spec; a header that says another one fails
``verify`` like a bad checksum (a quantized page is never served as exact, nor the reverse).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import xxhash

from tierd.buffers import byte_view
from tierd.errors import InvalidArgument
from tierd.keys import KEY_BYTES, check_key
from tierd.spec import ColdFormat

MAGIC = b"TDPG"
FORMAT_VERSION = 2
V1_FORMAT_VERSION = 1

# The header without its checksum field: the checksum covers exactly these bytes (then more).
_PREFIX = struct.Struct("<4sHHIIQQ")
_CHECKSUM = struct.Struct("<Q")
CHECKED_HEADER_BYTES = _PREFIX.size
HEADER_BYTES = _PREFIX.size + _CHECKSUM.size
FINGERPRINT_BYTES = 16

NS_ID_BYTES = 4
DISK_KEY_BYTES = NS_ID_BYTES + KEY_BYTES
MAX_NS_ID = 2**32 - 1
MAX_SEQ = 2**64 - 1

Bytes = bytes | bytearray | memoryview

# The header's encoding field per cold format (0 is what the field held while it was reserved).
EXACT_ENCODING = 0
ENCODINGS: dict[ColdFormat, int] = {ColdFormat.EXACT: EXACT_ENCODING, ColdFormat.FP8_E4M3: 1,
                                    ColdFormat.FP8_E4M3_KIVI: 2}


@dataclass(frozen=True)
class PageHeader:
    """A decoded header; ``header_bytes + payload_bytes`` is the size of the stored value."""

    version: int
    header_bytes: int
    ns_id: int
    payload_bytes: int
    seq: int
    checksum: int
    encoding: int = EXACT_ENCODING  # see ``ENCODINGS``


def _check_ns_id(ns_id: int) -> None:
    if isinstance(ns_id, bool) or not isinstance(ns_id, int) or not 0 <= ns_id <= MAX_NS_ID:
        raise InvalidArgument(f"namespace id must be an integer in 0..{MAX_NS_ID}, got {ns_id!r}")


def check_fingerprint(fingerprint: bytes) -> bytes:
    """``fingerprint`` if it is ``FINGERPRINT_BYTES`` bytes, else ``InvalidArgument``."""
    if not isinstance(fingerprint, bytes) or len(fingerprint) != FINGERPRINT_BYTES:
        size = len(fingerprint) if isinstance(fingerprint, bytes) else type(fingerprint).__name__
        raise InvalidArgument(f"a namespace fingerprint must be {FINGERPRINT_BYTES} bytes, "
                              f"got {size}")
    return fingerprint


def _digest(prefix: Bytes, key: bytes, fingerprint: bytes, payload: memoryview) -> int:
    digest = xxhash.xxh3_64(prefix)
    digest.update(key)
    digest.update(fingerprint)
    digest.update(payload)
    return digest.intdigest()


def encode_header(ns_id: int, key: bytes, fingerprint: bytes, payload_len: int, seq: int,
                  payload: Bytes, encoding: int = EXACT_ENCODING) -> bytes:
    """The ``HEADER_BYTES``-byte header for ``payload`` (``payload_len`` bytes), stored as page
    ``key`` of namespace ``ns_id`` whose fingerprint is ``fingerprint``, in ``encoding``."""
    _check_ns_id(ns_id)
    key = check_key(key)
    check_fingerprint(fingerprint)
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise InvalidArgument(f"sequence number must be an integer in 0..{MAX_SEQ}, got {seq!r}")
    if encoding not in ENCODINGS.values():
        raise InvalidArgument(f"page encoding must be one of {sorted(ENCODINGS.values())}, "
                              f"got {encoding!r}")
    view = byte_view(payload, what="payload")
    if payload_len != view.nbytes:
        raise InvalidArgument(f"payload_len says {payload_len} bytes but the payload holds "
                              f"{view.nbytes} bytes")
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, HEADER_BYTES, ns_id, encoding, payload_len, seq)
    return prefix + _CHECKSUM.pack(_digest(prefix, key, fingerprint, view))


def decode_header(buf: Bytes, version: int = FORMAT_VERSION) -> PageHeader | None:
    """The header at the start of ``buf``, or ``None`` if too short, bad magic or a version other
    than ``version``. Only the first ``HEADER_BYTES`` bytes are read; the checksum is not checked
    (see ``verify``)."""
    view = byte_view(buf, what="page buffer")
    if view.nbytes < HEADER_BYTES:
        return None
    magic, found, header_len, ns_id, encoding, payload_len, seq = _PREFIX.unpack_from(view)
    if magic != MAGIC or found != version or header_len != HEADER_BYTES:
        return None
    (checksum,) = _CHECKSUM.unpack_from(view, CHECKED_HEADER_BYTES)
    return PageHeader(version=found, header_bytes=header_len, ns_id=ns_id,
                      payload_bytes=payload_len, seq=seq, checksum=checksum, encoding=encoding)


def _matching_header(view: memoryview, version: int, expected_ns_id: int,
                     expected_payload_len: int, expected_encoding: int) -> PageHeader | None:
    header = decode_header(view, version)
    if (header is None or header.ns_id != expected_ns_id
            or header.payload_bytes != expected_payload_len
            or header.encoding != expected_encoding
            or view.nbytes != header.header_bytes + header.payload_bytes):
        return None
    return header


def verify(buf: Bytes, expected_ns_id: int, key: bytes, fingerprint: bytes,
           expected_payload_len: int, expected_encoding: int = EXACT_ENCODING) -> PageHeader | None:
    """The header of a whole stored value if every field (the encoding too) and the checksum
    (over ``key`` and ``fingerprint`` too) match, else ``None``.

    ``buf`` is header + payload; a memoryview (e.g. of the LMDB map) is hashed in place, the
    payload is never copied.
    """
    view = byte_view(buf, what="page buffer")
    header = _matching_header(view, FORMAT_VERSION, expected_ns_id, expected_payload_len,
                              expected_encoding)
    if header is None or len(key) != KEY_BYTES or len(fingerprint) != FINGERPRINT_BYTES:
        return None
    digest = _digest(view[:CHECKED_HEADER_BYTES], key, fingerprint, view[header.header_bytes:])
    return header if digest == header.checksum else None


def verify_v1(buf: Bytes, expected_ns_id: int, expected_payload_len: int) -> PageHeader | None:
    """Like ``verify`` for a version-1 value (checksum over header and payload only); for the
    migration of a version-1 data dir, never for serving."""
    view = byte_view(buf, what="page buffer")
    header = _matching_header(view, V1_FORMAT_VERSION, expected_ns_id, expected_payload_len,
                              EXACT_ENCODING)
    if header is None:
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
