"""The on-disk page header: layout, round trip, and rejection of every kind of damage, of a value
under another key or namespace too; version-1 values verify only for the migration."""

from __future__ import annotations

import struct
import tracemalloc

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.errors import InvalidArgument
from tierd.tiers.page_format import (
    DISK_KEY_BYTES,
    FORMAT_VERSION,
    HEADER_BYTES,
    MAGIC,
    MAX_NS_ID,
    V1_FORMAT_VERSION,
    decode_header,
    disk_key,
    encode_header,
    split_disk_key,
    verify,
    verify_v1,
)

ns_ids = st.integers(min_value=0, max_value=MAX_NS_ID)
seqs = st.integers(min_value=0, max_value=2**64 - 1)
payloads = st.binary(min_size=0, max_size=4096)
page_keys = st.binary(min_size=16, max_size=16)
KEY = bytes(range(16))
FINGERPRINT = bytes(range(100, 116))


def stored_value(ns_id: int, seq: int, payload: bytes, key: bytes = KEY,
                 fingerprint: bytes = FINGERPRINT) -> bytearray:
    """What the disk tier stores for one page: header + payload."""
    return bytearray(encode_header(ns_id, key, fingerprint, len(payload), seq, payload) + payload)


def check(value: bytes | bytearray | memoryview, ns_id: int, payload_len: int,
          key: bytes = KEY, fingerprint: bytes = FINGERPRINT) -> object:
    return verify(value, ns_id, key, fingerprint, payload_len)


def v1_value(ns_id: int, seq: int, payload: bytes) -> bytearray:
    """A value as format version 1 wrote it: the checksum covers header and payload only."""
    prefix = struct.pack("<4sHHIIQQ", MAGIC, V1_FORMAT_VERSION, HEADER_BYTES, ns_id, 0,
                         len(payload), seq)
    return bytearray(prefix + struct.pack("<Q", xxhash.xxh3_64_intdigest(prefix + payload)) + payload)


@given(ns_id=ns_ids, seq=seqs, payload=payloads, key=page_keys)
def test_round_trip_keeps_every_field(ns_id: int, seq: int, payload: bytes, key: bytes) -> None:
    value = stored_value(ns_id, seq, payload, key)
    header = decode_header(value)
    assert header is not None
    assert (header.ns_id, header.seq, header.payload_bytes) == (ns_id, seq, len(payload))
    assert header.header_bytes == HEADER_BYTES and header.version == FORMAT_VERSION == 2
    assert check(memoryview(value), ns_id, len(payload), key) == header
    assert bytes(value[header.header_bytes:]) == payload


def test_layout_is_the_documented_one() -> None:
    """Other readers of data.mdb rely on these offsets; an independent decode must agree."""
    payload = bytes(range(256)) * 3
    header = encode_header(7, KEY, FINGERPRINT, len(payload), 1234, payload)
    assert len(header) == HEADER_BYTES == 40
    magic, version, header_len, ns_id, reserved, payload_len, seq, checksum = struct.unpack(
        "<4sHHIIQQQ", header)
    assert (magic, version, header_len, ns_id, reserved) == (MAGIC, 2, 40, 7, 0)
    assert (payload_len, seq) == (len(payload), 1234)
    assert checksum == xxhash.xxh3_64_intdigest(header[:32] + KEY + FINGERPRINT + payload)


def test_a_pinned_vector_of_format_2() -> None:
    """One known value, so any change to the layout or to what the checksum covers shows here."""
    header = encode_header(1, bytes(16), b"\xff" * 16, 4, 9, b"tier")
    assert header.hex() == ("54445047" "0200" "2800" "01000000" "00000000" "0400000000000000"
                            "0900000000000000" "2c797efeeb8b11ab")


@given(ns_id=ns_ids, payload=payloads, key=page_keys, other=page_keys)
def test_a_value_under_another_key_or_namespace_fails(ns_id: int, payload: bytes, key: bytes,
                                                      other: bytes) -> None:
    """What a misdirected write or two exchanged values look like: never a valid page."""
    value = stored_value(ns_id, 3, payload, key)
    if other != key:
        assert check(value, ns_id, len(payload), other) is None
    other_fingerprint = bytes(b ^ 1 for b in FINGERPRINT[:1]) + FINGERPRINT[1:]
    assert check(value, ns_id, len(payload), key, other_fingerprint) is None
    assert check(value, ns_id, len(payload), key) is not None


def test_version_1_values_verify_only_for_the_migration() -> None:
    value = v1_value(4, 8, b"old page")
    assert decode_header(value) is None               # a v1 value is never read as a page
    assert check(value, 4, 8) is None
    header = decode_header(value, V1_FORMAT_VERSION)
    assert header is not None and (header.version, header.seq) == (1, 8)
    assert verify_v1(value, 4, 8) == header
    value[-1] ^= 1
    assert verify_v1(value, 4, 8) is None
    assert verify_v1(stored_value(4, 8, b"new page"), 4, 8) is None


