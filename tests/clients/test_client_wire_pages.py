"""The client's hand-written GetPagesResponse decoder agrees with protobuf's parser on every input:
the same fields where protobuf accepts the bytes (any order, last value wins, unknown fields
skipped), MalformedPagesError where it refuses them; the data is a view of the received bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from fake_tierd import FakeDaemon
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.protowire import encode_tag, encode_varint
from tierd.server.bytepath import GetFrames
from tierd.spec import PageSpec
from tierd.v1 import tierd_pb2 as pb
from tierd_client import AsyncTierClient, ClientOptions, NamespaceHandle, TierClient, TierdRpcError
from tierd_client.wire_pages import (
    GET_PAGES_METHOD,
    MalformedPagesError,
    PagesMessage,
    decode_get_response,
    deserialize_get_response,
)

_U32 = st.integers(0, (1 << 32) - 1)
_U64 = st.integers(0, (1 << 64) - 1)




def _protobuf(raw: bytes) -> tuple[int, int, bytes] | None:
    """protobuf's own reading of ``raw``; None where it refuses it."""
    try:
        message = pb.GetPagesResponse.FromString(raw)
    except DecodeError:
        return None
    return message.num_pages, message.page_bytes, message.data


def _assert_agrees(raw: bytes) -> None:
    expected = _protobuf(raw)
    if expected is None:
        with pytest.raises(MalformedPagesError):
            decode_get_response(raw)
        assert isinstance(deserialize_get_response(raw), MalformedPagesError)
        return
    got = decode_get_response(raw)
    assert (got.num_pages, got.page_bytes, bytes(got.data)) == expected
    assert deserialize_get_response(raw) == got


# Fields protobuf writes (whole messages, so each is protobuf's own serialization), and fields an
# encoder might add that this message does not know, or known numbers with another wire type.
_known = st.builds(lambda n, b, d: pb.GetPagesResponse(num_pages=n, page_bytes=b, data=d).SerializeToString(),
                   _U32, _U64, st.binary(max_size=40))
_field_number = st.one_of(st.integers(1, 40), st.integers(1, (1 << 29) - 1))
_unknown = st.one_of(
    st.builds(lambda f, v: encode_tag(f, 0) + encode_varint(v), _field_number, _U64),
    st.builds(lambda f, d: encode_tag(f, 2) + encode_varint(len(d)) + d, _field_number, st.binary(max_size=20)),
    st.builds(lambda f, d: encode_tag(f, 1) + d, _field_number, st.binary(min_size=8, max_size=8)),
    st.builds(lambda f, d: encode_tag(f, 5) + d, _field_number, st.binary(min_size=4, max_size=4)),
    st.builds(lambda f, v: encode_tag(f, 3) + encode_tag(7, 0) + encode_varint(v) + encode_tag(f, 4),
              _field_number, _U64),
)


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(st.one_of(_known, _unknown), max_size=8))
def test_agrees_with_protobuf_on_valid_encodings(fields: list[bytes]) -> None:
    """Concatenated messages are one message to protobuf (last value of each field wins)."""
    raw = b"".join(fields)
    assert _protobuf(raw) is not None
    _assert_agrees(raw)


@settings(max_examples=300, deadline=None)
@given(num_pages=_U32, page_bytes=_U64, data=st.binary(max_size=64), data_first=st.booleans())
def test_reads_protobufs_serialization_and_the_daemons(num_pages: int, page_bytes: int,
                                                       data: bytes, data_first: bool) -> None:
    """Protobuf's field order and the daemon's (data first, counts after) read the same."""
    message = pb.GetPagesResponse(num_pages=num_pages, page_bytes=page_bytes, data=data)
    counts = pb.GetPagesResponse(num_pages=num_pages, page_bytes=page_bytes).SerializeToString()
    only_data = pb.GetPagesResponse(data=data).SerializeToString()
    for raw in (message.SerializeToString(), only_data + counts if data_first else counts + only_data):
        got = decode_get_response(raw)
        assert (got.num_pages, got.page_bytes, bytes(got.data)) == (num_pages, page_bytes, data)


