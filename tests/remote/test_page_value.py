"""The remote page header: a value reads back only as the page it was written as."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from tierd.remote.page_value import HEADER_BYTES, Verdict, build_header, page_id, verify

FP = bytes(range(16))
KEY = bytes(range(16, 32))


def _check(header: bytes, payload: bytes, fp: bytes = FP, key: bytes = KEY,
           stored: int | None = None) -> Verdict:
    return verify(header, fp, key, memoryview(payload), len(payload) if stored is None else stored)


@given(st.binary(min_size=1, max_size=4096))
def test_a_written_page_verifies(payload: bytes) -> None:
    header = build_header(FP, KEY, memoryview(payload))
    assert len(header) == HEADER_BYTES
    assert _check(header, payload) is Verdict.OK


@given(st.binary(min_size=1, max_size=2048), st.data())
def test_any_flipped_bit_fails(payload: bytes, data: st.DataObject) -> None:
    header = bytearray(build_header(FP, KEY, memoryview(payload)))
    value = header + payload
    bit = data.draw(st.integers(0, len(value) * 8 - 1))
    value[bit // 8] ^= 1 << (bit % 8)
    assert _check(bytes(value[:HEADER_BYTES]), bytes(value[HEADER_BYTES:])) is not Verdict.OK


def test_another_pages_value_is_foreign() -> None:
    payload = os.urandom(256)
    header = build_header(FP, KEY, memoryview(payload))
    assert _check(header, payload, key=bytes(16)) is Verdict.FOREIGN
    assert _check(header, payload, fp=bytes(16)) is Verdict.FOREIGN


def test_short_or_missing_parts_are_not_pages() -> None:
    payload = os.urandom(256)
    header = build_header(FP, KEY, memoryview(payload))
    assert _check(header, payload, stored=128) is Verdict.TRUNCATED
    assert _check(header, payload[:128]) is Verdict.TRUNCATED
    assert _check(b"", payload) is Verdict.MALFORMED
    assert _check(header[:-1], payload) is Verdict.MALFORMED
    assert _check(b"XXXX" + header[4:], payload) is Verdict.MALFORMED


def test_page_ids_are_fingerprint_then_key() -> None:
    assert page_id(FP, KEY) == FP + KEY
