"""The client against a scripted daemon: the first-script surface, batching within the daemon's
limits, sessions and leases, retries on UNAVAILABLE, the in-flight cap, and typed errors."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from fake_tierd import MAX_KEYS, PUT_PAGES, FakeDaemon, start_fake_daemon

from tierd.keys import chain_keys, namespace_fingerprint
from tierd_client import (
    AsyncTierClient,
    ClientOptions,
    InvalidArgumentError,
    LeaseKind,
    NotFoundError,
    PageSpec,
    ResourceExhaustedError,
    RetryPolicy,
    Tier,
    TierClient,
    UnavailableError,
)

SPEC = PageSpec(model="my-model@rev1", dtype="float16", num_layers=2, num_kv_heads=2,
                head_dim=4, page_tokens=4)
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


def _pages(num_pages: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (num_pages, SPEC.page_bytes), dtype=np.uint8)


def _wait_for(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_first_script_round_trip_bit_exact(fake_daemon: FakeDaemon) -> None:
    tokens = list(range(4 * 10 + 3))  # 10 full pages and a partial tail
    pages = _pages(10)
    with TierClient(fake_daemon.socket_path) as client:
        ns = client.register(SPEC)
        keys = ns.keys(tokens)
        assert keys == chain_keys(namespace_fingerprint(SPEC), tokens, SPEC.page_tokens)
        assert len(keys) == 10
        result = client.put(ns, keys, pages)
        assert (result.num_stored, result.num_skipped) == (10, 0)
        assert client.put(ns, keys[:2], pages[:2]).num_skipped == 2
        assert client.lookup(ns, keys) == 10
        got = client.get(ns, keys)
        assert got == [p.tobytes() for p in pages]
        # The daemon's limits were respected: calls of at most PUT_PAGES pages / MAX_KEYS keys.
        calls = fake_daemon.state.calls
        assert calls["PutPages"] >= -(-10 // PUT_PAGES) + 1
        assert calls["Lookup"] >= -(-10 // MAX_KEYS)
        # A miss in the middle ends the prefix, across batch boundaries too.
        other = ns.keys([9, 9, 9, 9])
        assert client.lookup(ns, keys[:5] + other + keys[5:]) == 5
        assert client.get(ns, keys[:5] + other) == got[:5]
        assert client.lookup_result(ns, keys[:2]).tiers == (Tier.DRAM, Tier.DRAM)


def test_bad_pages_are_refused_before_anything_is_sent(fake_daemon: FakeDaemon) -> None:
    with TierClient(fake_daemon.socket_path) as client:
        ns = client.register(SPEC)
        keys = ns.keys(range(8))
        with pytest.raises(InvalidArgumentError, match=f"pages\\[1\\] holds 3 bytes.*{SPEC.page_bytes}"):
            client.put(ns, keys, [bytes(SPEC.page_bytes), b"abc"])
        with pytest.raises(InvalidArgumentError, match="NamespaceHandle"):
            client.lookup(1, keys)  # type: ignore[arg-type]
    assert "PutPages" not in fake_daemon.state.calls
    assert "Lookup" not in fake_daemon.state.calls


@pytest.mark.parametrize(("spec", "tenant", "fragment"), [
    (PageSpec(model="m\x00" + "x" * (1 << 20), dtype="float16", num_layers=2, num_kv_heads=2,
              head_dim=4, page_tokens=4), "", "spec.model is 1048578 bytes"),
    (PageSpec(model="m@1\n", dtype="float16", num_layers=2, num_kv_heads=2, head_dim=4,
              page_tokens=4), "", "U+000A"),
    (PageSpec(model="m@1", dtype="float16", num_layers=2, num_kv_heads=2, head_dim=8192,
              page_tokens=1), "", "spec.head_dim is 8192"),
    (SPEC, "t" * 200, "tenant is 200 bytes"),
])
def test_a_spec_beyond_the_register_limits_is_refused_before_it_is_sent(
        fake_daemon: FakeDaemon, spec: PageSpec, tenant: str, fragment: str) -> None:
    with TierClient(fake_daemon.socket_path) as client:
        with pytest.raises(InvalidArgumentError) as info:
            client.register(spec, tenant=tenant)
    assert fragment in info.value.details
    assert len(info.value.details) < 600  # the long value is quoted cut short
    assert "Register" not in fake_daemon.state.calls


def test_unavailable_is_retried_then_succeeds(fake_daemon: FakeDaemon) -> None:
    fake_daemon.state.fail_unavailable["Lookup"] = 2
    with TierClient(fake_daemon.socket_path, ClientOptions(retry=FAST_RETRY)) as client:
        ns = client.register(SPEC)
        assert client.lookup(ns, ns.keys(range(4))) == 0
    assert fake_daemon.state.calls["Lookup"] == 3


def test_unavailable_gives_up_after_the_policys_attempts(fake_daemon: FakeDaemon) -> None:
    fake_daemon.state.fail_unavailable["Stats"] = 100
    with TierClient(fake_daemon.socket_path, ClientOptions(retry=FAST_RETRY)) as client:
        with pytest.raises(UnavailableError, match="after 4 attempts") as info:
            client.stats()
    assert info.value.code.name == "UNAVAILABLE"
    assert fake_daemon.state.calls["Stats"] == 4


def test_no_daemon_fails_fast_with_a_hint(tmp_path: Path) -> None:
    started = time.monotonic()
    with TierClient(tmp_path / "absent.sock", ClientOptions(retry=FAST_RETRY)) as client:
        with pytest.raises(UnavailableError, match="is the daemon running"):
            client.register(SPEC)
    assert time.monotonic() - started < 30


def test_other_errors_are_typed_and_not_retried(fake_daemon: FakeDaemon) -> None:
    with TierClient(fake_daemon.socket_path, ClientOptions(retry=FAST_RETRY)) as client:
        ns = client.register(SPEC)
        with pytest.raises(ResourceExhaustedError, match="every slot is leased") as info:
            client.allocate(ns, 100)
        assert info.value.details == "every slot is leased"
        assert info.value.code.name == "RESOURCE_EXHAUSTED"
    assert fake_daemon.state.calls["Allocate"] == 1


def test_leases_carry_the_session_and_release_on_exit(fake_daemon: FakeDaemon) -> None:
    state = fake_daemon.state
    with TierClient(fake_daemon.socket_path) as client:
        ns = client.register(SPEC)
        keys = ns.keys(range(12))
        client.put(ns, keys, _pages(3))
        with client.acquire(ns, keys) as lease:
            assert lease.kind is LeaseKind.READ and lease.keys == tuple(keys)
            assert lease.slots == (0, 1, 2) and lease.expires_at_s > time.monotonic()
            assert lease.lease_id in state.leases
        assert lease.released and lease.lease_id not in state.leases
        with client.allocate(ns, 2) as fill:
            assert fill.kind is LeaseKind.FILL and fill.num_pages == 2
            assert fill.commit(keys[:2]).num_committed == 2
            held = client.allocate(ns, 1)  # not released: the session end frees it
        assert state.commits == [(fill.lease_id, keys[:2], [0, 1])]
        assert set(state.lease_sessions) == {client.session_id}
        assert list(state.leases) == [held.lease_id]
    _wait_for(lambda: not state.leases)
    assert len(state.sessions_ended) == 1 and not state.sessions_open


def test_a_lease_gone_at_exit_is_only_logged(fake_daemon: FakeDaemon,
                                             caplog: pytest.LogCaptureFixture) -> None:
    with TierClient(fake_daemon.socket_path) as client:
        ns = client.register(SPEC)
        lease = client.allocate(ns, 1)
        del fake_daemon.state.leases[lease.lease_id]  # as if its TTL ran out
        with pytest.raises(NotFoundError, match="does not exist"):
            lease.release()
        other = client.allocate(ns, 1)
        del fake_daemon.state.leases[other.lease_id]
        with caplog.at_level(logging.WARNING, logger="tierd_client.leases"), other:
            pass
        assert "had already ended" in caplog.text


def test_commit_checks_keys_against_the_lease(fake_daemon: FakeDaemon) -> None:
    with TierClient(fake_daemon.socket_path) as client:
        ns = client.register(SPEC)
        keys = ns.keys(range(12))
        with client.allocate(ns, 2) as fill:
            with pytest.raises(InvalidArgumentError, match="3 keys for a lease of 2 slots"):
                fill.commit(keys)
            with pytest.raises(InvalidArgumentError, match="2 keys and 1 slots"):
                fill.commit(keys[:2], slots=[0])
    assert not fake_daemon.state.commits


def test_in_flight_rpcs_are_capped_per_channel(fake_daemon: FakeDaemon) -> None:
    fake_daemon.state.lookup_delay_s = 0.05

    async def burst() -> None:
        async with AsyncTierClient(fake_daemon.socket_path,
                                   ClientOptions(max_inflight_rpcs=3)) as client:
            ns = await client.register(SPEC)
            keys = ns.keys(range(4))
            await asyncio.gather(*(client.lookup(ns, keys) for _ in range(20)))

    asyncio.run(burst())
    assert fake_daemon.state.calls["Lookup"] == 20
    assert 2 <= fake_daemon.state.max_in_flight <= 3


def test_async_lease_context_and_await(fake_daemon: FakeDaemon) -> None:
    async def flow() -> tuple[int, bool]:
        async with AsyncTierClient(fake_daemon.socket_path) as client:
            ns = await client.register(SPEC)
            async with client.allocate(ns, 2) as lease:
                inside = lease.lease_id in fake_daemon.state.leases
            plain = await client.allocate(ns, 1)
            await plain.renew(ttl_s=5.0)
            await plain.release()
            await plain.release()  # a second release does nothing
            return lease.lease_id, inside

    lease_id, inside = asyncio.run(flow())
    assert inside and lease_id not in fake_daemon.state.leases
    assert fake_daemon.state.calls["Release"] == 2


def test_closed_client_refuses_calls(fake_daemon: FakeDaemon) -> None:
    client = TierClient(fake_daemon.socket_path)
    ns = client.register(SPEC)
    client.close()
    client.close()
    with pytest.raises(Exception, match="closed"):
        client.lookup(ns, ns.keys(range(4)))


def test_not_found_in_a_live_session_keeps_the_session(fake_daemon: FakeDaemon) -> None:
    # Reopening the session would end it on the daemon and free every lease the client holds.
    with TierClient(fake_daemon.socket_path, ClientOptions(retry=FAST_RETRY)) as client:
        ns = client.register(SPEC)
        held = client.allocate(ns, 1)
        session = client.session_id
        fake_daemon.state.sessions_open.discard(session)  # the daemon answers NOT_FOUND ...
        with pytest.raises(NotFoundError, match="unknown session"):
            client.allocate(ns, 1)
        assert client.session_id == session  # ... but the stream is alive: no new session
        assert held.lease_id in fake_daemon.state.leases
        assert fake_daemon.state.calls["Session"] == 1


def test_one_in_flight_slot_is_enough_for_lease_calls(fake_daemon: FakeDaemon) -> None:
    # The first lease call opens the session while holding the only slot.
    with TierClient(fake_daemon.socket_path, ClientOptions(max_inflight_rpcs=1)) as client:
        ns = client.register(SPEC)
        with client.allocate(ns, 1) as lease:
            assert lease.num_pages == 1


def test_tls_over_tcp(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=120)
    tls = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    server, daemon = start_fake_daemon(tmp_path / "unused", tls=tls)
    try:
        with TierClient(str(daemon.socket_path), ClientOptions(tls_ca=cert)) as client:
            assert client.register(SPEC).page_bytes == SPEC.page_bytes
        plain = ClientOptions(retry=RetryPolicy(max_attempts=1))
        with TierClient(str(daemon.socket_path), plain) as client:
            with pytest.raises(UnavailableError):  # a plaintext client cannot talk to it
                client.register(SPEC)
    finally:
        server.stop(grace=None).wait(timeout=10)
    with pytest.raises(InvalidArgumentError, match="go together"):
        ClientOptions(tls_ca=cert, tls_cert=cert)
