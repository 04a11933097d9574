"""The byte path's framing: puts split within the daemon's limits, GetPages streams reassembled."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd_client import InvalidArgumentError, TierdRpcError
from tierd_client.transfer import ONE_PAGE_PER_MESSAGE_BYTES, PageAssembler, TransferPlan, put_messages
from tierd_client.types import ServerLimits
from tierd_client.wire_pages import MalformedPagesError, PagesMessage, decode_get_response, deserialize_get_response


def _msg(num_pages: int = 0, page_bytes: int = 0, data: bytes = b"") -> PagesMessage:
    """A GetPagesResponse as the client receives it: serialized by protobuf, decoded by hand."""
    raw = pb.GetPagesResponse(num_pages=num_pages, page_bytes=page_bytes, data=data).SerializeToString()
    return decode_get_response(raw)


def _collect(agen: object) -> list[pb.PutPagesRequest]:
    async def run() -> list[pb.PutPagesRequest]:
        return [m async for m in agen]  # type: ignore[attr-defined]
    return asyncio.run(run())


@settings(max_examples=60, deadline=None)
@given(page_bytes=st.integers(1, 200), num_pages=st.integers(0, 12), chunk_bytes=st.integers(1, 500),
       seed=st.integers(0, 255), num_keys=st.sampled_from([None, 120]))
def test_put_messages_carry_every_byte_in_order_in_whole_pages_within_the_chunk(
        page_bytes: int, num_pages: int, chunk_bytes: int, seed: int, num_keys: int | None) -> None:
    pages = [bytes((seed + i + j) % 256 for j in range(page_bytes)) for i in range(num_pages)]
    keys = [bytes([i]) * 16 for i in range(num_keys or num_pages)]  # 120 keys: too many for data
    msgs = _collect(put_messages(7, Tier.HBM, keys, [memoryview(p) for p in pages], chunk_bytes,
                                 True, 2.5))
    assert msgs[0].HasField("header") and list(msgs[0].keys) == keys
    assert msgs[0].header.ns_id == 7 and msgs[0].header.tier == pb.TIER_HBM
    assert msgs[0].header.wait_durable and msgs[0].header.durable_timeout_s == 2.5
    assert all(not m.HasField("header") and not m.keys for m in msgs[1:])
    assert bool(msgs[0].data) == (num_keys is None and num_pages > 0)  # few keys: data rides along
    sizes = [len(m.data) for m in msgs if m.data]
    assert all(0 < size <= chunk_bytes for size in sizes)
    if page_bytes <= chunk_bytes:  # whole pages per message, as many as fit
        assert all(size % page_bytes == 0 for size in sizes)
        assert len(sizes) == -(-num_pages // (chunk_bytes // page_bytes))
    else:  # each page cut on its own: no message holds parts of two pages
        assert len(sizes) == num_pages * -(-page_bytes // chunk_bytes)
    assert b"".join(m.data for m in msgs) == b"".join(pages)


def test_put_messages_send_big_pages_one_per_message() -> None:
    """Pages of 64 KiB and up travel one per message (a bytes page goes as it is, uncopied)."""
    size = ONE_PAGE_PER_MESSAGE_BYTES
    pages = [bytes([i]) * size for i in range(3)]
    views = [memoryview(pages[0]), memoryview(bytearray(pages[1])), memoryview(pages[2]).cast("B")]
    msgs = _collect(put_messages(1, Tier.DRAM, [b"k" * 16] * 3, views, 4 * size, False, None))
    assert [m.data for m in msgs] == pages


@settings(max_examples=60, deadline=None)
@given(page_bytes=st.integers(1, 100), num_pages=st.integers(0, 10), data=st.data())
def test_assembler_rebuilds_pages_from_any_chunking(page_bytes: int, num_pages: int,
                                                    data: st.DataObject) -> None:
    pages = [bytes([i % 256]) * page_bytes for i in range(num_pages)]
    blob = b"".join(pages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=6)))
    pieces = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)])]
    assembler = PageAssembler(page_bytes, max_pages=num_pages)
    assembler.add(_msg(num_pages=num_pages, page_bytes=page_bytes, data=pieces[0]))
    for piece in pieces[1:]:
        assembler.add(_msg(data=piece))
    got = assembler.pages()
    assert got == pages and all(type(page) is bytes for page in got)


@settings(max_examples=40, deadline=None)
@given(page_bytes=st.integers(1, 64), num_pages=st.integers(1, 8), per=st.integers(1, 4))
def test_assembler_takes_whole_pages_per_message(page_bytes: int, num_pages: int, per: int) -> None:
    """The daemon's framing: each message holds whole pages (one, or several small ones)."""
    pages = [bytes([i, 255 - i]) * page_bytes for i in range(num_pages)]
    assembler = PageAssembler(2 * page_bytes, max_pages=num_pages + 1)
    for start in range(0, num_pages, per):
        first = start == 0
        assembler.add(_msg(num_pages=num_pages if first else 0,
                           page_bytes=2 * page_bytes if first else 0,
                           data=b"".join(pages[start:start + per])))
    got = assembler.pages()
    assert got == pages and all(type(page) is bytes for page in got)


