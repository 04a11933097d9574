"""Tenants: a bearer token names the caller's tenant; a tenant only touches its own namespaces and
leases; quotas size its regions; without tenants the daemon stays open. Real server and store."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
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
    serving_settings,
)

from tierd.config import WritePolicy
from tierd.errors import Unauthenticated
from tierd.server import SESSION_METADATA_KEY
from tierd.server.auth import Authenticator, TenantToken, token_digest
from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc
from tierd_client import (
    ClientOptions,
    InvalidArgumentError,
    PageSpec,
    PermissionDeniedError,
    TierClient,
    UnauthenticatedError,
)

Code = grpc.StatusCode
TOKEN_A = "alpha-secret-token-0123456789"
TOKEN_B = "bravo-secret-token-0123456789"
Metadata = tuple[tuple[str, str], ...]
AS_A: Metadata = (("authorization", f"Bearer {TOKEN_A}"),)
AS_B: Metadata = (("authorization", f"Bearer {TOKEN_B}"),)
QUOTA_HBM_PAGES, QUOTA_DRAM_PAGES = 8, 16


@pytest.fixture
def tenant_server(short_tmp: Path) -> Iterator[ServerThread]:
    """Tenants alpha (quotas: 8 hbm and 16 dram pages for all its namespaces) and bravo (no quota)."""
    tokens = (TenantToken("alpha", token_digest(TOKEN_A)), TenantToken("bravo", token_digest(TOKEN_B)))
    srv = make_server(short_tmp, serving_settings(tenant_tokens=tokens),
                      tenant_quotas={"alpha": {Tier.HBM: QUOTA_HBM_PAGES * PAGE_BYTES,
                                               Tier.DRAM: QUOTA_DRAM_PAGES * PAGE_BYTES}})
    yield srv
    srv.stop()


@pytest.fixture
def tstub(tenant_server: ServerThread) -> Iterator[pb_grpc.TierdStub]:
    with open_channel(tenant_server) as channel:
        yield pb_grpc.TierdStub(channel)


def register(stub: pb_grpc.TierdStub, md: Metadata, tenant: str = "") -> pb.RegisterResponse:
    return stub.Register(pb.RegisterRequest(spec=PAGE_SPEC, tenant=tenant), metadata=md)


def alpha_with_pages(stub: pb_grpc.TierdStub, count: int = 3) -> tuple[pb.RegisterResponse, list[bytes]]:
    reg = register(stub, AS_A)
    keys = keys_for(reg, count)
    stub.PutPages(put_stream(reg.ns_id, keys, pages_for(count)), metadata=AS_A)
    return reg, keys


def snapshot(srv: ServerThread) -> tuple[int, int, dict[Tier, int]]:
    """Namespaces, leases and pages per tier: what a rejected request must leave unchanged."""
    stats = srv.store.stats()
    return stats.namespaces, stats.leases, {tier: stats.tiers[tier].pages for tier in stats.tiers}


def expect_status(code: grpc.StatusCode, call: Callable[[], object]) -> str:
    """Run ``call`` (reading a stream it returns); it must fail with ``code``. Returns the details."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            list(result)  # type: ignore[call-overload]
    assert info.value.code() == code, info.value.details()
    return info.value.details()


# -- UNAUTHENTICATED ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("md", "fragment"), [
    ((), "carries no token"),
    ((("authorization", "Bearer not-a-known-token-0000"),), "matches no tenant"),
    ((("authorization", f"Basic {TOKEN_A}"),), "not of the form 'Bearer <token>'"),
    ((("authorization", "Bearer "),), "not of the form 'Bearer <token>'"),
    ((("authorization", f"Bearer {TOKEN_A}"), ("authorization", f"Bearer {TOKEN_B}")),
     "send exactly one"),
])
def test_calls_without_a_valid_token_are_unauthenticated_and_change_nothing(
        tenant_server: ServerThread, tstub: pb_grpc.TierdStub, md: Metadata, fragment: str) -> None:
    reg, keys = alpha_with_pages(tstub)
    before = snapshot(tenant_server)
    calls = {
        "Register": lambda: register(tstub, md, tenant="alpha"),
        "Lookup": lambda: tstub.Lookup(pb.LookupRequest(ns_id=reg.ns_id, keys=keys), metadata=md),
        "Delete": lambda: tstub.Delete(pb.DeleteRequest(ns_id=reg.ns_id, keys=keys), metadata=md),
        "PutPages": lambda: tstub.PutPages(put_stream(reg.ns_id, keys_for(reg, 2, start=999),
                                                      pages_for(2)), metadata=md),
        "GetPages": lambda: tstub.GetPages(pb.GetPagesRequest(ns_id=reg.ns_id, keys=keys), metadata=md),
        "Allocate": lambda: tstub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=1), metadata=md),
        "Stats": lambda: tstub.Stats(pb.StatsRequest(), metadata=md),
        "Flush": lambda: tstub.Flush(pb.FlushRequest(), metadata=md),
        "Session": lambda: next(tstub.Session(pb.SessionRequest(client_name="x"), metadata=md)),
    }
    for name, call in calls.items():
        details = expect_status(Code.UNAUTHENTICATED, call)
        assert fragment in details, (name, details)
        assert TOKEN_A not in details and TOKEN_B not in details
    assert snapshot(tenant_server) == before
    assert tstub.Stats(pb.StatsRequest(), metadata=AS_A).server.sessions == 0
    assert tstub.Lookup(pb.LookupRequest(ns_id=reg.ns_id, keys=keys), metadata=AS_A).num_hits == 3


