"""Properties of the byte path's framing: any chunking of any pages reassembles bit-exact."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_harness import PAGE_BYTES, PAGE_SPEC, ServerThread, keys_for, open_channel

from tierd.errors import InvalidArgument
from tierd.server.bytepath import PutAssembler, iter_chunks
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc

pages_strategy = st.integers(1, 64).flatmap(
    lambda size: st.lists(st.binary(min_size=size, max_size=size), max_size=12))


@given(pages=pages_strategy, chunk_bytes=st.integers(1, 200))
def test_iter_chunks_cuts_the_concatenation_into_full_chunks(pages: list[bytes], chunk_bytes: int) -> None:
    chunks = list(iter_chunks(pages, chunk_bytes))
    assert b"".join(chunks) == b"".join(pages)
    assert all(len(c) == chunk_bytes for c in chunks[:-1])
    assert all(0 < len(c) <= chunk_bytes for c in chunks)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


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
                      data_parts[i] if i < len(data_parts) else b"")
    if len(data) != num_pages * page_bytes:
        with pytest.raises(InvalidArgument, match="expected"):
            assembler.finish()
        return
    got_keys, got_pages = assembler.finish()
    assert got_keys == keys and [bytes(p) for p in got_pages] == pages


def test_put_assembler_enforces_its_limits() -> None:
    assembler = PutAssembler(page_bytes=4, max_keys=2, max_bytes=8)
    with pytest.raises(InvalidArgument, match="2 keys"):
        assembler.add([b"k" * 16] * 3, b"")
    with pytest.raises(InvalidArgument, match="max_put_bytes"):
        assembler.add([], b"x" * 9)
    with pytest.raises(InvalidArgument, match=r"keys\[1\]"):
        assembler.add([b"k" * 16, b"k" * 15], b"")


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