@settings(max_examples=60, deadline=None)
@given(page_bytes=st.sampled_from([1, 9, 4096, 64 << 10]), num_keys=st.integers(0, 5),
       chunk_bytes=st.sampled_from([7, 5000, 1 << 20]), data=st.data())
def test_reads_the_daemons_framing_as_protobuf_does(page_bytes: int, num_keys: int, chunk_bytes: int,
                                                    data: st.DataObject) -> None:
    num_pages = data.draw(st.integers(0, num_keys))
    frames = GetFrames(num_keys, page_bytes, chunk_bytes)
    for i, out in enumerate(frames.outs[:num_pages]):
        out[:] = bytes([i + 1]) * page_bytes
    for raw in frames.messages(num_pages):
        _assert_agrees(raw)


@settings(max_examples=500, deadline=None)
@given(raw=st.binary(max_size=60))
def test_agrees_with_protobuf_on_garbage(raw: bytes) -> None:
    _assert_agrees(raw)


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(st.one_of(_known, _unknown), min_size=1, max_size=5), data=st.data())
def test_agrees_with_protobuf_on_cut_and_corrupted_messages(fields: list[bytes], data: st.DataObject) -> None:
    raw = bytearray(b"".join(fields))
    _assert_agrees(bytes(raw[:data.draw(st.integers(0, len(raw)))]))  # truncated anywhere
    if raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
        _assert_agrees(bytes(raw))


@pytest.mark.parametrize("raw", [
    b"\x00\x01",                                  # field number 0
    b"\x0e", b"\x0f",                             # wire types 6 and 7
    b"\x0c",                                      # an end-group without its start
    b"\x23\x08\x01",                              # a group never ended
    b"\x23\x2c",                                  # a group ended by another field's end-group
    b"\x1a\x05abc",                               # data runs past the end
    b"\x1a\xff\xff\xff\xff\x0f",                  # a length of 4 GiB in a 6-byte message
    b"\x08", b"\x80",                             # cut inside a value, inside a tag
    b"\x10" + b"\xff" * 10 + b"\x01",             # an 11-byte varint
    b"\x88\x80\x80\x80\x80\x00\x01",              # a 6-byte tag
    b"\x80\x80\x80\x80\x10\x01",                  # a tag above 2**32
    b"\x21\x00", b"\x2d\x00",                     # fixed64 / fixed32 cut short
    b"\x23" * 101 + b"\x24" * 101,                # groups nested deeper than protobuf allows
])
def test_refuses_what_protobuf_refuses(raw: bytes) -> None:
    assert _protobuf(raw) is None
    with pytest.raises(MalformedPagesError, match="malformed GetPagesResponse") as caught:
        decode_get_response(raw)
    assert isinstance(caught.value, TierdRpcError) and caught.value.rpc == "GetPages"


@pytest.mark.parametrize("raw", [
    b"",                                          # every field at its default
    b"\x08\xff\xff\xff\xff\xff\x01",              # num_pages keeps its low 32 bits
    b"\x10" + b"\xff" * 9 + b"\x7f",              # a 10th varint byte's high bits are dropped
    b"\x10\x80\x80\x00",                          # an over-long encoding of 0
    b"\x88\x80\x80\x80\x00\x05",                  # an over-long 5-byte tag
    b"\x0a\x02\x01\x02\x1d\x01\x02\x03\x04\x18\x05",  # known numbers, other wire types: unknown
    b"\x1a\x01a\x1a\x01b",                        # the last data wins
    b"\x23\x2b\x2c\x24\x08\x07",                  # nested unknown groups (left to protobuf)
    b"\x23" * 100 + b"\x24" * 100,                # as deep as protobuf allows
])
def test_accepts_what_protobuf_accepts(raw: bytes) -> None:
    assert _protobuf(raw) is not None
    _assert_agrees(raw)


