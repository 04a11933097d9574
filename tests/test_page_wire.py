"""The page socket's protocol (``tierd.page_wire``): request and reply heads round-trip, bad heads
are refused with InvalidArgument naming what was wrong, and error replies and tickets encode right."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierd.errors import InvalidArgument
from tierd.keys import KEY_BYTES
from tierd.page_wire import (
    MAGIC,
    MAX_TEXT_BYTES,
    REPLY_HEAD_BYTES,
    REQUEST_HEAD_BYTES,
    TICKET_BYTES,
    PageOp,
    ReplyFlag,
    ReplyHead,
    RequestFlag,
    RequestHead,
    decode_ticket,
    encode_ticket,
    error_reply,
)

U8 = st.integers(0, 2**8 - 1)
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)


def _request(op: int = PageOp.GET, flags: int = 0, magic: bytes = MAGIC) -> bytes:
    return struct.pack("<4sBBHIQQ", magic, op, 0, flags, 0, 0, 0)


def _reply(flags: int = 0, magic: bytes = MAGIC) -> bytes:
    return struct.pack("<4sBxHIQQ", magic, 0, flags, 0, 0, 0)


@given(op=st.sampled_from(PageOp), ns_id=U64, num_keys=U32, payload_bytes=U64, tier=U8,
       flags=st.sampled_from([RequestFlag.NONE, RequestFlag.HAS_PARENT]))
def test_request_heads_round_trip(op: PageOp, ns_id: int, num_keys: int, payload_bytes: int,
                                  tier: int, flags: RequestFlag) -> None:
    head = RequestHead(op, ns_id, num_keys, payload_bytes, tier, flags)
    data = head.encode()
    assert len(data) == REQUEST_HEAD_BYTES and data.startswith(MAGIC)
    decoded = RequestHead.decode(data)
    assert decoded == head
    assert decoded.op is op and decoded.flags == flags
    parent = KEY_BYTES if flags & RequestFlag.HAS_PARENT else 0
    assert decoded.keys_bytes == num_keys * KEY_BYTES + parent
    assert RequestHead.decode(bytearray(data)) == head
    assert RequestHead.decode(memoryview(data)) == head


def test_keys_bytes_counts_the_parent_key() -> None:
    assert KEY_BYTES == 16
    assert RequestHead(PageOp.PUT, num_keys=3).keys_bytes == 48
    assert RequestHead(PageOp.PUT, num_keys=3, flags=RequestFlag.HAS_PARENT).keys_bytes == 64
    assert RequestHead(PageOp.PUT, flags=RequestFlag.HAS_PARENT).keys_bytes == 16
    assert RequestHead(PageOp.HELLO).keys_bytes == 0


def test_request_head_layout_is_little_endian_as_documented() -> None:
    head = RequestHead(PageOp.PUT, ns_id=0x0102030405060708, num_keys=0x0A0B0C0D,
                       payload_bytes=0x1112131415161718, tier=2, flags=RequestFlag.HAS_PARENT)
    assert REQUEST_HEAD_BYTES == 28
    assert head.encode() == (b"TPG1" + bytes([3, 2, 1, 0]) + bytes([0x0D, 0x0C, 0x0B, 0x0A])
                             + bytes(range(8, 0, -1)) + bytes(range(0x18, 0x10, -1)))


@given(status=U8, count=U32, value=U64, payload_bytes=U64,
       flags=st.sampled_from([ReplyFlag.NONE, ReplyFlag.MORE]))
def test_reply_heads_round_trip(status: int, count: int, value: int, payload_bytes: int,
                                flags: ReplyFlag) -> None:
    head = ReplyHead(status, count, value, payload_bytes, flags)
    data = head.encode()
    assert len(data) == REPLY_HEAD_BYTES and data.startswith(MAGIC)
    decoded = ReplyHead.decode(data)
    assert decoded == head
    assert decoded.flags == flags
    assert ReplyHead.decode(memoryview(data)) == head


def test_reply_head_layout_is_little_endian_as_documented() -> None:
    head = ReplyHead(status=5, count=0x0A0B0C0D, value=0x0102030405060708,
                     payload_bytes=0x1112131415161718, flags=ReplyFlag.MORE)
    assert REPLY_HEAD_BYTES == 28
    assert head.encode() == (b"TPG1" + bytes([5, 0, 1, 0]) + bytes([0x0D, 0x0C, 0x0B, 0x0A])
                             + bytes(range(8, 0, -1)) + bytes(range(0x18, 0x10, -1)))


@pytest.mark.parametrize("size", [0, 4, REQUEST_HEAD_BYTES - 1, REQUEST_HEAD_BYTES + 1, 64])
def test_a_request_head_of_the_wrong_length_is_refused(size: int) -> None:
    data = (_request() * 3)[:size]
    with pytest.raises(InvalidArgument, match=f"{REQUEST_HEAD_BYTES} bytes, got {size}"):
        RequestHead.decode(data)


@pytest.mark.parametrize("size", [0, 4, REPLY_HEAD_BYTES - 1, REPLY_HEAD_BYTES + 1, 64])
def test_a_reply_head_of_the_wrong_length_is_refused(size: int) -> None:
    data = (_reply() * 3)[:size]
    with pytest.raises(InvalidArgument, match=f"{REPLY_HEAD_BYTES} bytes, got {size}"):
        ReplyHead.decode(data)


def test_request_refusals_name_what_was_wrong() -> None:
    with pytest.raises(InvalidArgument, match="not a tierd page request.*HTTP"):
        RequestHead.decode(_request(magic=b"HTTP"))
    with pytest.raises(InvalidArgument, match="not a tierd page request"):
        RequestHead.decode(_reply(magic=b"TPG2"))
    for op in (0, 4, 255):
        with pytest.raises(InvalidArgument, match=f"unknown page op {op}$"):
            RequestHead.decode(_request(op=op))
    for flags in (0x2, 0x3, 0x8000):
        with pytest.raises(InvalidArgument, match=f"unknown page request flags {flags:#x}"):
            RequestHead.decode(_request(flags=flags))
    assert RequestHead.decode(_request(flags=1)).flags == RequestFlag.HAS_PARENT


def test_reply_refusals_name_what_was_wrong() -> None:
    with pytest.raises(InvalidArgument, match="not a tierd page reply.*HTTP"):
        ReplyHead.decode(_reply(magic=b"HTTP"))
    for flags in (0x2, 0x3, 0xFFFF):
        with pytest.raises(InvalidArgument, match=f"unknown page reply flags {flags:#x}"):
            ReplyHead.decode(_reply(flags=flags))
    assert ReplyHead.decode(_reply(flags=1)).flags == ReplyFlag.MORE


@given(data=st.binary(min_size=REQUEST_HEAD_BYTES, max_size=REQUEST_HEAD_BYTES)
       | st.binary(min_size=REQUEST_HEAD_BYTES - 4, max_size=REQUEST_HEAD_BYTES - 4).map(
           lambda rest: MAGIC + rest))
def test_any_request_head_bytes_decode_or_are_refused(data: bytes) -> None:
    try:
        head = RequestHead.decode(data)
    except InvalidArgument:
        return
    assert isinstance(head, RequestHead)
    assert head.encode() == data


@given(data=st.binary(min_size=REPLY_HEAD_BYTES, max_size=REPLY_HEAD_BYTES)
       | st.binary(min_size=REPLY_HEAD_BYTES - 4, max_size=REPLY_HEAD_BYTES - 4).map(
           lambda rest: MAGIC + rest))
def test_any_reply_head_bytes_decode_or_are_refused(data: bytes) -> None:
    try:
        head = ReplyHead.decode(data)
    except InvalidArgument:
        return
    assert isinstance(head, ReplyHead)
    encoded = head.encode()
    # Byte 5 is padding: ignored when decoding, written as 0.
    assert encoded[:5] + encoded[6:] == data[:5] + data[6:] and encoded[5] == 0


@given(status=U8, message=st.text(max_size=200))
def test_error_replies_carry_status_and_message(status: int, message: str) -> None:
    data = error_reply(status, message)
    head = ReplyHead.decode(data[:REPLY_HEAD_BYTES])
    text = message.encode("utf-8")
    assert head == ReplyHead(status, payload_bytes=len(text))
    assert data[REPLY_HEAD_BYTES:] == text
    assert data[REPLY_HEAD_BYTES:].decode("utf-8") == message


def test_a_long_error_message_is_cut_to_max_text_bytes() -> None:
    message = "x" * (MAX_TEXT_BYTES + 100)
    data = error_reply(13, message)
    head = ReplyHead.decode(data[:REPLY_HEAD_BYTES])
    assert head.status == 13 and head.payload_bytes == MAX_TEXT_BYTES
    assert len(data) == REPLY_HEAD_BYTES + MAX_TEXT_BYTES
    assert data[REPLY_HEAD_BYTES:] == b"x" * MAX_TEXT_BYTES


def test_a_non_ascii_error_message_survives_as_utf8() -> None:
    message = "cl\u00e9 invalide \u2014 \u9801 \U0001f4c4"
    data = error_reply(3, message)
    head = ReplyHead.decode(data[:REPLY_HEAD_BYTES])
    assert head.status == 3
    assert head.payload_bytes == len(message.encode("utf-8")) > len(message)
    assert data[REPLY_HEAD_BYTES:].decode("utf-8") == message


def test_tickets_encode_none_as_zero() -> None:
    data = encode_ticket(None)
    assert data == bytes(TICKET_BYTES) and TICKET_BYTES == 8
    assert decode_ticket(data) == 0
    assert decode_ticket(encode_ticket(0)) == 0
    assert encode_ticket(0x0102030405060708) == bytes(range(8, 0, -1))


@given(ticket=U64)
def test_tickets_round_trip(ticket: int) -> None:
    data = encode_ticket(ticket)
    assert len(data) == TICKET_BYTES
    assert decode_ticket(data) == ticket
    assert decode_ticket(bytearray(data)) == ticket


@pytest.mark.parametrize("size", [0, 1, TICKET_BYTES - 1, TICKET_BYTES + 1, 16])
def test_a_ticket_of_the_wrong_length_is_refused(size: int) -> None:
    with pytest.raises(InvalidArgument, match=f"{TICKET_BYTES} bytes, got {size}"):
        decode_ticket(bytes(size))
