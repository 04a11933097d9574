"""The byte path's framing and codec: any framing of any pages round-trips bit-exact, GetPages
sends whole pages per message (serialized by hand, parsed by protobuf), PutPages' data stays a view
of the received bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_harness import (
    PAGE_BYTES,
    PAGE_SPEC,
    ServerThread,
    keys_for,
    make_server,
    open_channel,
    serving_settings,
)

from tierd.errors import InvalidArgument
from tierd.server.bytepath import (
    INLINE_HEADER_MAX_KEYS,
    ONE_PAGE_PER_MESSAGE_BYTES,
    GetFrames,
    PutAssembler,
    decode_put_request,
    pages_per_message,
)
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc

BIG = ONE_PAGE_PER_MESSAGE_BYTES


# -- GetPages framing ------------------------------------------------------------------------------------
def test_pages_per_message() -> None:
    assert pages_per_message(4096, 5000) == 1 and pages_per_message(4096, 3 * 4096) == 3
    assert pages_per_message(BIG, 8 * BIG) == 1 and pages_per_message(2 << 20, 4 << 20) == 1
    assert pages_per_message(5001, 5000) == 0  # cut into chunks
    with pytest.raises(ValueError, match="positive"):
        pages_per_message(0, 10)


def _fill(frames: GetFrames, pages: list[bytes]) -> None:
    """What the store's get_into does: copy page i into outs[i]."""
    for out, page in zip(frames.outs, pages):
        out[:] = page


@settings(max_examples=80, deadline=None)
@given(page_bytes=st.sampled_from([1, 7, 100, BIG]), num_keys=st.integers(0, 9),
       chunk_bytes=st.sampled_from([1, 50, 333, BIG, 3 * BIG + 5]), data=st.data())
