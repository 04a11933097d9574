"""Every RPC of tierd.v1.Tierd against a real server and store, through the raw stubs."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_harness import (
    PAGE_BYTES,
    PAGE_SPEC,
    ServerThread,
    keys_for,
    make_server,
    open_channel,
    pages_for,
    put_stream,
)

from tierd import errors as tierd_errors
from tierd import wire
from tierd.keys import namespace_fingerprint
from tierd.server.status import PermissionDenied, status_code_of
from tierd.spec import PageSpec
from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc
from tierd_client.shm import map_shm

Code = grpc.StatusCode


def expect_status(code: grpc.StatusCode, call: Callable[[], object]) -> str:
    """Run ``call``; it must fail with ``code``. Returns the details (the message a user reads)."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            list(result)  # server-streaming calls fail while being read
    assert info.value.code() == code, info.value.details()
    return info.value.details()


def register(stub: pb_grpc.TierdStub, tenant: str = "") -> pb.RegisterResponse:
    return stub.Register(pb.RegisterRequest(spec=PAGE_SPEC, tenant=tenant))


def get_pages(stub: pb_grpc.TierdStub, ns_id: int, keys: list[bytes]) -> tuple[list[pb.GetPagesResponse], bytes]:
    messages = list(stub.GetPages(pb.GetPagesRequest(ns_id=ns_id, keys=keys)))
    return messages, b"".join(m.data for m in messages)


def store_pages(srv: ServerThread) -> dict[Tier, int]:
    stats = srv.store.stats()
    return {tier: stats.tiers[tier].pages for tier in stats.tiers}