def test_the_missing_token_message_says_how_to_send_one(tstub: pb_grpc.TierdStub) -> None:
    details = expect_status(Code.UNAUTHENTICATED, lambda: tstub.Stats(pb.StatsRequest()))
    assert "authorization: Bearer <token>" in details and "TIERD_TOKEN" in details


def test_health_and_reflection_need_no_token(tenant_server: ServerThread) -> None:
    with open_channel(tenant_server) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tierd.v1.Tierd"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = {s.name for s in next(answers).list_services_response.service}
        assert "tierd.v1.Tierd" in services


# -- the token's tenant is the caller's ---------------------------------------------------------------
def test_register_uses_the_tokens_tenant_and_refuses_another(
        tenant_server: ServerThread, tstub: pb_grpc.TierdStub) -> None:
    alpha = register(tstub, AS_A)
    assert alpha.tenant == "alpha"
    assert register(tstub, AS_A, tenant="alpha").ns_id == alpha.ns_id
    before = snapshot(tenant_server)
    details = expect_status(Code.PERMISSION_DENIED, lambda: register(tstub, AS_B, tenant="alpha"))
    assert "'bravo'" in details and "'alpha'" in details and "leave RegisterRequest.tenant empty" in details
    expect_status(Code.PERMISSION_DENIED, lambda: register(tstub, AS_A, tenant="default"))
    assert snapshot(tenant_server) == before
    bravo = register(tstub, AS_B)
    assert bravo.tenant == "bravo" and bravo.ns_id != alpha.ns_id
    assert bravo.fingerprint != alpha.fingerprint  # same spec, different key space
    assert {h.name for h in bravo.regions}.isdisjoint(h.name for h in alpha.regions)


def test_another_tenants_namespace_is_permission_denied_and_unchanged(
        tenant_server: ServerThread, tstub: pb_grpc.TierdStub) -> None:
    reg, keys = alpha_with_pages(tstub)
    register(tstub, AS_B)
    before = snapshot(tenant_server)
    ns = reg.ns_id
    calls = {
        "Lookup": lambda: tstub.Lookup(pb.LookupRequest(ns_id=ns, keys=keys), metadata=AS_B),
        "Prefetch": lambda: tstub.Prefetch(pb.PrefetchRequest(ns_id=ns, keys=keys), metadata=AS_B),
        "Acquire": lambda: tstub.Acquire(pb.AcquireRequest(ns_id=ns, keys=keys), metadata=AS_B),
        "Allocate": lambda: tstub.Allocate(pb.AllocateRequest(ns_id=ns, num_pages=2), metadata=AS_B),
        "Delete": lambda: tstub.Delete(pb.DeleteRequest(ns_id=ns, keys=keys), metadata=AS_B),
        "GetPages": lambda: tstub.GetPages(pb.GetPagesRequest(ns_id=ns, keys=keys), metadata=AS_B),
        "PutPages": lambda: tstub.PutPages(put_stream(ns, keys_for(reg, 2, start=999), pages_for(2)),
                                           metadata=AS_B),
    }
    for name, call in calls.items():
        details = expect_status(Code.PERMISSION_DENIED, call)
        assert f"namespace {ns} belongs to another tenant" in details, (name, details)
    assert snapshot(tenant_server) == before
    got = b"".join(m.data for m in tstub.GetPages(pb.GetPagesRequest(ns_id=ns, keys=keys), metadata=AS_A))
    assert got == b"".join(pages_for(3))


def test_unknown_namespaces_are_still_not_found(tstub: pb_grpc.TierdStub) -> None:
    details = expect_status(Code.NOT_FOUND, lambda: tstub.Lookup(
        pb.LookupRequest(ns_id=4242, keys=[bytes(16)]), metadata=AS_A))
    assert "4242" in details