@given(ns_id=ns_ids, payload=payloads, data=st.data())
def test_any_single_bit_flip_is_rejected(ns_id: int, payload: bytes, data: st.DataObject) -> None:
    value = stored_value(ns_id, 99, payload)
    position = data.draw(st.integers(min_value=0, max_value=len(value) - 1), label="position")
    bit = data.draw(st.integers(min_value=0, max_value=7), label="bit")
    value[position] ^= 1 << bit
    assert check(memoryview(value), ns_id, len(payload)) is None


@given(payload=st.binary(min_size=1, max_size=4096), data=st.data())
def test_any_changed_payload_byte_is_rejected(payload: bytes, data: st.DataObject) -> None:
    value = stored_value(3, 5, payload)
    position = data.draw(st.integers(min_value=HEADER_BYTES, max_value=len(value) - 1))
    value[position] = (value[position] + data.draw(st.integers(1, 255))) % 256
    assert check(value, 3, len(payload)) is None


@pytest.mark.parametrize("offset, replacement", [
    (0, b"XDPG"),                                # magic
    (4, struct.pack("<H", FORMAT_VERSION + 1)),  # version
    (6, struct.pack("<H", HEADER_BYTES + 8)),    # header length
])
def test_bad_magic_version_or_header_length_do_not_decode(offset: int, replacement: bytes) -> None:
    value = stored_value(1, 1, b"payload")
    value[offset:offset + len(replacement)] = replacement
    assert decode_header(value) is None
    assert check(value, 1, 7) is None


def test_header_fields_must_match_what_the_reader_expects() -> None:
    payload = b"x" * 100
    value = stored_value(5, 1, payload)
    assert check(value, 5, 100) is not None
    assert check(value, 6, 100) is None       # page of another namespace
    assert check(value, 5, 101) is None       # reader expects another page size
    assert check(value[:-1], 5, 100) is None  # truncated value
    assert check(value + b"\0", 5, 100) is None  # trailing garbage


def test_ns_field_rewritten_to_match_the_reader_fails_the_checksum() -> None:
    value = stored_value(5, 1, b"y" * 99)
    struct.pack_into("<I", value, 8, 6)
    assert decode_header(value) is not None
    assert check(value, 6, 99) is None


def test_length_field_rewritten_to_match_the_value_fails_the_checksum() -> None:
    value = stored_value(5, 1, b"y" * 99) + b"z" * 8
    struct.pack_into("<Q", value, 16, 107)
    assert decode_header(value) is not None
    assert check(value, 5, 107) is None


def test_too_short_buffer_does_not_decode() -> None:
    value = stored_value(1, 1, b"")
    assert decode_header(value) is not None
    assert decode_header(value[:HEADER_BYTES - 1]) is None
    assert decode_header(b"") is None


def test_verify_hashes_a_view_without_copying_the_payload() -> None:
    payload_bytes = 32 << 20
    value = bytearray(HEADER_BYTES + payload_bytes)
    value[:HEADER_BYTES] = encode_header(2, KEY, FINGERPRINT, payload_bytes, 0,
                                         memoryview(value)[HEADER_BYTES:])
    tracemalloc.start()
    try:
        assert check(memoryview(value), 2, payload_bytes) is not None
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < payload_bytes // 16


def test_encode_rejects_inconsistent_arguments() -> None:
    with pytest.raises(InvalidArgument, match="payload_len"):
        encode_header(1, KEY, FINGERPRINT, 10, 0, b"123")
    with pytest.raises(InvalidArgument, match="sequence"):
        encode_header(1, KEY, FINGERPRINT, 3, -1, b"123")
    with pytest.raises(InvalidArgument, match="namespace id"):
        encode_header(MAX_NS_ID + 1, KEY, FINGERPRINT, 3, 0, b"123")
    with pytest.raises(InvalidArgument, match="page key"):
        encode_header(1, b"short", FINGERPRINT, 3, 0, b"123")
    with pytest.raises(InvalidArgument, match="fingerprint"):
        encode_header(1, KEY, FINGERPRINT[:8], 3, 0, b"123")


@given(ns_id=ns_ids, key=page_keys)
def test_disk_key_round_trip(ns_id: int, key: bytes) -> None:
    dkey = disk_key(ns_id, key)
    assert len(dkey) == DISK_KEY_BYTES
    assert split_disk_key(dkey) == (ns_id, key)


@given(entries=st.lists(st.tuples(st.integers(0, 50), page_keys), min_size=2, max_size=40))
def test_one_namespace_is_contiguous_in_key_order(entries: list[tuple[int, bytes]]) -> None:
    ordered = [split_disk_key(d)[0] for d in sorted(disk_key(ns, key) for ns, key in entries)]
    assert ordered == sorted(ordered)


@settings(max_examples=50)
@given(bad=st.binary(max_size=40).filter(lambda b: len(b) not in (16, 20)))
def test_disk_key_rejects_bad_page_keys(bad: bytes) -> None:
    with pytest.raises(InvalidArgument, match="16 bytes"):
        disk_key(1, bad)
    with pytest.raises(InvalidArgument, match="20 bytes"):
        split_disk_key(bad)