# -- Register -----------------------------------------------------------------------------------------
def test_register_returns_namespace_handles_and_limits(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    spec = PageSpec(**{f.name: getattr(PAGE_SPEC, f.name) for f in PAGE_SPEC.DESCRIPTOR.fields})
    assert reg.page_bytes == PAGE_BYTES == spec.page_bytes
    assert reg.fingerprint == namespace_fingerprint(spec, b"default")
    assert reg.tenant == "default"
    assert {h.tier for h in reg.regions} == {pb.TIER_HBM, pb.TIER_DRAM}
    for handle in reg.regions:
        assert handle.kind == pb.HANDLE_KIND_MEMFD and handle.page_bytes == PAGE_BYTES
        assert handle.size_bytes >= handle.num_slots * PAGE_BYTES > 0
        assert len(handle.grant) == 32 and handle.socket_path == server.settings.advertised_region_socket
        assert not os.path.exists(f"/dev/shm/{handle.name}")
    assert reg.limits.chunk_bytes == server.settings.chunk_bytes
    assert reg.limits.max_get_bytes == server.settings.max_get_bytes
    again = register(stub)
    assert again.ns_id == reg.ns_id and again.regions == reg.regions
    other = register(stub, tenant="other")
    assert other.ns_id != reg.ns_id and other.fingerprint != reg.fingerprint


@pytest.mark.parametrize("spec", [
    None,
    pb.PageSpec(model="m@1", dtype="float13", num_layers=1, num_kv_heads=1, head_dim=8, page_tokens=4),
    pb.PageSpec(model="m@1", dtype="float16", num_layers=0, num_kv_heads=1, head_dim=8, page_tokens=4),
    pb.PageSpec(model="", dtype="float16", num_layers=1, num_kv_heads=1, head_dim=8, page_tokens=4),
    pb.PageSpec(model="m@1", dtype="float16", num_layers=2000, num_kv_heads=1, head_dim=8, page_tokens=4),
    pb.PageSpec(model="m@1", dtype="float16", num_layers=1, num_kv_heads=1, head_dim=8, page_tokens=70000),
    pb.PageSpec(model="m\r@1", dtype="float16", num_layers=1, num_kv_heads=1, head_dim=8, page_tokens=4),
])
def test_register_rejects_bad_specs_without_creating_a_namespace(
        server: ServerThread, stub: pb_grpc.TierdStub, spec: pb.PageSpec | None) -> None:
    details = expect_status(Code.INVALID_ARGUMENT,
                            lambda: stub.Register(pb.RegisterRequest(spec=spec)))
    assert details
    assert server.store.stats().namespaces == 0


# A refusal quotes what the client sent cut short: its details stay this small whatever was sent
# (names of hundreds of KiB here, under the test server's message limit; 4 MiB in tests/e2e).
MAX_DETAILS_CHARS = 600


@pytest.mark.parametrize(("request_", "fragments"), [
    (pb.RegisterRequest(spec=pb.PageSpec(model="\x00\x1b[2J" + "m" * (512 << 10), dtype="float16",
                                         num_layers=1, num_kv_heads=1, head_dim=8, page_tokens=4)),
     ("spec.model is 524293 bytes", "the limit is 256 bytes")),
    (pb.RegisterRequest(spec=pb.PageSpec(model="m@1", dtype="f" * (256 << 10), num_layers=1,
                                         num_kv_heads=1, head_dim=8, page_tokens=4)),
     ("unknown dtype", "(262144 bytes)")),
    (pb.RegisterRequest(spec=PAGE_SPEC, tenant="t" * (256 << 10)),
     ("RegisterRequest.tenant is 262144 bytes", "the limit is 128 bytes")),
    (pb.RegisterRequest(spec=PAGE_SPEC, tenant="team\x07a"), ("RegisterRequest.tenant", "U+0007")),
])
def test_register_refuses_oversized_names_without_echoing_them(
        server: ServerThread, stub: pb_grpc.TierdStub, request_: pb.RegisterRequest,
        fragments: tuple[str, ...]) -> None:
    details = expect_status(Code.INVALID_ARGUMENT, lambda: stub.Register(request_))
    assert len(details) < MAX_DETAILS_CHARS, details[:MAX_DETAILS_CHARS]
    for fragment in fragments:
        assert fragment in details, details
    assert server.store.stats().namespaces == 0


def test_register_past_the_namespace_cap_is_resource_exhausted(short_tmp: Path) -> None:
    srv = make_server(short_tmp, max_namespaces_per_tenant=2)
    try:
        with open_channel(srv) as channel:
            stub = pb_grpc.TierdStub(channel)
            for model in ("m@1", "m@2"):
                stub.Register(pb.RegisterRequest(spec=replace_model(PAGE_SPEC, model)))
            details = expect_status(Code.RESOURCE_EXHAUSTED, lambda: stub.Register(
                pb.RegisterRequest(spec=replace_model(PAGE_SPEC, "m@3"))))
            assert "store.max_namespaces_per_tenant = 2" in details and "raise" in details
            assert srv.store.stats().namespaces == 2
    finally:
        srv.stop()


def replace_model(spec: pb.PageSpec, model: str) -> pb.PageSpec:
    out = pb.PageSpec()
    out.CopyFrom(spec)
    out.model = model
    return out


# -- byte path, Lookup, Delete -----------------------------------------------------------------------------
def test_put_get_round_trip_is_bit_exact_across_split_chunks(server: ServerThread,
                                                            stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    keys, pages = keys_for(reg, 7), pages_for(7)
    reply = stub.PutPages(put_stream(reg.ns_id, keys, pages, chunk_bytes=3001))
    assert (reply.num_stored, reply.num_skipped) == (7, 0)
    assert not reply.HasField("durable_ticket")  # write_back: nothing queued for disk
    messages, data = get_pages(stub, reg.ns_id, keys)
    assert data == b"".join(pages)
    assert messages[0].num_pages == 7 and messages[0].page_bytes == PAGE_BYTES
    chunk = server.settings.chunk_bytes  # 5000 bytes: each 8 KiB page is cut in two messages
    assert len(messages) == 7 * -(-PAGE_BYTES // chunk)
    assert [len(m.data) for m in messages] == [chunk, PAGE_BYTES - chunk] * 7
    again = stub.PutPages(put_stream(reg.ns_id, keys[:3], pages[:3]))
    assert (again.num_stored, again.num_skipped) == (0, 3)


def test_get_returns_the_present_prefix_and_empty_for_a_miss(stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    keys, pages = keys_for(reg, 6), pages_for(6)
    stub.PutPages(put_stream(reg.ns_id, keys[:4], pages[:4]))
    messages, data = get_pages(stub, reg.ns_id, keys)
    assert messages[0].num_pages == 4 and data == b"".join(pages[:4])
    messages, data = get_pages(stub, reg.ns_id, keys[4:])
    assert len(messages) == 1 and messages[0].num_pages == 0 and data == b""


def test_lookup_reports_prefix_and_tiers(stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    keys, pages = keys_for(reg, 5), pages_for(5)
    stub.PutPages(put_stream(reg.ns_id, keys[:2], pages[:2], tier=pb.TIER_HBM))
    stub.PutPages(put_stream(reg.ns_id, keys[2:3], pages[2:3], tier=pb.TIER_DRAM))
    reply = stub.Lookup(pb.LookupRequest(ns_id=reg.ns_id, keys=keys))
    assert reply.num_hits == 3
    assert list(reply.tiers) == [pb.TIER_HBM, pb.TIER_HBM, pb.TIER_DRAM]
    assert stub.Lookup(pb.LookupRequest(ns_id=reg.ns_id, keys=keys[3:])).num_hits == 0


def test_delete_drops_pages(stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    keys = keys_for(reg, 3)
    stub.PutPages(put_stream(reg.ns_id, keys, pages_for(3)))
    assert stub.Delete(pb.DeleteRequest(ns_id=reg.ns_id, keys=keys[1:])).num_deleted == 2
    assert stub.Lookup(pb.LookupRequest(ns_id=reg.ns_id, keys=keys)).num_hits == 1
    assert stub.Delete(pb.DeleteRequest(ns_id=reg.ns_id, keys=keys[1:])).num_deleted == 0


def test_rejected_puts_store_nothing(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    keys, pages = keys_for(reg, 3), pages_for(3)
    short = list(put_stream(reg.ns_id, keys, pages))
    short[-1].data = short[-1].data[:-1]
    no_header = list(put_stream(reg.ns_id, keys, pages))
    no_header[0].ClearField("header")
    two_headers = list(put_stream(reg.ns_id, keys, pages))
    two_headers[1].header.ns_id = reg.ns_id
    bad_key = list(put_stream(reg.ns_id, keys[:2] + [b"short"], pages))
    cases = {
        Code.INVALID_ARGUMENT: [short, no_header, two_headers, bad_key, [],
                                list(put_stream(reg.ns_id, keys, pages, tier=pb.TIER_DISK)),
                                list(put_stream(reg.ns_id, keys, pages, tier=42))],
        Code.NOT_FOUND: [list(put_stream(reg.ns_id + 100, keys, pages))],
    }
    for code, streams in cases.items():
        for stream in streams:
            expect_status(code, lambda s=stream: stub.PutPages(iter(s)))
    assert stub.Lookup(pb.LookupRequest(ns_id=reg.ns_id, keys=keys)).num_hits == 0
    assert sum(store_pages(server).values()) == 0


def test_put_over_the_size_limit_is_rejected(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    count = server.settings.max_put_bytes // PAGE_BYTES + 1
    details = expect_status(Code.INVALID_ARGUMENT, lambda: stub.PutPages(
        put_stream(reg.ns_id, keys_for(reg, count), pages_for(count), chunk_bytes=4096)))
    assert "max_put_bytes" in details
    assert sum(store_pages(server).values()) == 0


def test_message_above_the_limit_is_refused(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    count = server.settings.max_message_bytes // PAGE_BYTES + 1
    with grpc.insecure_channel(server.address, options=[
            ("grpc.max_send_message_length", 64 << 20)]) as channel:
        big = pb_grpc.TierdStub(channel)
        expect_status(Code.RESOURCE_EXHAUSTED, lambda: big.PutPages(iter(
            put_stream(reg.ns_id, keys_for(reg, count), pages_for(count), chunk_bytes=64 << 20))))
    assert sum(store_pages(server).values()) == 0


def test_key_and_request_validation(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    bad = [b"x" * 15]
    for call in (lambda: stub.Lookup(pb.LookupRequest(ns_id=reg.ns_id, keys=bad)),
                 lambda: stub.Delete(pb.DeleteRequest(ns_id=reg.ns_id, keys=bad)),
                 lambda: stub.Prefetch(pb.PrefetchRequest(ns_id=reg.ns_id, keys=bad)),
                 lambda: stub.GetPages(pb.GetPagesRequest(ns_id=reg.ns_id, keys=bad)),
                 lambda: stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=bad))):
        assert "16 bytes" in expect_status(Code.INVALID_ARGUMENT, call)
    too_many = keys_for(reg, server.settings.max_keys_per_request + 1)
    expect_status(Code.INVALID_ARGUMENT, lambda: stub.Lookup(pb.LookupRequest(ns_id=reg.ns_id,
                                                                               keys=too_many)))
    over = keys_for(reg, server.settings.max_get_bytes // PAGE_BYTES + 1)
    assert "max_get_bytes" in expect_status(
        Code.INVALID_ARGUMENT, lambda: stub.GetPages(pb.GetPagesRequest(ns_id=reg.ns_id, keys=over)))
    unknown = reg.ns_id + 100
    for call in (lambda: stub.Lookup(pb.LookupRequest(ns_id=unknown, keys=keys_for(reg, 1))),
                 lambda: stub.GetPages(pb.GetPagesRequest(ns_id=unknown, keys=keys_for(reg, 1))),
                 lambda: stub.Allocate(pb.AllocateRequest(ns_id=unknown, num_pages=1))):
        assert str(unknown) in expect_status(Code.NOT_FOUND, call)


# -- leases: Acquire / Allocate / Commit / Renew / Release ------------------------------------------------
def map_region(handle: pb.RegionHandle) -> memoryview:
    """Map a region the way a client does (its memfd from the region socket): flat bytes."""
    return memoryview(map_shm(wire.handle_from_pb(handle)).array().reshape(-1))


def hbm_handle(reg: pb.RegisterResponse) -> pb.RegionHandle:
    return next(h for h in reg.regions if h.tier == pb.TIER_HBM)


def test_acquire_leases_hbm_slots_holding_the_pages(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    keys, pages = keys_for(reg, 4), pages_for(4, seed=3)
    stub.PutPages(put_stream(reg.ns_id, keys[:3], pages[:3]))
    lease = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys, ttl_s=20.0)).lease
    assert lease.kind == pb.LEASE_KIND_READ and lease.tier == pb.TIER_HBM
    assert list(lease.keys) == keys[:3] and len(lease.slots) == 3
    assert 0 < lease.expires_in_s <= 20.0
    region = map_region(hbm_handle(reg))
    for slot, page in zip(lease.slots, pages):
        start = hbm_handle(reg).offset_bytes + slot * PAGE_BYTES
        assert region[start:start + PAGE_BYTES] == page
    region.release()
    assert server.store.stats().leases == 1
    renewed = stub.Renew(pb.RenewRequest(lease_id=lease.lease_id, ttl_s=60.0)).lease
    assert renewed.expires_in_s > 20.0 and list(renewed.slots) == list(lease.slots)
    stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id))
    assert server.store.stats().leases == 0
    expect_status(Code.NOT_FOUND, lambda: stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id)))
    expect_status(Code.NOT_FOUND, lambda: stub.Renew(pb.RenewRequest(lease_id=lease.lease_id)))


@pytest.mark.parametrize("request_fields", [
    {"ttl_s": -1.0}, {"ttl_s": 0.0}, {"ttl_s": float("nan")}, {"ttl_s": 1e9},
    {"timeout_s": -2.0}, {"target_tier": pb.TIER_DISK}, {"target_tier": 9},
])
def test_bad_acquire_requests_take_no_lease(server: ServerThread, stub: pb_grpc.TierdStub,
                                            request_fields: dict[str, object]) -> None:
    reg = register(stub)
    keys = keys_for(reg, 2)
    stub.PutPages(put_stream(reg.ns_id, keys, pages_for(2)))
    expect_status(Code.INVALID_ARGUMENT, lambda: stub.Acquire(
        pb.AcquireRequest(ns_id=reg.ns_id, keys=keys, **request_fields)))
    stats = server.store.stats()
    assert stats.leases == 0 and stats.tiers[Tier.HBM].pages == 0  # nothing was moved up either


def fill_hbm_slots(reg: pb.RegisterResponse, slots: list[int], pages: list[bytes]) -> None:
    """Write ``pages`` into ``slots`` of the namespace's hbm region, as a worker's kernels would."""
    handle = hbm_handle(reg)
    region = map_region(handle)
    for slot, page in zip(slots, pages):
        start = handle.offset_bytes + slot * PAGE_BYTES
        region[start:start + PAGE_BYTES] = page
    region.release()


def test_allocate_fill_commit_then_read_back(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    keys, pages = keys_for(reg, 2), pages_for(2, seed=5)
    lease = stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=2)).lease
    assert lease.kind == pb.LEASE_KIND_FILL and len(lease.slots) == 2 and not lease.keys
    fill_hbm_slots(reg, lease.slots, pages)
    expect_status(Code.INVALID_ARGUMENT, lambda: stub.Commit(
        pb.CommitRequest(lease_id=lease.lease_id, keys=keys, slots=lease.slots[:1])))
    reply = stub.Commit(pb.CommitRequest(lease_id=lease.lease_id, keys=keys, slots=lease.slots))
    assert reply.num_committed == 2
    assert get_pages(stub, reg.ns_id, keys)[1] == b"".join(pages)
    stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id))
    assert server.store.stats().leases == 0


def test_allocate_in_dram_fills_dram_slots(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    keys, pages = keys_for(reg, 2), pages_for(2, seed=9)
    lease = stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=2, tier=pb.TIER_DRAM)).lease
    assert lease.tier == pb.TIER_DRAM and lease.kind == pb.LEASE_KIND_FILL
    handle = next(h for h in reg.regions if h.tier == pb.TIER_DRAM)
    region = map_region(handle)
    for slot, page in zip(lease.slots, pages):
        region[slot * PAGE_BYTES:(slot + 1) * PAGE_BYTES] = page
    region.release()
    reply = stub.Commit(pb.CommitRequest(lease_id=lease.lease_id, keys=keys, slots=lease.slots,
                                         release_lease=True))
    assert reply.num_committed == 2 and server.store.stats().leases == 0
    assert stub.Lookup(pb.LookupRequest(ns_id=reg.ns_id, keys=keys)).tiers == [pb.TIER_DRAM] * 2
    assert get_pages(stub, reg.ns_id, keys)[1] == b"".join(pages)
    details = expect_status(Code.INVALID_ARGUMENT, lambda: stub.Allocate(
        pb.AllocateRequest(ns_id=reg.ns_id, num_pages=1, tier=pb.TIER_DISK)))
    assert "tier" in details and server.store.stats().leases == 0