def test_another_tenants_lease_and_session_are_permission_denied(
        tenant_server: ServerThread, tstub: pb_grpc.TierdStub) -> None:
    reg, keys = alpha_with_pages(tstub)
    events = tstub.Session(pb.SessionRequest(client_name="alpha", client_pid=os.getpid()), metadata=AS_A)
    session_md = ((SESSION_METADATA_KEY, next(events).session_id),)
    read = tstub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys), metadata=AS_A + session_md).lease
    fill = tstub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=1), metadata=AS_A).lease
    bravo_ns = register(tstub, AS_B).ns_id
    before = snapshot(tenant_server)
    for lease_id in (read.lease_id, fill.lease_id):
        for call in (lambda i=lease_id: tstub.Release(pb.ReleaseRequest(lease_id=i), metadata=AS_B),
                     lambda i=lease_id: tstub.Renew(pb.RenewRequest(lease_id=i), metadata=AS_B),
                     lambda i=lease_id: tstub.Commit(pb.CommitRequest(lease_id=i, keys=keys_for(reg, 1, 500),
                                                                      slots=list(fill.slots)), metadata=AS_B)):
            assert "belongs to another tenant" in expect_status(Code.PERMISSION_DENIED, call)
    details = expect_status(Code.PERMISSION_DENIED, lambda: tstub.Allocate(
        pb.AllocateRequest(ns_id=bravo_ns, num_pages=1), metadata=AS_B + session_md))
    assert "opened by another tenant" in details
    assert snapshot(tenant_server) == before
    renewed = tstub.Renew(pb.RenewRequest(lease_id=read.lease_id), metadata=AS_A + session_md).lease
    assert renewed.lease_id == read.lease_id
    tstub.Release(pb.ReleaseRequest(lease_id=fill.lease_id), metadata=AS_A)
    expect_status(Code.NOT_FOUND, lambda: tstub.Release(pb.ReleaseRequest(lease_id=fill.lease_id),
                                                        metadata=AS_A))
    events.cancel()


def test_durability_tickets_answer_only_the_tenant_that_got_them(short_tmp: Path) -> None:
    tokens = (TenantToken("alpha", token_digest(TOKEN_A)), TenantToken("bravo", token_digest(TOKEN_B)))
    srv = make_server(short_tmp, serving_settings(tenant_tokens=tokens), write_policy=WritePolicy.WRITE_THROUGH)
    try:
        with open_channel(srv) as channel:
            stub = pb_grpc.TierdStub(channel)
            reg = register(stub, AS_A)
            reply = stub.PutPages(put_stream(reg.ns_id, keys_for(reg, 2), pages_for(2)), metadata=AS_A)
            register(stub, AS_B)
            details = expect_status(Code.PERMISSION_DENIED, lambda: stub.WaitDurable(
                pb.WaitDurableRequest(ticket=reply.durable_ticket, timeout_s=5.0), metadata=AS_B))
            assert f"ticket {reply.durable_ticket} belongs to another tenant" in details
            assert stub.WaitDurable(pb.WaitDurableRequest(ticket=reply.durable_ticket, timeout_s=30.0),
                                    metadata=AS_A).durable
            expect_status(Code.INVALID_ARGUMENT, lambda: stub.WaitDurable(
                pb.WaitDurableRequest(ticket=reply.durable_ticket + 50), metadata=AS_A))
    finally:
        srv.stop()


def register_model(stub: pb_grpc.TierdStub, md: Metadata, model: str) -> pb.RegisterResponse:
    spec = pb.PageSpec()
    spec.CopyFrom(PAGE_SPEC)
    spec.model = model
    return stub.Register(pb.RegisterRequest(spec=spec), metadata=md)


