"""GetPagesResponse decoded by hand, so a page is not copied on its way out of the message.

protobuf's own parse copies the ``data`` field into the message and each read of ``.data``
copies it again: two copies of every page on top of grpc's. ``decode_get_response`` reads the
three fields itself and keeps ``data`` as a read-only view of the bytes grpc handed over.

It accepts what protobuf accepts, with protobuf's answer: fields in any order, the last value
of a field wins (``data`` too: proto3 bytes are not concatenated), fields it does not know (or
known numbers with another wire type) are skipped, ``num_pages`` keeps the low 32 bits of its
varint. Groups, which the daemon never sends, are left to protobuf's parser (their nesting rules
are its). What protobuf would refuse is refused with ``MalformedPagesError``.

``deserialize_get_response`` is the form grpc calls: grpc logs an exception raised by a response
deserializer and ends the call with a bare "Exception deserializing response!", so it returns the
error instead, for ``transfer.PageAssembler`` to raise with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from tierd.protowire import MAX_TAG_BYTES, MAX_VARINT_BYTES, WireError, WireType, read_varint
from tierd.v1 import tierd_pb2 as pb
from tierd_client.errors import TierdRpcError

_FIELDS = pb.GetPagesResponse.DESCRIPTOR.fields_by_name
_NUM_PAGES: int = _FIELDS["num_pages"].number
_PAGE_BYTES: int = _FIELDS["page_bytes"].number
_DATA: int = _FIELDS["data"].number
_UINT32_MASK = (1 << 32) - 1
_UINT64_MASK = (1 << 64) - 1


class MalformedPagesError(TierdRpcError):
    """A GetPages message that is no valid GetPagesResponse (never seen from a sound daemon)."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, reason: str) -> None:
        super().__init__(f"the daemon sent a malformed GetPagesResponse message: {reason}",
                         rpc="GetPages")


@dataclass(frozen=True, slots=True)
class PagesMessage:
    """One GetPagesResponse; ``data`` is a read-only view of the received message (no copy)."""

    num_pages: int
    page_bytes: int
    data: memoryview


def _varint(raw: bytes, pos: int, max_bytes: int) -> tuple[int, int]:
    """``protowire.read_varint`` with this module's error."""
    try:
        return read_varint(raw, pos, max_bytes)
    except WireError as exc:
        raise MalformedPagesError(str(exc)) from None


def _skip(raw: bytes, pos: int, size: int, what: str) -> int:
    if size > len(raw) - pos:
        raise MalformedPagesError(f"{what} at byte {pos} runs {size - (len(raw) - pos)} bytes past "
                                  f"the end of the {len(raw)}-byte message")
    return pos + size


class _Groups(Exception):
    """The message holds a group: protobuf's parser decides."""


def _decode_fields(raw: bytes) -> PagesMessage:
    num_pages = page_bytes = 0
    data_at = data_end = 0
    pos = 0
    while pos < len(raw):
        tag, pos = _varint(raw, pos, MAX_TAG_BYTES)
        field, wire_type = tag >> 3, tag & 7
        if field == 0 or tag > _UINT32_MASK:
            raise MalformedPagesError(f"invalid tag {tag} at byte {pos}")
        if wire_type == WireType.VARINT:
            value, pos = _varint(raw, pos, MAX_VARINT_BYTES)
            if field == _NUM_PAGES:
                num_pages = value & _UINT32_MASK
            elif field == _PAGE_BYTES:
                page_bytes = value & _UINT64_MASK
        elif wire_type == WireType.LEN:
            length, start = _varint(raw, pos, MAX_VARINT_BYTES)
            pos = _skip(raw, start, length, f"field {field}")
            if field == _DATA:
                data_at, data_end = start, pos
        elif wire_type == WireType.I64:
            pos = _skip(raw, pos, 8, f"fixed64 field {field}")
        elif wire_type == WireType.I32:
            pos = _skip(raw, pos, 4, f"fixed32 field {field}")
        elif wire_type in (WireType.START_GROUP, WireType.END_GROUP):
            raise _Groups
        else:
            raise MalformedPagesError(f"field {field} has wire type {wire_type}, which protobuf "
                                      "does not have")
    return PagesMessage(num_pages, page_bytes, memoryview(raw)[data_at:data_end])


def decode_get_response(raw: bytes) -> PagesMessage:
    """The GetPagesResponse in ``raw``; ``MalformedPagesError`` where protobuf would refuse it."""
    try:
        return _decode_fields(raw)
    except _Groups:
        pass
    try:
        message = pb.GetPagesResponse.FromString(raw)
    except DecodeError as exc:
        raise MalformedPagesError(str(exc)) from None
    return PagesMessage(message.num_pages, message.page_bytes, memoryview(message.data))


def deserialize_get_response(raw: bytes) -> PagesMessage | MalformedPagesError:
    """``decode_get_response`` for grpc: the error is returned, for the caller to raise."""
    try:
        return decode_get_response(raw)
    except MalformedPagesError as exc:
        return exc


GET_PAGES_METHOD = f"/{pb.DESCRIPTOR.services_by_name['Tierd'].full_name}/GetPages"


def get_pages_callable(channel: Any) -> Any:
    """GetPages on ``channel`` (``grpc`` or ``grpc.aio``), its messages decoded here instead of
    by protobuf: the stream yields ``PagesMessage`` (or a ``MalformedPagesError`` to raise)."""
    return channel.unary_stream(GET_PAGES_METHOD,
                                request_serializer=pb.GetPagesRequest.SerializeToString,
                                response_deserializer=deserialize_get_response,
                                _registered_method=True)