def test_data_is_a_read_only_view_of_the_received_bytes() -> None:
    raw = pb.GetPagesResponse(num_pages=1, page_bytes=5, data=b"hello").SerializeToString()
    message = decode_get_response(raw)
    assert isinstance(message, PagesMessage) and message.data.obj is raw
    assert message.data.readonly and bytes(message.data) == b"hello"


def test_the_get_pages_method_is_the_services() -> None:
    service = pb.DESCRIPTOR.services_by_name["Tierd"]
    method = service.methods_by_name["GetPages"]
    assert f"/{service.full_name}/{method.name}" == GET_PAGES_METHOD


# -- through grpc: both clients' GetPages call ------------------------------------------------------
SPEC = PageSpec(model="wire@1", dtype="float16", num_layers=1, num_kv_heads=1, head_dim=4, page_tokens=1)
PAGE = SPEC.page_bytes
BYTES_ONLY = ClientOptions(local_data_path=False)


class _RawGetPages:
    """A GetPages server that sends ``messages`` as they are (no serializer)."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def handler(self, request: pb.GetPagesRequest, context: Any) -> Iterator[bytes]:
        yield from self.messages


@pytest.fixture()
def raw_server(tmp_path: Path) -> Iterator[tuple[str, _RawGetPages]]:
    raw = _RawGetPages()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_stream_rpc_method_handler(
        raw.handler, request_deserializer=pb.GetPagesRequest.FromString,
        response_serializer=lambda message: message)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "tierd.v1.Tierd", {"GetPages": handler}),))
    socket_path = tmp_path / "raw.sock"
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    try:
        yield str(socket_path), raw
    finally:
        server.stop(grace=None).wait(timeout=10)


def _handle(fake_daemon: FakeDaemon) -> NamespaceHandle:
    with TierClient(fake_daemon.socket_path, BYTES_ONLY) as client:
        return client.register(SPEC)


def _get_both(socket_path: str, ns: NamespaceHandle, keys: list[bytes]) -> list[list[bytes] | Exception]:
    """What the blocking and the async client's get make of the server's messages."""
    results: list[list[bytes] | Exception] = []
    with TierClient(socket_path, BYTES_ONLY) as client:
        try:
            results.append(client.get(ns, keys))
        except TierdRpcError as exc:
            results.append(exc)

    async def run() -> None:
        async with AsyncTierClient(socket_path, BYTES_ONLY) as client:
            try:
                results.append(await client.get(ns, keys))
            except TierdRpcError as exc:
                results.append(exc)
    asyncio.run(run())
    return results


def test_both_clients_read_any_valid_encoding(fake_daemon: FakeDaemon,
                                             raw_server: tuple[str, _RawGetPages]) -> None:
    """Counts after the data, unknown fields around it, a page cut across messages."""
    ns = _handle(fake_daemon)
    socket_path, raw = raw_server
    pages = [bytes([1]) * PAGE, bytes([2]) * PAGE]
    counts = pb.GetPagesResponse(num_pages=2, page_bytes=PAGE).SerializeToString()
    unknown = encode_tag(9, 2) + encode_varint(3) + b"xyz" + encode_tag(12, 0) + encode_varint(1 << 40)
    raw.messages = [pb.GetPagesResponse(data=pages[0]).SerializeToString() + unknown + counts,
                    pb.GetPagesResponse(data=pages[1][:3]).SerializeToString(),
                    unknown + pb.GetPagesResponse(data=pages[1][3:]).SerializeToString()]
    assert _get_both(socket_path, ns, ns.keys([1, 2])) == [pages, pages]


def test_both_clients_raise_on_a_malformed_message(fake_daemon: FakeDaemon,
                                                   raw_server: tuple[str, _RawGetPages]) -> None:
    ns = _handle(fake_daemon)
    socket_path, raw = raw_server
    first = pb.GetPagesResponse(num_pages=2, page_bytes=PAGE, data=bytes(PAGE)).SerializeToString()
    raw.messages = [first, b"\x1a\x05abc"]  # the second's data runs past its end
    for result in _get_both(socket_path, ns, ns.keys([1, 2])):
        assert isinstance(result, MalformedPagesError), result
        assert "runs 2 bytes past the end" in str(result)