def test_assembler_refuses_short_long_and_mismatched_streams() -> None:
    short = PageAssembler(4, 2)
    short.add(_msg(num_pages=2, page_bytes=4, data=b"abcd"))
    with pytest.raises(TierdRpcError, match="ended after 4 of 8"):
        short.pages()
    long = PageAssembler(4, 1)
    long.add(_msg(num_pages=1, page_bytes=4, data=b"abcd"))
    with pytest.raises(TierdRpcError, match="sent 5 bytes"):
        long.add(_msg(data=b"e"))
    with pytest.raises(TierdRpcError, match="pages of 8 bytes"):
        PageAssembler(4, 1).add(_msg(num_pages=1, page_bytes=8))
    with pytest.raises(TierdRpcError, match="announced 3 pages for 2 keys"):
        PageAssembler(4, 2).add(_msg(num_pages=3, page_bytes=4))
    assert PageAssembler(4, 2).pages() == []


def test_assembler_raises_what_the_deserializer_could_not_decode() -> None:
    """grpc's deserializer hands a malformed message on as its error; the assembler raises it
    and takes nothing from it."""
    assembler = PageAssembler(4, 1)
    bad = deserialize_get_response(b"\x1a\x05abc")  # data runs past the end
    assert isinstance(bad, MalformedPagesError)
    with pytest.raises(MalformedPagesError, match="malformed GetPagesResponse.*past the end"):
        assembler.add(bad)
    assert assembler.pages() == []


def test_a_one_page_message_becomes_a_bytes_page() -> None:
    """Copied once out of the received message: bytes (the API's type), not a view pinning it."""
    raw = pb.GetPagesResponse(num_pages=1, page_bytes=4, data=b"wxyz").SerializeToString()
    assembler = PageAssembler(4, 1)
    assembler.add(decode_get_response(raw))
    [page] = assembler.pages()
    assert page == b"wxyz" and type(page) is bytes


@settings(max_examples=80, deadline=None)
@given(page_bytes=st.integers(1, 1000), num_pages=st.integers(0, 200),
       max_put_bytes=st.integers(1, 20000), max_get_bytes=st.integers(1, 20000),
       max_keys=st.integers(1, 50))
def test_batches_cover_every_page_once_within_limits(page_bytes: int, num_pages: int,
                                                     max_put_bytes: int, max_get_bytes: int,
                                                     max_keys: int) -> None:
    limits = ServerLimits(max_message_bytes=1 << 20, chunk_bytes=1000, max_put_bytes=max_put_bytes,
                          max_keys_per_request=max_keys, max_get_bytes=max_get_bytes)
    if min(max_put_bytes, max_get_bytes) < page_bytes:
        with pytest.raises(InvalidArgumentError, match="max_(put|get)_size"):
            TransferPlan.from_limits(limits, 1 << 20, page_bytes)
        return
    plan = TransferPlan.from_limits(limits, 1 << 20, page_bytes)
    for batches, byte_limit in ((plan.put_batches(num_pages, page_bytes), max_put_bytes),
                                (plan.get_batches(num_pages, page_bytes), max_get_bytes)):
        assert [i for b in batches for i in b] == list(range(num_pages))
        assert all(len(b) <= max_keys and len(b) * page_bytes <= byte_limit for b in batches)
    keyed = plan.key_batches(num_pages)
    assert [i for b in keyed for i in b] == list(range(num_pages))
    assert all(len(b) <= max_keys for b in keyed)


def test_chunk_is_capped_by_the_clients_message_limit() -> None:
    limits = ServerLimits(max_message_bytes=1 << 30, chunk_bytes=512 << 20, max_put_bytes=1 << 30,
                          max_keys_per_request=10)
    plan = TransferPlan.from_limits(limits, 64 << 20, 4096)
    assert plan.chunk_bytes < 64 << 20