def test_get_frames_parse_into_the_copied_prefix_in_whole_pages(
        page_bytes: int, num_keys: int, chunk_bytes: int, data: st.DataObject) -> None:
    num_pages = data.draw(st.integers(0, num_keys))
    pages = [bytes([(i * 37 + j) % 256 for j in range(min(page_bytes, 300))]) * (page_bytes // min(page_bytes, 300))
             + bytes(page_bytes % min(page_bytes, 300)) for i in range(num_keys)]
    frames = GetFrames(num_keys, page_bytes, chunk_bytes)
    assert len(frames.outs) == num_keys and all(len(out) == page_bytes for out in frames.outs)
    _fill(frames, pages[:num_pages])
    messages = [pb.GetPagesResponse.FromString(raw) for raw in frames.messages(num_pages)]
    assert messages[0].num_pages == num_pages and messages[0].page_bytes == page_bytes
    assert all(m.num_pages == 0 and m.page_bytes == 0 for m in messages[1:])
    assert b"".join(m.data for m in messages) == b"".join(pages[:num_pages])
    if num_pages == 0:
        assert len(messages) == 1
    elif page_bytes > chunk_bytes:  # each page cut on its own
        assert len(messages) == num_pages * -(-page_bytes // chunk_bytes)
    else:
        per = pages_per_message(page_bytes, chunk_bytes)
        assert all(len(m.data) % page_bytes == 0 and len(m.data) <= per * page_bytes for m in messages)
        assert len(messages) == -(-num_pages // per)


def test_get_frames_for_many_keys_send_the_counts_first() -> None:
    num_keys = INLINE_HEADER_MAX_KEYS + 2
    frames = GetFrames(num_keys, 10, 30)
    pages = [bytes([i]) * 10 for i in range(num_keys)]
    _fill(frames, pages)
    messages = [pb.GetPagesResponse.FromString(raw) for raw in frames.messages(num_keys - 1)]
    assert (messages[0].num_pages, messages[0].page_bytes, messages[0].data) == (num_keys - 1, 10, b"")
    assert b"".join(m.data for m in messages[1:]) == b"".join(pages[:-1])


# -- PutPages codec ----------------------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(header=st.booleans(), keys=st.lists(st.binary(min_size=16, max_size=16), max_size=70),
       data=st.binary(max_size=300))
def test_decode_put_request_reads_what_protobuf_wrote(header: bool, keys: list[bytes], data: bytes) -> None:
    request = pb.PutPagesRequest(keys=keys, data=data)
    if header:
        request.header.CopyFrom(pb.PutPagesHeader(ns_id=9, tier=pb.TIER_HBM, durable_timeout_s=1.5))
    decoded = decode_put_request(request.SerializeToString())
    assert bytes(decoded.data) == data
    assert decoded.request.HasField("header") == header and list(decoded.request.keys) == keys
    if header:
        assert decoded.request.header == request.header


def test_decode_put_request_keeps_the_data_a_view_and_protobufs_rules() -> None:
    data = bytes(range(256)) * 4
    raw = pb.PutPagesRequest(data=data).SerializeToString()
    decoded = decode_put_request(raw)
    assert decoded.data.obj is raw and bytes(decoded.data) == data  # a view, not a copy
    # Fields in any order, an unknown field, and a repeated data field (the last one counts).
    key = b"k" * 16
    reordered = (pb.PutPagesRequest(data=b"abc").SerializeToString() + b"\xfa\x01\x02zz"
                 + pb.PutPagesRequest(keys=[key]).SerializeToString())
    decoded = decode_put_request(reordered)
    assert bytes(decoded.data) == b"abc" and list(decoded.request.keys) == [key]
    twice = pb.PutPagesRequest(data=b"first").SerializeToString() + pb.PutPagesRequest(
        data=b"second").SerializeToString()
    assert bytes(decode_put_request(twice).data) == b"second"
    with pytest.raises(Exception, match="(?i)error|truncated"):
        decode_put_request(raw[:-5])


@given(num_pages=st.integers(0, 8), page_bytes=st.integers(1, 40),
       data_cuts=st.lists(st.integers(0, 400), max_size=10),
       key_cuts=st.lists(st.integers(0, 8), max_size=4), extra=st.integers(-3, 3))
def test_put_assembler_accepts_any_framing_and_only_exact_sizes(
        num_pages: int, page_bytes: int, data_cuts: list[int], key_cuts: list[int], extra: int) -> None:
    pages = [bytes([i]) * page_bytes for i in range(num_pages)]
    keys = [bytes([i]) * 16 for i in range(num_pages)]
    data = b"".join(pages) + b"\x07" * max(extra, 0)
    if extra < 0:
        data = data[:max(0, len(data) + extra)]
    data_parts = _split(data, data_cuts)
    points = sorted({0, num_pages, *(min(c, num_pages) for c in key_cuts)})
    key_parts = [keys[a:b] for a, b in zip(points, points[1:])]
    assembler = PutAssembler(page_bytes, max_keys=100, max_bytes=10_000)
    for i in range(max(len(data_parts), len(key_parts))):
        assembler.add(key_parts[i] if i < len(key_parts) else [],
                      memoryview(data_parts[i]) if i < len(data_parts) else b"")
    if len(data) != num_pages * page_bytes:
        with pytest.raises(InvalidArgument, match="expected"):
            assembler.finish()
        return
    got_keys, got_pages = assembler.finish()
    assert got_keys == keys and [bytes(p) for p in got_pages] == pages


def test_put_assembler_keeps_pages_within_one_message_as_views() -> None:
    message = bytes([1]) * 8 + bytes([2]) * 8 + bytes([3]) * 4
    assembler = PutAssembler(page_bytes=8, max_keys=10, max_bytes=100)
    assembler.add([b"a" * 16, b"b" * 16, b"c" * 16], message)
    assembler.add([], bytes([3]) * 4)  # the third page was cut across two messages
    _, pages = assembler.finish()
    assert [p.obj is message for p in pages] == [True, True, False]
    assert [bytes(p) for p in pages] == [bytes([1]) * 8, bytes([2]) * 8, bytes([3]) * 8]


def test_put_assembler_enforces_its_limits() -> None:
    assembler = PutAssembler(page_bytes=4, max_keys=2, max_bytes=8)
    with pytest.raises(InvalidArgument, match="2 keys"):
        assembler.add([b"k" * 16] * 3, b"")
    with pytest.raises(InvalidArgument, match="max_put_bytes"):
        assembler.add([], b"x" * 9)
    with pytest.raises(InvalidArgument, match=r"keys\[1\]"):
        assembler.add([b"k" * 16, b"k" * 15], b"")


# -- through a server ----------------------------------------------------------------------------------------
def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(num_pages=st.integers(1, 6), cuts=st.lists(st.integers(0, 6 * PAGE_BYTES), max_size=6),
       key_split=st.integers(0, 6))
def test_any_put_framing_round_trips_through_the_server(server: ServerThread, num_pages: int,
                                                        cuts: list[int], key_split: int) -> None:
    """One server for all examples (the fixture is set up once per test function)."""
    with open_channel(server) as channel:
        stub = pb_grpc.TierdStub(channel)
        reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
        keys = keys_for(reg, num_pages)
        pages = [bytes((sum(cuts) + i + j) % 256 for j in range(PAGE_BYTES)) for i in range(num_pages)]
        parts = _split(b"".join(pages), cuts)
        split = min(key_split, num_pages)
        messages = [pb.PutPagesRequest(header=pb.PutPagesHeader(ns_id=reg.ns_id), keys=keys[:split])]
        messages += [pb.PutPagesRequest(data=part) for part in parts]
        messages.append(pb.PutPagesRequest(keys=keys[split:]))
        stub.PutPages(iter(messages))
        got = list(stub.GetPages(pb.GetPagesRequest(ns_id=reg.ns_id, keys=keys)))
        assert got[0].num_pages == num_pages
        assert b"".join(m.data for m in got) == b"".join(pages)
        stub.Delete(pb.DeleteRequest(ns_id=reg.ns_id, keys=keys))  # the next example starts empty


BIG_SPEC = pb.PageSpec(model="big@test", dtype="float16", num_layers=16, num_kv_heads=2,
                       head_dim=32, page_tokens=16)  # 64 KiB pages: one per GetPages message


def _distinct_pages(count: int, page_bytes: int, seed: int) -> list[bytes]:
    return [bytes((seed * 7 + i * 13 + j) % 251 for j in range(251)) * (page_bytes // 251)
            + bytes([i]) * (page_bytes % 251) for i in range(count)]


def test_put_and_get_pages_whole_in_one_message_and_several_per_message(short_tmp: Path) -> None:
    """PutPages with several pages in one message (the header's too) and a page cut over
    messages; GetPages answers one big page per message, small ones packed, all bit-exact."""
    srv = make_server(short_tmp, serving_settings(chunk_bytes=BIG + 100, max_get_bytes=8 << 20))
    try:
        with open_channel(srv) as channel:
            stub = pb_grpc.TierdStub(channel)
            small = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
            keys, pages = keys_for(small, 10), _distinct_pages(10, PAGE_BYTES, 1)
            data = b"".join(pages)
            cut = 5 * PAGE_BYTES + 100  # pages 0-4 whole in two messages, page 5 cut in two
            stub.PutPages(iter([
                pb.PutPagesRequest(header=pb.PutPagesHeader(ns_id=small.ns_id), keys=keys,
                                   data=data[:2 * PAGE_BYTES]),
                pb.PutPagesRequest(data=data[2 * PAGE_BYTES:cut]),
                pb.PutPagesRequest(data=data[cut:])]))
            got = list(stub.GetPages(pb.GetPagesRequest(ns_id=small.ns_id, keys=keys)))
            assert [len(m.data) for m in got] == [8 * PAGE_BYTES, 2 * PAGE_BYTES]  # packed, whole
            assert b"".join(m.data for m in got) == data

            big = stub.Register(pb.RegisterRequest(spec=BIG_SPEC))
            big_keys, big_pages = keys_for(big, 3), _distinct_pages(3, big.page_bytes, 2)
            stub.PutPages(iter([pb.PutPagesRequest(header=pb.PutPagesHeader(ns_id=big.ns_id),
                                                   keys=big_keys, data=b"".join(big_pages))]))
            got = list(stub.GetPages(pb.GetPagesRequest(ns_id=big.ns_id, keys=big_keys + keys[:1])))
            assert got[0].num_pages == 3 and got[0].page_bytes == big.page_bytes == BIG
            assert [m.data for m in got] == big_pages  # one whole page per message
    finally:
        srv.stop()


def test_get_of_many_keys_sends_the_counts_first(short_tmp: Path) -> None:
    num_keys = INLINE_HEADER_MAX_KEYS + 5
    srv = make_server(short_tmp, serving_settings(max_get_bytes=num_keys * PAGE_BYTES))
    try:
        with open_channel(srv) as channel:
            stub = pb_grpc.TierdStub(channel)
            reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
            keys, pages = keys_for(reg, num_keys), _distinct_pages(4, PAGE_BYTES, 3)
            stub.PutPages(iter([pb.PutPagesRequest(header=pb.PutPagesHeader(ns_id=reg.ns_id),
                                                   keys=keys[:4], data=b"".join(pages))]))
            got = list(stub.GetPages(pb.GetPagesRequest(ns_id=reg.ns_id, keys=keys)))
            assert (got[0].num_pages, got[0].data) == (4, b"")
            assert b"".join(m.data for m in got[1:]) == b"".join(pages)
    finally:
        srv.stop()