def test_quota_is_shared_by_the_tenants_namespaces(tenant_server: ServerThread,
                                                   tstub: pb_grpc.TierdStub) -> None:
    """Each new namespace of alpha gets region_share (0.5) of what is left of its quota (the
    last page that fits whole), until not one page is left."""
    slots = []
    for model in ("m@1", "m@2", "m@3", "m@4"):
        reg = register_model(tstub, AS_A, model)
        slots.append({h.tier: h.num_slots for h in reg.regions})
    assert [s[pb.TIER_HBM] for s in slots] == [4, 2, 1, 1]   # quota: 8 hbm pages
    assert [s[pb.TIER_DRAM] for s in slots] == [8, 4, 2, 1]  # quota: 16 dram pages
    assert sum(s[pb.TIER_HBM] for s in slots) == QUOTA_HBM_PAGES
    before = snapshot(tenant_server)
    details = expect_status(Code.RESOURCE_EXHAUSTED, lambda: register_model(tstub, AS_A, "m@5"))
    assert "no hbm room" in details and "tenant 'alpha'" in details and "quota" in details
    assert snapshot(tenant_server) == before  # the refused Register left nothing behind
    assert register_model(tstub, AS_A, "m@2").ns_id  # its namespaces still register again
    bravo = register(tstub, AS_B)  # no quota: region_share (0.5) of what alpha left
    assert {h.tier: h.num_slots for h in bravo.regions} == {
        pb.TIER_HBM: (64 - QUOTA_HBM_PAGES) // 2, pb.TIER_DRAM: (128 - 15) // 2}


# -- the client sends the token ------------------------------------------------------------------------
def test_client_token_reaches_every_call_including_the_session(
        tenant_server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = PageSpec(**{f.name: getattr(PAGE_SPEC, f.name) for f in PAGE_SPEC.DESCRIPTOR.fields})
    pages = pages_for(2)
    with TierClient(tenant_server.address, ClientOptions(token=TOKEN_A)) as client:
        ns = client.register(spec)
        assert ns.tenant == "alpha"
        keys = ns.keys(list(range(2 * spec.page_tokens)))
        assert client.put(ns, keys, pages).num_stored == 2
        with client.acquire(ns, keys, target_tier=Tier.DRAM) as lease:  # opens the Session
            assert len(lease.slots) == 2
            lease.renew()
        assert client.get(ns, keys) == pages
        assert client.stats().sessions == 1
    monkeypatch.setenv("TIERD_TOKEN", TOKEN_B)
    with TierClient(tenant_server.address) as client:
        bravo = client.register(spec)
        assert bravo.tenant == "bravo" and client.lookup(bravo, keys) == 0
        with pytest.raises(PermissionDeniedError):
            client.lookup(ns, keys)
    monkeypatch.delenv("TIERD_TOKEN")
    with TierClient(tenant_server.address) as client, pytest.raises(UnauthenticatedError) as info:
        client.register(spec)
    assert "TIERD_TOKEN" in info.value.details


# -- open mode ---------------------------------------------------------------------------------------
def test_without_tenants_the_daemon_is_open_as_before(server: ServerThread,
                                                      stub: pb_grpc.TierdStub) -> None:
    default = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
    assert default.tenant == "default"
    named = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC, tenant="anyone"), metadata=AS_B)
    assert named.tenant == "anyone"
    keys = keys_for(default, 2)
    stub.PutPages(put_stream(default.ns_id, keys, pages_for(2)), metadata=AS_A)
    assert stub.Lookup(pb.LookupRequest(ns_id=default.ns_id, keys=keys)).num_hits == 2
    lease = stub.Allocate(pb.AllocateRequest(ns_id=default.ns_id, num_pages=1)).lease
    stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id), metadata=AS_B)


# -- units ---------------------------------------------------------------------------------------------
def test_authenticator_maps_tokens_to_tenants() -> None:
    auth = Authenticator((TenantToken("alpha", token_digest(TOKEN_A)),
                          TenantToken("bravo", token_digest(TOKEN_B))))
    assert auth.enabled and auth.caller(AS_A).tenant == "alpha" and auth.caller(AS_B).tenant == "bravo"
    assert auth.caller((("authorization", f"bearer  {TOKEN_B} "),)).tenant == "bravo"
    with pytest.raises(Unauthenticated):
        auth.caller((("authorization", f"Bearer {TOKEN_A}x"),))
    assert Authenticator(()).caller(()).tenant is None  # open mode: everyone is let in
    with pytest.raises(ValueError, match="32 bytes"):
        Authenticator((TenantToken("bad", b"short"),))


def test_client_options_send_the_token_as_bearer_and_keep_it_out_of_reprs() -> None:
    options = ClientOptions(token=TOKEN_A, metadata=(("x-trace", "1"),))
    assert options.call_metadata(env={"TIERD_TOKEN": TOKEN_B}) == (("x-trace", "1"),) + AS_A
    assert TOKEN_A not in repr(options)
    assert ClientOptions().call_metadata(env={"TIERD_TOKEN": f" {TOKEN_B}\n"}) == AS_B
    assert ClientOptions().call_metadata(env={}) == ()
    for bad in ("two words", "", "tab\there"):
        with pytest.raises(InvalidArgumentError) as info:
            ClientOptions(token=bad)
        assert not bad or bad not in str(info.value)
    with pytest.raises(InvalidArgumentError, match=r"\$TIERD_TOKEN"):
        ClientOptions().call_metadata(env={"TIERD_TOKEN": "not one word"})
    with pytest.raises(InvalidArgumentError, match="ClientOptions\\(token=...\\)"):
        ClientOptions(metadata=(("authorization", f"Bearer {TOKEN_A}"),))
