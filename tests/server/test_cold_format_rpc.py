"""A cold format over the RPCs: Register carries it (and refuses what it cannot quantize), pages of
an fp8 namespace come back from disk decoded, and Stats shows the quantized pages in the client's
value, ``tierctl stats`` (table and --json) and the Prometheus text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import ml_dtypes
import numpy as np
import pytest
from server_harness import ServerThread, make_server, open_channel

from tierd import wire
from tierd.config import WritePolicy
from tierd.server.metrics import ServerCounters, render
from tierd.spec import PageSpec
from tierd.store.types import StoreStats
from tierd.tier import Tier
from tierd.tiers.fp8_pages import Fp8PageCodec
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc
from tierd.values import TierStats
from tierd_client import TierClient
from tierd_client.tierctl import format_stats

SPEC = PageSpec(model="tiny@test", dtype="bfloat16", num_layers=2, num_kv_heads=2, head_dim=32,
                page_tokens=16, cold_format="fp8_e4m3_kivi")


@pytest.fixture
def server(short_tmp: Path) -> Iterator[ServerThread]:
    srv = make_server(short_tmp)
    yield srv
    srv.stop()


def test_register_refuses_a_cold_format_it_cannot_quantize(server: ServerThread) -> None:
    with open_channel(server) as channel:
        stub = pb_grpc.TierdStub(channel)
        spec = wire.spec_to_pb(SPEC)
        spec.dtype = "int8"
        with pytest.raises(grpc.RpcError) as info:
            stub.Register(pb.RegisterRequest(spec=spec))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "quantizes float16, bfloat16 or float32 pages, not int8" in info.value.details()
        spec.dtype, spec.cold_format = "bfloat16", "fp4"
        with pytest.raises(grpc.RpcError) as info:
            stub.Register(pb.RegisterRequest(spec=spec))
        assert "'fp8_e4m3' or 'fp8_e4m3_kivi'" in info.value.details()
    assert server.store.stats().namespaces == 0


def decoded(pages: np.ndarray) -> bytes:
    codec = Fp8PageCodec(SPEC)
    out = b""
    for page in pages:
        stored, back = bytearray(codec.stored_bytes), bytearray(SPEC.page_bytes)
        codec.encode(memoryview(page.tobytes()), memoryview(stored))
        codec.decode(memoryview(bytes(stored)), memoryview(back))
        out += bytes(back)
    return out


def test_an_fp8_namespace_round_trips_through_the_client_and_stats_show_it(short_tmp: Path) -> None:
    pages = np.random.default_rng(0).standard_normal((3, *SPEC.page_shape)).astype(ml_dtypes.bfloat16)
    server = make_server(short_tmp)
    try:
        with TierClient(server.address.removeprefix("unix:")) as client:
            ns = client.register(SPEC)
            assert ns.spec == SPEC and ns.page_bytes == SPEC.page_bytes
            keys = ns.keys(np.arange(3 * SPEC.page_tokens))
            client.put(ns, keys, pages)
            server.store.flush()
            got = np.empty_like(pages)
            assert client.get_into(ns, keys, got) == 3 and got.tobytes() == pages.tobytes()  # dram: exact
            stats = client.stats()
    finally:
        server.stop()
    disk = stats.tiers[Tier.DISK]
    assert disk.quantized_pages == 3 and disk.quantized_bytes_saved == 3 * Fp8PageCodec(SPEC).saved_bytes
    assert "disk pages stored as fp8 3   bytes saved " in format_stats(stats)
    assert stats.to_json_dict()["tiers"]["disk"]["quantized_pages"] == 3  # type: ignore[index]
    server = make_server(short_tmp)  # a restart: the pages come from disk
    try:
        with TierClient(server.address.removeprefix("unix:")) as client:
            ns = client.register(SPEC)
            assert client.lookup_result(ns, keys).tiers == (Tier.DISK,) * 3
            got = np.empty_like(pages)
            assert client.get_into(ns, keys, got) == 3 and got.tobytes() == decoded(pages)
            assert client.stats().tiers[Tier.DISK].quantized_pages == 3
    finally:
        server.stop()


def test_quantized_counts_cross_the_wire_and_reach_prometheus() -> None:
    disk = TierStats(100, 10, 3, 0, 0, 0, 0, 0, 0, quantized_pages=3, quantized_bytes_saved=12345)
    assert wire.tier_stats_from_pb(wire.tier_stats_to_pb(Tier.DISK, disk)) == (Tier.DISK, disk)
    stats = StoreStats({Tier.DISK: disk}, namespaces=1, leases=0, checksum_failures=0, uptime_s=1.0,
                       write_policy=WritePolicy.WRITE_BACK)
    text = render(stats, ServerCounters(0, 0, 0, "0", "cpu"))
    assert "tierd_disk_quantized_pages 3\n" in text
    assert "tierd_disk_quantized_saved_bytes 12345\n" in text
    assert "# TYPE tierd_disk_quantized_pages gauge" in text
