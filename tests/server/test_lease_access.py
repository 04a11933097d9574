"""Leases ended by the calls that need them next: Acquire's release_lease_ids and Commit's
release_lease, checked like a Release (tenant, session); old clients' calls unchanged."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from server_harness import (
    ALPHA_TOKEN,
    BRAVO_TOKEN,
    PAGE_BYTES,
    PAGE_SPEC,
    ServerThread,
    keys_for,
    make_server,
    open_channel,
    pages_for,
    put_stream,
)

from tierd.server import SESSION_METADATA_KEY
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc

Code = grpc.StatusCode
Metadata = tuple[tuple[str, str], ...]
AS_A: Metadata = (("authorization", f"Bearer {ALPHA_TOKEN}"),)
AS_B: Metadata = (("authorization", f"Bearer {BRAVO_TOKEN}"),)


def expect_status(code: grpc.StatusCode, call: Callable[[], object]) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    return info.value.details()


def leases(stub: pb_grpc.TierdStub, md: Metadata = ()) -> int:
    return stub.Stats(pb.StatsRequest(), metadata=md).leases


def alive(stub: pb_grpc.TierdStub, lease_id: int, md: Metadata = ()) -> bool:
    """Whether the lease exists (a Renew finds it); renewing changes only its expiry."""
    try:
        stub.Renew(pb.RenewRequest(lease_id=lease_id), metadata=md)
    except grpc.RpcError as exc:
        assert exc.code() == Code.NOT_FOUND, exc.details()
        return False
    return True


def with_pages(stub: pb_grpc.TierdStub, count: int = 3, md: Metadata = ()
               ) -> tuple[pb.RegisterResponse, list[bytes]]:
    reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC), metadata=md)
    keys = keys_for(reg, count)
    stub.PutPages(put_stream(reg.ns_id, keys, pages_for(count)), metadata=md)
    return reg, keys


def open_session(stub: pb_grpc.TierdStub, md: Metadata = ()) -> tuple[Metadata, grpc.Call]:
    events = stub.Session(pb.SessionRequest(client_name="t", client_pid=os.getpid()), metadata=md)
    return md + ((SESSION_METADATA_KEY, next(events).session_id),), events


# -- Acquire.release_lease_ids -------------------------------------------------------------------------
def test_acquire_releases_the_callers_leases_first(stub: pb_grpc.TierdStub) -> None:
    reg, keys = with_pages(stub)
    first = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys[:2])).lease
    other = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys[2:])).lease
    fill = stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=2)).lease
    assert leases(stub) == 3
    again = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys, release_lease_ids=[
        first.lease_id, fill.lease_id, first.lease_id])).lease  # a repeat is released once
    assert list(again.keys) == keys and leases(stub) == 2
    assert not alive(stub, first.lease_id) and not alive(stub, fill.lease_id)
    assert alive(stub, other.lease_id)
    # The fill lease's slots went back: every hbm slot but the 3 leased pages' can be allocated.
    hbm = next(h for h in reg.regions if h.tier == pb.TIER_HBM)
    everything = stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=hbm.num_slots - 3)).lease
    stub.Release(pb.ReleaseRequest(lease_id=everything.lease_id))


def test_unknown_and_expired_lease_ids_are_skipped(short_tmp: Path) -> None:
    srv = make_server(short_tmp, maintenance_interval_s=0.05)
    try:
        with open_channel(srv) as channel:
            stub = pb_grpc.TierdStub(channel)
            reg, keys = with_pages(stub)
            short = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys, ttl_s=0.05)).lease
            deadline = time.monotonic() + 10
            while leases(stub) and time.monotonic() < deadline:
                time.sleep(0.05)  # maintenance expires it
            assert leases(stub) == 0
            lease = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys, release_lease_ids=[
                short.lease_id, 4242, 0])).lease
            assert list(lease.keys) == keys and leases(stub) == 1
    finally:
        srv.stop()


def test_too_many_lease_ids_are_refused_and_change_nothing(server: ServerThread,
                                                           stub: pb_grpc.TierdStub) -> None:
    reg, keys = with_pages(stub)
    mine = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys)).lease
    ids = [mine.lease_id] * (server.settings.max_keys_per_request + 1)
    details = expect_status(Code.INVALID_ARGUMENT, lambda: stub.Acquire(pb.AcquireRequest(
        ns_id=reg.ns_id, keys=keys, release_lease_ids=ids)))
    assert "release_lease_ids" in details and "Release" in details
    assert alive(stub, mine.lease_id) and leases(stub) == 1


def test_a_bad_acquire_releases_nothing(stub: pb_grpc.TierdStub) -> None:
    reg, keys = with_pages(stub)
    mine = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys)).lease
    for bad in ({"ttl_s": -1.0}, {"target_tier": pb.TIER_DISK}, {"keys": [keys[0], keys[0]]}):
        request = pb.AcquireRequest(ns_id=reg.ns_id, keys=keys, release_lease_ids=[mine.lease_id])
        for field, value in bad.items():
            if field == "keys":
                request.ClearField("keys")
                request.keys.extend(value)  # type: ignore[arg-type]
            else:
                setattr(request, field, value)
        expect_status(Code.INVALID_ARGUMENT, lambda r=request: stub.Acquire(r))
        assert alive(stub, mine.lease_id) and leases(stub) == 1


def test_another_sessions_lease_fails_the_whole_acquire(stub: pb_grpc.TierdStub) -> None:
    reg, keys = with_pages(stub)
    md1, events1 = open_session(stub)
    md2, events2 = open_session(stub)
    try:
        theirs = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys[:1]), metadata=md1).lease
        mine = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys[1:]), metadata=md2).lease
        # Another session's lease (index 1), and a session's lease asked for without one (0).
        for md, index in ((md2, 1), ((), 0)):
            details = expect_status(Code.PERMISSION_DENIED, lambda m=md: stub.Acquire(
                pb.AcquireRequest(ns_id=reg.ns_id, keys=keys, release_lease_ids=[
                    mine.lease_id, theirs.lease_id]), metadata=m))
            assert f"release_lease_ids[{index}]" in details and "nothing was released" in details
            assert leases(stub) == 2
        assert alive(stub, mine.lease_id, md2) and alive(stub, theirs.lease_id, md1)
        # Its own session's lease is released; the new lease belongs to that session too.
        again = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys[:1], release_lease_ids=[
            theirs.lease_id]), metadata=md1).lease
        assert not alive(stub, theirs.lease_id, md1) and leases(stub) == 2
        expect_status(Code.PERMISSION_DENIED, lambda: stub.Release(
            pb.ReleaseRequest(lease_id=again.lease_id), metadata=md2))
    finally:
        events1.cancel()
        events2.cancel()


def test_another_tenants_lease_fails_the_whole_acquire(tenant_server: ServerThread) -> None:
    with open_channel(tenant_server) as channel:
        stub = pb_grpc.TierdStub(channel)
        reg_a, keys_a = with_pages(stub, md=AS_A)
        reg_b, keys_b = with_pages(stub, md=AS_B)
        theirs = stub.Acquire(pb.AcquireRequest(ns_id=reg_a.ns_id, keys=keys_a), metadata=AS_A).lease
        before = stub.Lookup(pb.LookupRequest(ns_id=reg_b.ns_id, keys=keys_b), metadata=AS_B)
        details = expect_status(Code.PERMISSION_DENIED, lambda: stub.Acquire(pb.AcquireRequest(
            ns_id=reg_b.ns_id, keys=keys_b, release_lease_ids=[theirs.lease_id]), metadata=AS_B))
        assert "release_lease_ids[0]" in details and "another tenant" in details
        assert leases(stub, AS_A) == 1 and alive(stub, theirs.lease_id, AS_A)  # neither changed
        assert stub.Lookup(pb.LookupRequest(ns_id=reg_b.ns_id, keys=keys_b), metadata=AS_B) == before
        # The tenant's own lease is released as asked.
        mine = stub.Acquire(pb.AcquireRequest(ns_id=reg_b.ns_id, keys=keys_b), metadata=AS_B).lease
        stub.Acquire(pb.AcquireRequest(ns_id=reg_b.ns_id, keys=keys_b, release_lease_ids=[
            mine.lease_id]), metadata=AS_B)
        assert not alive(stub, mine.lease_id, AS_B) and leases(stub, AS_A) == 2


# -- Commit.release_lease ------------------------------------------------------------------------------------
def fill(reg: pb.RegisterResponse, slots: list[int], pages: list[bytes]) -> None:
    """Write pages into hbm slots of the namespace's mapped region, as a worker's kernels would."""
    from tierd import wire
    from tierd_client.shm import map_shm

    handle = next(h for h in reg.regions if h.tier == pb.TIER_HBM)
    region = memoryview(map_shm(wire.handle_from_pb(handle)).array().reshape(-1))
    for slot, page in zip(slots, pages):
        start = handle.offset_bytes + slot * PAGE_BYTES
        region[start:start + PAGE_BYTES] = page
    region.release()


def test_commit_can_end_its_lease_and_free_its_open_slots(stub: pb_grpc.TierdStub) -> None:
    reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
    hbm = next(h for h in reg.regions if h.tier == pb.TIER_HBM)
    keys, pages = keys_for(reg, 1), pages_for(1, seed=4)
    lease = stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=3)).lease
    fill(reg, list(lease.slots[:1]), pages)
    expect_status(Code.INVALID_ARGUMENT, lambda: stub.Commit(pb.CommitRequest(
        lease_id=lease.lease_id, keys=keys, slots=[10_000], release_lease=True)))
    assert alive(stub, lease.lease_id)  # a rejected commit ends nothing
    reply = stub.Commit(pb.CommitRequest(lease_id=lease.lease_id, keys=keys, slots=lease.slots[:1],
                                         release_lease=True))
    assert reply.num_committed == 1 and leases(stub) == 0 and not alive(stub, lease.lease_id)
    expect_status(Code.NOT_FOUND, lambda: stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id)))
    # The two open slots went back: all slots but the committed page's are free.
    rest = stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=hbm.num_slots - 1)).lease
    assert lease.slots[0] not in rest.slots
    assert b"".join(m.data for m in stub.GetPages(pb.GetPagesRequest(ns_id=reg.ns_id, keys=keys))) == pages[0]


def test_old_clients_commit_keeps_the_lease(stub: pb_grpc.TierdStub) -> None:
    reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
    keys, pages = keys_for(reg, 2), pages_for(2, seed=6)
    lease = stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=2)).lease
    fill(reg, list(lease.slots), pages)
    assert stub.Commit(pb.CommitRequest(lease_id=lease.lease_id, keys=keys[:1],
                                        slots=lease.slots[:1])).num_committed == 1
    assert alive(stub, lease.lease_id)
    assert stub.Commit(pb.CommitRequest(lease_id=lease.lease_id, keys=keys[1:],
                                        slots=lease.slots[1:])).num_committed == 1
    stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id))
    assert leases(stub) == 0


def test_commit_release_lease_of_another_session_is_denied(stub: pb_grpc.TierdStub) -> None:
    reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
    md1, events = open_session(stub)
    try:
        lease = stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=1), metadata=md1).lease
        expect_status(Code.PERMISSION_DENIED, lambda: stub.Commit(pb.CommitRequest(
            lease_id=lease.lease_id, keys=keys_for(reg, 1), slots=lease.slots, release_lease=True)))
        assert alive(stub, lease.lease_id, md1)
        stub.Commit(pb.CommitRequest(lease_id=lease.lease_id, keys=keys_for(reg, 1),
                                     slots=lease.slots, release_lease=True), metadata=md1)
        assert leases(stub) == 0
    finally:
        events.cancel()