def test_allocate_and_commit_errors(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    slots = hbm_handle(reg).num_slots
    expect_status(Code.INVALID_ARGUMENT, lambda: stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id)))
    expect_status(Code.INVALID_ARGUMENT, lambda: stub.Allocate(
        pb.AllocateRequest(ns_id=reg.ns_id, num_pages=slots + 1)))
    assert server.store.stats().leases == 0
    everything = stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=slots)).lease
    details = expect_status(Code.RESOURCE_EXHAUSTED, lambda: stub.Allocate(
        pb.AllocateRequest(ns_id=reg.ns_id, num_pages=1)))
    assert "hbm slots" in details
    stub.Release(pb.ReleaseRequest(lease_id=everything.lease_id))
    keys = keys_for(reg, 1)
    stub.PutPages(put_stream(reg.ns_id, keys, pages_for(1)))
    read = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys)).lease
    expect_status(Code.FAILED_PRECONDITION, lambda: stub.Commit(
        pb.CommitRequest(lease_id=read.lease_id, keys=keys, slots=read.slots)))
    expect_status(Code.NOT_FOUND, lambda: stub.Commit(
        pb.CommitRequest(lease_id=read.lease_id + 1, keys=keys, slots=read.slots)))


def test_lease_calls_stay_consistent_under_concurrent_clients(server: ServerThread) -> None:
    """Several clients at once, each: Allocate, fill, Commit ending the lease, Acquire releasing
    its previous read lease, read the leased slot, Lookup, Renew; pages get evicted meanwhile (the
    hbm region holds 32), so calls run both on the loop and on the pool."""
    num_clients, rounds = 4, 30
    with open_channel(server) as channel:
        reg = register(pb_grpc.TierdStub(channel))
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            with open_channel(server) as channel:
                stub = pb_grpc.TierdStub(channel)
                region, handle = map_region(hbm_handle(reg)), hbm_handle(reg)
                keys = keys_for(reg, rounds, start=index * 100_000)
                pages = pages_for(rounds, seed=index + 1)
                held = 0
                for key, page in zip(keys, pages):
                    fill_lease = stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=1)).lease
                    start = handle.offset_bytes + fill_lease.slots[0] * PAGE_BYTES
                    region[start:start + PAGE_BYTES] = page
                    assert stub.Commit(pb.CommitRequest(lease_id=fill_lease.lease_id, keys=[key],
                                                        slots=fill_lease.slots,
                                                        release_lease=True)).num_committed == 1
                    read = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=[key],
                                                          release_lease_ids=[held] if held else [])).lease
                    assert list(read.keys) == [key] and read.tier == pb.TIER_HBM
                    start = handle.offset_bytes + read.slots[0] * PAGE_BYTES
                    assert region[start:start + PAGE_BYTES] == page  # pinned: not evicted meanwhile
                    assert stub.Lookup(pb.LookupRequest(ns_id=reg.ns_id, keys=[key])).num_hits == 1
                    stub.Renew(pb.RenewRequest(lease_id=read.lease_id))
                    held = read.lease_id
                stub.Release(pb.ReleaseRequest(lease_id=held))
                region.release()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(num_clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    with open_channel(server) as channel:
        stub = pb_grpc.TierdStub(channel)
        assert stub.Stats(pb.StatsRequest()).leases == 0
        for index in range(num_clients):
            keys = keys_for(reg, rounds, start=index * 100_000)
            assert get_pages(stub, reg.ns_id, keys)[1] == b"".join(pages_for(rounds, seed=index + 1))


def test_concurrent_releases_of_one_lease_end_it_once(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    keys = keys_for(reg, 2)
    stub.PutPages(put_stream(reg.ns_id, keys, pages_for(2)))
    lease = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys)).lease
    codes: list[grpc.StatusCode] = []

    def release() -> None:
        try:
            stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id))
            codes.append(Code.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())

    threads = [threading.Thread(target=release) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(codes, key=str) == sorted([Code.OK] + [Code.NOT_FOUND] * 7, key=str)
    assert stub.Stats(pb.StatsRequest()).leases == 0
    # The pages were unpinned once: they are still there and can be leased again.
    assert len(stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys)).lease.slots) == 2


