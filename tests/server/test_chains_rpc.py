"""parent_key over the wire: PutPages and Commit name the page before their first, so prefix-aware
eviction sees one chain across calls; a malformed key is INVALID_ARGUMENT and changes nothing; a
parent that is not cached breaks the chain, whose pages then go first."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from server_harness import (
    PAGE_BYTES,
    PAGE_SPEC,
    ServerThread,
    keys_for,
    make_server,
    pages_for,
    put_stream,
)

from tierd import wire
from tierd.config import EvictionPolicy
from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc
from tierd_client.shm import map_shm

Code = grpc.StatusCode
# The first namespace of the harness's store: 32 hbm and 64 dram slots; background eviction
# starts above 90% of a region and stops at 75%.
DRAM_LOW_PAGES = 48
HBM_LOW_PAGES = 24


@pytest.fixture
def server(short_tmp: Path) -> Iterator[ServerThread]:
    srv = make_server(short_tmp, eviction_policy=EvictionPolicy.PREFIX_AWARE)
    yield srv
    srv.stop()



def expect_status(code: grpc.StatusCode, call: Callable[[], object]) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


def tiers_of(stub: pb_grpc.TierdStub, ns_id: int, keys: list[bytes]) -> list[int]:
    reply = stub.Lookup(pb.LookupRequest(ns_id=ns_id, keys=keys))
    assert reply.num_hits == len(keys)
    return list(reply.tiers)


def settle(server: ServerThread, tier: Tier, low_pages: int) -> None:
    """Wait for background eviction to bring ``tier`` down to ``low_pages`` pages (a round of
    our own beside it would evict as much again)."""
    deadline_s = time.monotonic() + 10.0
    while server.store.stats().tiers[tier].pages > low_pages:
        assert time.monotonic() < deadline_s, "background eviction did not reach the low watermark"
        time.sleep(0.01)


def commit_into_hbm(stub: pb_grpc.TierdStub, reg: pb.RegisterResponse, keys: list[bytes],
                    pages: list[bytes], **request: object) -> pb.CommitResponse:
    lease = stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=len(keys))).lease
    handle = next(h for h in reg.regions if h.tier == pb.TIER_HBM)
    region = memoryview(map_shm(wire.handle_from_pb(handle)).array().reshape(-1))
    for slot, page in zip(lease.slots, pages):
        start = handle.offset_bytes + slot * PAGE_BYTES
        region[start:start + PAGE_BYTES] = page
    region.release()
    return stub.Commit(pb.CommitRequest(lease_id=lease.lease_id, keys=keys, slots=lease.slots,
                                        release_lease=True, **request))


def test_puts_naming_their_parent_are_one_chain_evicted_from_its_end(
        server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
    chain, other = keys_for(reg, 32), keys_for(reg, 28, start=100_000)
    stub.PutPages(put_stream(reg.ns_id, chain[:16], pages_for(16)))
    stub.PutPages(put_stream(reg.ns_id, chain[16:], pages_for(16), parent_key=chain[15]))
    stub.PutPages(put_stream(reg.ns_id, other, pages_for(28)))
    settle(server, Tier.DRAM, DRAM_LOW_PAGES)
    tiers = tiers_of(stub, reg.ns_id, chain)
    # Evicted from its end: a cached prefix in dram, the rest on disk (LRU would take its head,
    # two unnamed chains the first put's end first).
    assert tiers == sorted(tiers) and tiers[0] == pb.TIER_DRAM and tiers[-1] == pb.TIER_DISK
    stats = stub.Stats(pb.StatsRequest())
    assert stats.eviction_policy == "prefix_aware" and stats.evictions_with_children == 0


def test_commits_naming_their_parent_are_one_chain(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
    chain, other = keys_for(reg, 8), keys_for(reg, 22, start=100_000)
    assert commit_into_hbm(stub, reg, chain[:4], pages_for(4)).num_committed == 4
    assert commit_into_hbm(stub, reg, chain[4:], pages_for(4, seed=1),
                           parent_key=chain[3]).num_committed == 4
    stub.PutPages(put_stream(reg.ns_id, other, pages_for(22), tier=pb.TIER_HBM))
    settle(server, Tier.HBM, HBM_LOW_PAGES)
    tiers = tiers_of(stub, reg.ns_id, chain)
    assert tiers == sorted(tiers) and tiers[0] == pb.TIER_HBM and tiers[-1] == pb.TIER_DRAM
    assert stub.Stats(pb.StatsRequest()).evictions_with_children == 0


def test_a_malformed_parent_key_is_invalid_argument_and_changes_nothing(
        server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
    keys = keys_for(reg, 2)
    details = expect_status(Code.INVALID_ARGUMENT, lambda: stub.PutPages(
        put_stream(reg.ns_id, keys, pages_for(2), parent_key=b"x" * 15)))
    assert "parent_key" in details and "16 bytes" in details and "15 bytes" in details
    lease = stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=2)).lease
    details = expect_status(Code.INVALID_ARGUMENT, lambda: stub.Commit(pb.CommitRequest(
        lease_id=lease.lease_id, keys=keys, slots=lease.slots, parent_key=b"")))
    assert "CommitRequest.parent_key" in details and "0 bytes" in details
    assert stub.Lookup(pb.LookupRequest(ns_id=reg.ns_id, keys=keys)).num_hits == 0
    assert server.store.stats().leases == 1  # the lease is still open: nothing was bound
    stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id))


def test_a_parent_that_is_not_cached_breaks_the_chain_whose_pages_go_first(
        server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
    old, orphans, new = keys_for(reg, 40), keys_for(reg, 2, start=50_000), keys_for(reg, 18, start=90_000)
    stub.PutPages(put_stream(reg.ns_id, old, pages_for(40)))
    never_put = keys_for(reg, 1, start=70_000)[0]
    reply = stub.PutPages(put_stream(reg.ns_id, orphans, pages_for(2), parent_key=never_put))
    assert reply.num_stored == 2  # accepted: the pages are cached, only unreachable by Lookup
    stub.PutPages(put_stream(reg.ns_id, new, pages_for(18)))
    settle(server, Tier.DRAM, DRAM_LOW_PAGES)
    assert tiers_of(stub, reg.ns_id, orphans) == [pb.TIER_DISK] * 2   # first, though recent
    assert tiers_of(stub, reg.ns_id, new) == [pb.TIER_DRAM] * 18
    tiers = tiers_of(stub, reg.ns_id, old)
    assert tiers == sorted(tiers) and tiers[-1] == pb.TIER_DISK
