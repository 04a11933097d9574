"""Releases that save an RPC, against the scripted daemon (which honours both fields): which lease
ids an Acquire carries, in which session, within the daemon's key limit; what happens to them when
the Acquire fails or the client closes; and commits that end their lease."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest
from fake_tierd import MAX_KEYS, FakeDaemon, start_fake_daemon

from tierd_client import (
    AsyncTierClient,
    ClientOptions,
    NotFoundError,
    PageSpec,
    RetryPolicy,
    TierClient,
    UnavailableError,
)
from tierd_client.leases import MAX_QUEUED_RELEASES

SPEC = PageSpec(model="my-model@rev1", dtype="float16", num_layers=2, num_kv_heads=2,
                head_dim=4, page_tokens=4)
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
PATIENT = RetryPolicy(max_attempts=60, initial_backoff_s=0.05, max_backoff_s=0.25)


def _wait_for(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_an_acquire_carries_the_leases_released_later(fake_daemon: FakeDaemon) -> None:
    state = fake_daemon.state
    with TierClient(fake_daemon.socket_path) as client:
        ns = client.register(SPEC)
        keys = ns.keys(range(8))
        first, second = client.acquire(ns, keys), client.acquire(ns, keys)
        first.release_later()
        second.release_later()
        assert first.released and second.released
        assert {first.lease_id, second.lease_id} <= set(state.leases)  # nothing sent yet
        third = client.acquire(ns, keys)
        assert state.carried == [[], [], [first.lease_id, second.lease_id]]
        assert list(state.leases) == [third.lease_id]
        client.acquire(ns, keys).release()
        assert state.carried[-1] == []  # each id is carried once
    assert "Release" in state.calls and state.calls["Release"] == 1


def test_one_acquire_carries_at_most_the_daemons_key_limit(fake_daemon: FakeDaemon) -> None:
    state = fake_daemon.state
    extra = 3
    with TierClient(fake_daemon.socket_path) as client:
        ns = client.register(SPEC)
        keys = ns.keys(range(4))
        leases = [client.acquire(ns, keys) for _ in range(MAX_QUEUED_RELEASES + extra)]
        for lease in leases:
            lease.release_later()
        # Past the bound each one is released at once, with a Release of its own.
        assert state.calls["Release"] == extra
        assert len(state.leases) == MAX_QUEUED_RELEASES
        client.acquire(ns, keys)
        assert state.carried[-1] == [lease.lease_id for lease in leases[:MAX_KEYS]]
        assert len(state.leases) == MAX_QUEUED_RELEASES - MAX_KEYS + 1


def test_a_failed_acquire_sends_the_carried_leases_as_releases(fake_daemon: FakeDaemon) -> None:
    state = fake_daemon.state
    with TierClient(fake_daemon.socket_path) as client:
        ns = client.register(SPEC)
        keys = ns.keys(range(4))
        lease = client.acquire(ns, keys)
        lease.release_later()
        with pytest.raises(NotFoundError, match="namespace 1001 does not exist"):
            client.acquire(replace(ns, ns_id=1001), keys)
        assert state.calls["Release"] == 1 and not state.leases
        client.acquire(ns, keys)
        assert state.carried[-1] == []


def test_an_unavailable_acquire_keeps_the_leases_queued(fake_daemon: FakeDaemon) -> None:
    state = fake_daemon.state
    with TierClient(fake_daemon.socket_path, ClientOptions(retry=FAST_RETRY)) as client:
        ns = client.register(SPEC)
        keys = ns.keys(range(4))
        lease = client.acquire(ns, keys)
        lease.release_later()
        state.fail_unavailable["Acquire"] = FAST_RETRY.max_attempts
        with pytest.raises(UnavailableError):
            client.acquire(ns, keys)
        assert "Release" not in state.calls and lease.lease_id in state.leases
        client.acquire(ns, keys)
        assert state.carried[-1] == [lease.lease_id] and lease.lease_id not in state.leases


def test_close_releases_the_queued_leases_before_ending_the_session(fake_daemon: FakeDaemon) -> None:
    state = fake_daemon.state
    with TierClient(fake_daemon.socket_path) as client:
        ns = client.register(SPEC)
        client.acquire(ns, ns.keys(range(4))).release_later()
        assert "Release" not in state.calls
    assert state.calls["Release"] == 1


def test_leases_of_an_ended_session_are_never_carried_into_a_new_one(tmp_path: Path) -> None:
    # A restarted daemon numbers leases afresh: the old id may name a new lease of this client.
    socket_path = tmp_path / "fake.sock"
    server, daemon = start_fake_daemon(socket_path)
    try:
        with TierClient(socket_path, ClientOptions(retry=PATIENT)) as client:
            ns = client.register(SPEC)
            old = client.acquire(ns, ns.keys(range(4)))
            old.release_later()
            server.stop(grace=None).wait(timeout=10)
            _wait_for(lambda: client.session_id == "")
            server, daemon = start_fake_daemon(socket_path)
            ns = client.register(SPEC)
            new = client.acquire(ns, ns.keys(range(4)))
            assert new.lease_id == old.lease_id  # the same number, another lease
            client.acquire(ns, ns.keys(range(4)))
            assert daemon.state.carried == [[], []]
            assert new.lease_id in daemon.state.leases
    finally:
        server.stop(grace=None).wait(timeout=10)


def test_commit_with_release_ends_the_lease_without_a_release(fake_daemon: FakeDaemon) -> None:
    state = fake_daemon.state
    with TierClient(fake_daemon.socket_path) as client:
        ns = client.register(SPEC)
        keys = ns.keys(range(8))
        with client.allocate(ns, 4) as fill:
            assert fill.commit(keys, release=True).num_committed == 2
            assert fill.released
        plain = client.allocate(ns, 1)
        client.commit(plain, keys[:1], release=True)
        assert plain.released
        plain.release()
        kept = client.allocate(ns, 1)
        kept.commit(keys[:1])
        assert not kept.released
    assert state.released_by_commit == [fill.lease_id, plain.lease_id]
    assert "Release" not in state.calls  # kept ended with the session


def test_async_leases_release_later_and_commit_with_release(fake_daemon: FakeDaemon) -> None:
    state = fake_daemon.state

    async def flow() -> tuple[int, int, int]:
        async with AsyncTierClient(fake_daemon.socket_path) as client:
            ns = await client.register(SPEC)
            keys = ns.keys(range(8))
            fill = await client.allocate(ns, 2)
            await fill.commit(keys, release=True)
            assert fill.released
            await fill.release()
            lease = await client.acquire(ns, keys)
            await lease.release_later()
            assert lease.released
            async with client.acquire(ns, keys) as carrier:
                pass
            return fill.lease_id, lease.lease_id, carrier.lease_id

    fill_id, later_id, carrier_id = asyncio.run(flow())
    assert state.released_by_commit == [fill_id]
    assert state.carried == [[], [later_id]]
    assert state.calls["Release"] == 1 and not state.leases  # the carrier's own