def test_prefetch_moves_pages_up(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    keys = keys_for(reg, 3)
    stub.PutPages(put_stream(reg.ns_id, keys, pages_for(3)))
    assert stub.Prefetch(pb.PrefetchRequest(ns_id=reg.ns_id, keys=keys)).num_scheduled == 3
    lease = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys, timeout_s=10)).lease
    assert len(lease.slots) == 3
    expect_status(Code.INVALID_ARGUMENT, lambda: stub.Prefetch(
        pb.PrefetchRequest(ns_id=reg.ns_id, keys=keys, target_tier=pb.TIER_DISK)))


# -- Stats, Flush, durability ----------------------------------------------------------------------------
def test_stats_counts_pages_per_tier(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    stub.PutPages(put_stream(reg.ns_id, keys_for(reg, 3), pages_for(3)))
    stats = stub.Stats(pb.StatsRequest())
    assert [t.tier for t in stats.tiers] == [pb.TIER_HBM, pb.TIER_DRAM, pb.TIER_DISK]
    dram = stats.tiers[1]
    assert dram.pages == 3 and dram.used_bytes == 3 * PAGE_BYTES
    assert dram.capacity_bytes == server.config.dram.capacity_bytes
    assert stats.namespaces == 1 and stats.leases == 0 and stats.checksum_failures == 0
    assert stats.write_policy == pb.WRITE_POLICY_WRITE_BACK and stats.uptime_s > 0
    assert stats.server.rpcs_in_flight == 1  # this Stats call itself
    assert stats.server.device == "cpu"


def test_flush_writes_dirty_pages_and_times_out_with_deadline_exceeded(
        server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    stub.PutPages(put_stream(reg.ns_id, keys_for(reg, 20), pages_for(20)))
    assert stub.Flush(pb.FlushRequest(timeout_s=30.0)).num_flushed == 20
    assert store_pages(server)[Tier.DISK] == 20
    stub.PutPages(put_stream(reg.ns_id, keys_for(reg, 20, start=5000), pages_for(20)))
    expect_status(Code.DEADLINE_EXCEEDED, lambda: stub.Flush(pb.FlushRequest(timeout_s=0.0)))


def test_write_through_put_waits_until_durable(write_through_server: ServerThread) -> None:
    with open_channel(write_through_server) as channel:
        stub = pb_grpc.TierdStub(channel)
        reg = register(stub)
        reply = stub.PutPages(put_stream(reg.ns_id, keys_for(reg, 4), pages_for(4),
                                         wait_durable=True, durable_timeout_s=30.0))
        assert reply.HasField("durable_ticket") and reply.durable
        assert store_pages(write_through_server)[Tier.DISK] == 4
        again = stub.PutPages(put_stream(reg.ns_id, keys_for(reg, 2, start=1000), pages_for(2)))
        assert stub.WaitDurable(pb.WaitDurableRequest(ticket=again.durable_ticket,
                                                      timeout_s=30.0)).durable
        # Once durable, a check that may not wait says so too.
        assert stub.WaitDurable(pb.WaitDurableRequest(ticket=again.durable_ticket, timeout_s=0.0)).durable
        expect_status(Code.INVALID_ARGUMENT, lambda: stub.WaitDurable(
            pb.WaitDurableRequest(ticket=again.durable_ticket + 1000, timeout_s=0.0)))
        expect_status(Code.INVALID_ARGUMENT, lambda: stub.WaitDurable(
            pb.WaitDurableRequest(ticket=again.durable_ticket, timeout_s=-1.0)))


def test_write_through_commit_returns_a_ticket_and_can_wait_until_durable(
        write_through_server: ServerThread) -> None:
    with open_channel(write_through_server) as channel:
        stub = pb_grpc.TierdStub(channel)
        reg = register(stub)
        keys, pages = keys_for(reg, 3), pages_for(3, seed=9)
        lease = stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=3)).lease
        fill_hbm_slots(reg, lease.slots, pages)
        expect_status(Code.INVALID_ARGUMENT, lambda: stub.Commit(pb.CommitRequest(
            lease_id=lease.lease_id, keys=keys, slots=lease.slots, wait_durable=True, durable_timeout_s=-2.0)))
        assert store_pages(write_through_server)[Tier.HBM] == 0  # the rejected commit bound nothing
        waited = stub.Commit(pb.CommitRequest(lease_id=lease.lease_id, keys=keys[:2], slots=lease.slots[:2],
                                              wait_durable=True, durable_timeout_s=30.0))
        assert waited.num_committed == 2 and waited.HasField("durable_ticket") and waited.durable
        assert store_pages(write_through_server)[Tier.DISK] == 2
        later = stub.Commit(pb.CommitRequest(lease_id=lease.lease_id, keys=keys[2:], slots=lease.slots[2:]))
        assert later.HasField("durable_ticket") and not later.durable  # not asked to wait
        assert stub.WaitDurable(pb.WaitDurableRequest(ticket=later.durable_ticket, timeout_s=30.0)).durable
        stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id))


def test_write_back_commit_has_no_ticket(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = register(stub)
    lease = stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=1)).lease
    reply = stub.Commit(pb.CommitRequest(lease_id=lease.lease_id, keys=keys_for(reg, 1), slots=lease.slots,
                                         wait_durable=True))
    assert reply.num_committed == 1 and not reply.HasField("durable_ticket") and not reply.durable


# -- health, reflection ------------------------------------------------------------------------------------
def test_health_and_reflection(server: ServerThread) -> None:
    with open_channel(server) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tierd.v1.Tierd"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]))
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert {"tierd.v1.Tierd", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("error", [cls for cls in vars(tierd_errors).values()
                                   if isinstance(cls, type) and issubclass(cls, tierd_errors.TierdError)]
                         + [PermissionDenied])
def test_every_typed_error_maps_to_the_code_it_names(error: type[tierd_errors.TierdError]) -> None:
    expected = "INTERNAL" if error is tierd_errors.TierdError else error.status_name
    assert status_code_of(error("x")).name == expected
