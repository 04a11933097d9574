"""The header every page stored in the remote tier carries, and its check.

Layout (little-endian), ``HEADER_BYTES`` = 64::

    offset size field
         0    4 magic            b"TDRV"
         4    2 format version   1
         6    2 header length    64
         8    8 payload length   bytes
        16   16 namespace fingerprint (spec and tenant salt: the same on every node)
        32   16 page key
        48    8 reserved         0
        56    8 checksum         xxh3-64 over bytes [0, 56) of the header, then the payload

The checksum covers the fingerprint and the key, so a value stored under another page's name
(a misdirected write, a foreign namespace) fails as surely as a flipped payload byte. It catches
corruption, not forgery: whoever can write to the cluster can plant a page.
"""

from __future__ import annotations

import enum
import struct

import xxhash

from tierd.keys import KEY_BYTES

MAGIC = b"TDRV"
FORMAT_VERSION = 1
FINGERPRINT_BYTES = 16
_PREFIX = struct.Struct("<4sHHQ16s16sQ")
_CHECKSUM = struct.Struct("<Q")
HEADER_BYTES = _PREFIX.size + _CHECKSUM.size


class Verdict(enum.Enum):
    """What a fetched value is."""

    OK = "ok"
    MALFORMED = "malformed"  # not a tierd page header (wrong magic, version or size)
    FOREIGN = "foreign"      # a header of another page or namespace
    TRUNCATED = "truncated"  # payload of another length than the header (or the page) says
    CORRUPT = "corrupt"      # the checksum does not match


def page_id(fingerprint: bytes, key: bytes) -> bytes:
    """The backend's name of a page: fingerprint then key (``PAGE_ID_BYTES``), never a node-local id."""
    if len(fingerprint) != FINGERPRINT_BYTES or len(key) != KEY_BYTES:
        raise ValueError(f"a page id needs a {FINGERPRINT_BYTES}-byte fingerprint and a "
                         f"{KEY_BYTES}-byte key, got {len(fingerprint)} and {len(key)}")
    return fingerprint + key


def _checksum(prefix: bytes, payload: memoryview) -> int:
    digest = xxhash.xxh3_64(prefix)
    digest.update(payload)
    return digest.intdigest()


def build_header(fingerprint: bytes, key: bytes, payload: memoryview) -> bytes:
    """The header of ``payload`` stored as page ``key`` of the namespace ``fingerprint``."""
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, HEADER_BYTES, payload.nbytes, fingerprint, key, 0)
    return prefix + _CHECKSUM.pack(_checksum(prefix, payload))


def verify(header: bytes, fingerprint: bytes, key: bytes, payload: memoryview,
           payload_bytes: int) -> Verdict:
    """Whether ``payload`` (``payload_bytes`` of it were stored) is page ``key`` of ``fingerprint``."""
    if len(header) != HEADER_BYTES:
        return Verdict.MALFORMED
    magic, version, length, stored_bytes, stored_fp, stored_key, _ = _PREFIX.unpack_from(header)
    if magic != MAGIC or version != FORMAT_VERSION or length != HEADER_BYTES:
        return Verdict.MALFORMED
    if stored_fp != fingerprint or stored_key != key:
        return Verdict.FOREIGN
    if stored_bytes != payload.nbytes or payload_bytes != payload.nbytes:
        return Verdict.TRUNCATED
    (checksum,) = _CHECKSUM.unpack_from(header, _PREFIX.size)
    if checksum != _checksum(header[:_PREFIX.size], payload):
        return Verdict.CORRUPT
    return Verdict.OK
