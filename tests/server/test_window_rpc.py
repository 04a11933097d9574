"""Sliding-window namespaces over the wire: Register carries ``window_tokens`` / ``sink_tokens``
(refused with INVALID_ARGUMENT when out of bounds), and Acquire / Prefetch / Renew of a windowed
namespace answer the window's pages with ``page_indices`` and ``prefix_pages``; a namespace
without a window gets the leases it always got, byte for byte."""

from __future__ import annotations

import time

import grpc
import pytest
from server_harness import PAGE_BYTES, PAGE_SPEC, ServerThread, keys_for, pages_for, put_stream

from tierd.keys import chain_keys, namespace_fingerprint
from tierd.spec import MAX_WINDOW_TOKENS
from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc
from tierd.wire import spec_from_pb

# 16-token pages; 4 sinks and a 40-token window: of 10 pages, page 0 and pages 7, 8, 9.
WINDOW_TOKENS, SINK_TOKENS = 40, 4
NUM_PAGES = 10
WINDOW = [0, 7, 8, 9]
WAIT_S = 10.0


def windowed_spec(**changes: int) -> pb.PageSpec:
    spec = pb.PageSpec()
    spec.CopyFrom(PAGE_SPEC)
    spec.window_tokens, spec.sink_tokens = WINDOW_TOKENS, SINK_TOKENS
    for name, value in changes.items():
        setattr(spec, name, value)
    return spec


def windowed_keys(reg: pb.RegisterResponse, count: int) -> list[bytes]:
    return chain_keys(reg.fingerprint, range(count * PAGE_SPEC.page_tokens), PAGE_SPEC.page_tokens)


def hbm_keys(server: ServerThread, ns_id: int) -> set[bytes]:
    return set(server.store.inspect().regions[(ns_id, Tier.HBM)].pages)


def test_register_carries_the_window(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    plain = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
    reg = stub.Register(pb.RegisterRequest(spec=windowed_spec()))
    assert reg.ns_id != plain.ns_id and reg.fingerprint != plain.fingerprint
    assert (reg.spec.window_tokens, reg.spec.sink_tokens) == (WINDOW_TOKENS, SINK_TOKENS)
    assert reg.fingerprint == namespace_fingerprint(spec_from_pb(windowed_spec()), b"default")
    assert (plain.spec.window_tokens, plain.spec.sink_tokens) == (0, 0)
    assert stub.Register(pb.RegisterRequest(spec=windowed_spec())).ns_id == reg.ns_id


@pytest.mark.parametrize(("changes", "match"), [
    ({"window_tokens": 0}, "spec.sink_tokens is 4 but spec.window_tokens is 0"),
    ({"window_tokens": MAX_WINDOW_TOKENS + 1}, "spec.window_tokens must be an integer in 0.."),
    ({"sink_tokens": MAX_WINDOW_TOKENS + 1}, "spec.sink_tokens must be an integer in 0.."),
])
def test_a_bad_window_is_invalid_argument_and_registers_nothing(
        server: ServerThread, stub: pb_grpc.TierdStub, changes: dict[str, int], match: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Register(pb.RegisterRequest(spec=windowed_spec(**changes)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert match in info.value.details()
    assert server.store.stats().namespaces == 0


def test_prefetch_and_acquire_move_and_lease_the_window_only(server: ServerThread,
                                                             stub: pb_grpc.TierdStub) -> None:
    reg = stub.Register(pb.RegisterRequest(spec=windowed_spec()))
    keys, pages = windowed_keys(reg, NUM_PAGES + 2), pages_for(NUM_PAGES, seed=5)
    stub.PutPages(put_stream(reg.ns_id, keys[:NUM_PAGES], pages))  # into dram
    assert stub.Prefetch(pb.PrefetchRequest(ns_id=reg.ns_id, keys=keys)).num_scheduled == len(WINDOW)
    deadline = time.monotonic() + WAIT_S
    while len(hbm_keys(server, reg.ns_id)) < len(WINDOW):
        assert time.monotonic() < deadline, "prefetched pages did not reach hbm"
        time.sleep(0.01)
    assert hbm_keys(server, reg.ns_id) == {keys[i] for i in WINDOW}
    lease = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys, timeout_s=WAIT_S)).lease
    assert list(lease.page_indices) == WINDOW and lease.prefix_pages == NUM_PAGES
    assert list(lease.keys) == [keys[i] for i in WINDOW] and len(lease.slots) == len(WINDOW)
    assert server.store.read_slots(lease.lease_id) == [pages[i] for i in WINDOW]
    assert hbm_keys(server, reg.ns_id) == {keys[i] for i in WINDOW}  # nothing else moved up
    renewed = stub.Renew(pb.RenewRequest(lease_id=lease.lease_id, ttl_s=30.0)).lease
    assert list(renewed.page_indices) == WINDOW and renewed.prefix_pages == NUM_PAGES
    found = stub.Lookup(pb.LookupRequest(ns_id=reg.ns_id, keys=keys))
    assert found.num_hits == NUM_PAGES
    assert [i for i, tier in enumerate(found.tiers) if tier == pb.TIER_HBM] == WINDOW
    stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id))


def test_a_windowed_lease_of_nothing_carries_no_window(stub: pb_grpc.TierdStub) -> None:
    reg = stub.Register(pb.RegisterRequest(spec=windowed_spec()))
    lease = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=windowed_keys(reg, 3))).lease
    assert not lease.keys and not lease.page_indices and lease.prefix_pages == 0


def test_a_namespace_without_a_window_gets_the_leases_it_always_got(
        server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
    keys, pages = keys_for(reg, 5), pages_for(4, seed=2)
    stub.PutPages(put_stream(reg.ns_id, keys[:4], pages))
    assert stub.Prefetch(pb.PrefetchRequest(ns_id=reg.ns_id, keys=keys)).num_scheduled == 4
    lease = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys, timeout_s=WAIT_S)).lease
    assert list(lease.keys) == keys[:4]
    assert {field.name for field, _ in lease.ListFields()} == {
        "lease_id", "ns_id", "tier", "kind", "keys", "slots", "expires_in_s"}
    before_windows = pb.Lease(lease_id=lease.lease_id, ns_id=lease.ns_id, tier=lease.tier,
                              kind=lease.kind, keys=lease.keys, slots=lease.slots,
                              expires_in_s=lease.expires_in_s)
    assert lease.SerializeToString() == before_windows.SerializeToString()
    assert server.store.read_slots(lease.lease_id) == pages
    assert len(pages[0]) == PAGE_BYTES
