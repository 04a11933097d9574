"""The region socket's protocol (``tierd.region_wire``): requests and replies round-trip, and any
bytes a peer sends either decode to a well-formed message or are refused with InvalidArgument."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierd.errors import InvalidArgument
from tierd.region_wire import (
    GRANT_BYTES,
    MAGIC,
    MAX_MESSAGE_BYTES,
    REQUEST_BYTES,
    RegionOp,
    RegionReply,
    RegionRequest,
    RegionStatus,
)


@given(op=st.sampled_from(RegionOp), grant=st.binary(min_size=GRANT_BYTES, max_size=GRANT_BYTES))
def test_requests_round_trip(op: RegionOp, grant: bytes) -> None:
    data = RegionRequest(op, grant).encode()
    assert len(data) == REQUEST_BYTES and data.startswith(MAGIC)
    assert RegionRequest.decode(data) == RegionRequest(op, grant)


@given(status=st.sampled_from(RegionStatus), message=st.text(max_size=2 * MAX_MESSAGE_BYTES))
def test_replies_round_trip_and_long_messages_are_cut(status: RegionStatus, message: str) -> None:
    data = RegionReply(status, message).encode()
    reply = RegionReply.decode(data)
    assert reply.status is status
    assert len(reply.message.encode()) <= MAX_MESSAGE_BYTES + 3  # a cut character may be replaced
    if len(message.encode()) <= MAX_MESSAGE_BYTES:
        assert reply.message == message


@given(data=st.binary(max_size=2 * REQUEST_BYTES))
def test_any_request_bytes_decode_or_are_refused(data: bytes) -> None:
    try:
        request = RegionRequest.decode(data)
    except InvalidArgument:
        return
    assert request.encode() == data


@given(data=st.binary(max_size=64))
def test_any_reply_bytes_decode_or_are_refused(data: bytes) -> None:
    with contextlib.suppress(InvalidArgument):
        RegionReply.decode(data)


@pytest.mark.parametrize("grant", [b"", b"x" * (GRANT_BYTES - 1), b"x" * (GRANT_BYTES + 1)])
def test_a_grant_of_the_wrong_length_is_refused_before_sending(grant: bytes) -> None:
    with pytest.raises(InvalidArgument, match=f"{GRANT_BYTES} bytes"):
        RegionRequest(RegionOp.OPEN, grant).encode()


def test_refusals_name_what_was_wrong() -> None:
    with pytest.raises(InvalidArgument, match="not a tierd region request"):
        RegionRequest.decode(b"HTTP" + bytes(REQUEST_BYTES - 4))
    with pytest.raises(InvalidArgument, match="unknown region op 9"):
        RegionRequest.decode(MAGIC + bytes([9]) + bytes(GRANT_BYTES))
    with pytest.raises(InvalidArgument, match="unknown region reply status 7"):
        RegionReply.decode(bytes([7, 0, 0]))
