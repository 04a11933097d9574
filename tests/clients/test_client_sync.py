"""The blocking client on grpc's synchronous API against a real daemon (tests/server_harness.py):
calls from several threads at once, a daemon restart mid-use, a commit that ends its lease, and
leases given back with release_later riding on the next Acquire (bounded queue)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from server_harness import PAGE_SPEC, ServerThread, make_server

from tierd_client import (
    AsyncTierClient,
    ClientOptions,
    LeaseKind,
    NamespaceHandle,
    NotFoundError,
    PageSpec,
    RetryPolicy,
    Tier,
    TierClient,
)
from tierd_client.leases import MAX_QUEUED_RELEASES
from tierd_client.local_path import MAX_POOLED_PER_NAMESPACE

SPEC = PageSpec(model=PAGE_SPEC.model, dtype=PAGE_SPEC.dtype, num_layers=PAGE_SPEC.num_layers,
                num_kv_heads=PAGE_SPEC.num_kv_heads, head_dim=PAGE_SPEC.head_dim,
                page_tokens=PAGE_SPEC.page_tokens)
THREADS = 4
ROUNDS = 25
WAIT_S = 20.0
# Long enough to ride out a daemon restart (a store opening from its data dir).
PATIENT = RetryPolicy(max_attempts=60, initial_backoff_s=0.05, max_backoff_s=0.25)


# These tests count the daemon's leases: a local put would keep a FILL lease of its own.
BYTE_PATH = ClientOptions(local_data_path=False)


@pytest.fixture()
def server(short_tmp: Path) -> Iterator[ServerThread]:
    srv = make_server(short_tmp)
    try:
        yield srv
    finally:
        srv.stop()


def _pages(count: int, seed: int) -> list[bytes]:
    return [bytes([(seed * 7 + i) % 251]) * SPEC.page_bytes for i in range(count)]


def _keys(ns: NamespaceHandle, count: int, start: int) -> list[bytes]:
    return ns.keys(range(start * SPEC.page_tokens, (start + count) * SPEC.page_tokens))


def _wait_for(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_calls_from_four_threads_at_once(server: ServerThread) -> None:
    errors: list[BaseException] = []
    with TierClient(server.address, ClientOptions(max_inflight_rpcs=3)) as client:
        ns = client.register(SPEC)
        start = threading.Barrier(THREADS)

        def worker(index: int) -> None:
            try:
                keys = _keys(ns, 2, start=100 * index)
                pages = _pages(2, seed=index)
                start.wait(WAIT_S)
                for _ in range(ROUNDS):
                    client.put(ns, keys, pages)
                    assert client.lookup(ns, keys) == 2
                    assert client.get(ns, keys) == pages
                    with client.acquire(ns, keys, target_tier=Tier.DRAM) as lease:
                        assert lease.keys == tuple(keys) and lease.kind is LeaseKind.READ
                    assert lease.released
                    assert client.stats().namespaces >= 1
            except BaseException as exc:  # surfaced in the test thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert not any(thread.is_alive() for thread in threads)
        stats = client.stats()
        assert stats.sessions == 1  # every thread's leases went through the one session
        # Only the FILL leases local puts keep pooled (at most one per thread putting at once).
        assert stats.leases <= min(THREADS, MAX_POOLED_PER_NAMESPACE)
    with TierClient(server.address, BYTE_PATH) as other:
        _wait_for(lambda: other.stats().leases == 0)  # the session's end released them


def test_a_daemon_restart_mid_use(short_tmp: Path) -> None:
    srv = make_server(short_tmp)
    try:
        with TierClient(srv.address, ClientOptions(retry=PATIENT)) as client:
            ns = client.register(SPEC)
            keys = _keys(ns, 2, start=0)
            client.put(ns, keys, _pages(2, seed=1))
            held = client.acquire(ns, keys, target_tier=Tier.DRAM)
            first_session = client.session_id
            assert first_session and held.num_pages == 2
            srv.stop()
            answers: list[NamespaceHandle] = []
            during = threading.Thread(target=lambda: answers.append(client.register(SPEC)))
            during.start()  # sent while no daemon listens: retried until one does
            time.sleep(0.3)
            srv = make_server(short_tmp)
            during.join(60)
            assert answers, "the call made while the daemon was down did not complete"
            ns = answers[0]
            _wait_for(lambda: client.session_id != first_session)  # the old stream ended
            with client.allocate(ns, 1) as fill:  # a new session opens for it
                assert fill.num_pages == 1
            assert client.session_id not in ("", first_session)
            with pytest.raises(NotFoundError):
                held.release()  # the restarted daemon never knew that lease
            assert srv.store.stats().leases == 0
    finally:
        srv.stop()


def test_commit_with_release_gives_the_other_slots_back(server: ServerThread) -> None:
    with TierClient(server.address, BYTE_PATH) as client:
        ns = client.register(SPEC)
        keys = _keys(ns, 1, start=0)
        fill = client.allocate(ns, 4)
        assert client.stats().leases == 1
        result = fill.commit(keys, release=True)
        assert result.num_committed == 1
        assert fill.released
        assert client.stats().leases == 0  # the daemon ended it: its 3 open slots went back
        fill.release()  # released already: no RPC, no NotFoundError
        assert client.lookup(ns, keys) == 1
        other = client.allocate(ns, 2)
        assert client.commit(other, _keys(ns, 1, start=5), release=True).num_committed == 1
        assert other.released and client.stats().leases == 0


def test_release_later_rides_on_the_next_acquire(server: ServerThread) -> None:
    with TierClient(server.address, BYTE_PATH) as client:
        ns = client.register(SPEC)
        keys = _keys(ns, 2, start=0)
        client.put(ns, keys, _pages(2, seed=2))
        first = client.acquire(ns, keys[:1], target_tier=Tier.DRAM)
        first.release_later()
        assert first.released
        assert client.stats().leases == 1  # still pinned: no RPC was sent for it
        first.release_later()  # a second call does nothing
        first.release()  # neither does a release now
        second = client.acquire(ns, keys[1:], target_tier=Tier.DRAM)
        assert client.stats().leases == 1  # the Acquire ended the first lease before the second
        second.release()
        assert client.stats().leases == 0


def test_the_release_queue_is_bounded(server: ServerThread) -> None:
    extra = 5
    with TierClient(server.address, BYTE_PATH) as client:
        ns = client.register(SPEC)
        keys = _keys(ns, 1, start=0)
        client.put(ns, keys, _pages(1, seed=3))
        leases = [client.acquire(ns, keys, target_tier=Tier.DRAM)
                  for _ in range(MAX_QUEUED_RELEASES + extra)]
        assert client.stats().leases == MAX_QUEUED_RELEASES + extra
        for lease in leases:
            lease.release_later()
        assert all(lease.released for lease in leases)
        # The queue holds 64; the ones beyond it were released at once, with a Release each.
        assert client.stats().leases == MAX_QUEUED_RELEASES
        with client.acquire(ns, keys, target_tier=Tier.DRAM):
            assert client.stats().leases == 1  # one Acquire carried all 64
        assert client.stats().leases == 0


def test_queued_releases_are_sent_when_the_acquire_fails_or_the_client_closes(
        server: ServerThread) -> None:
    with TierClient(server.address, BYTE_PATH) as client:
        ns = client.register(SPEC)
        keys = _keys(ns, 1, start=0)
        client.put(ns, keys, _pages(1, seed=4))
        for _ in range(3):
            client.acquire(ns, keys, target_tier=Tier.DRAM).release_later()
        unknown = replace(ns, ns_id=ns.ns_id + 1000)
        with pytest.raises(NotFoundError):
            client.acquire(unknown, keys)  # refused for its namespace, not for the carried ids
        assert client.stats().leases == 0  # sent as plain Releases instead
        client.acquire(ns, keys, target_tier=Tier.DRAM).release_later()
        assert server.store.stats().leases == 1
    assert server.store.stats().leases == 0


def test_the_async_client_commits_with_release_and_releases_later(server: ServerThread) -> None:
    async def flow() -> tuple[int, int, int]:
        async with AsyncTierClient(server.address, BYTE_PATH) as client:
            ns = await client.register(SPEC)
            keys = _keys(ns, 2, start=0)
            fill = await client.allocate(ns, 3)
            await fill.commit(keys, release=True)
            assert fill.released
            after_commit = (await client.stats()).leases
            first = await client.acquire(ns, keys[:1], target_tier=Tier.DRAM)
            await first.release_later()
            assert first.released
            pinned = (await client.stats()).leases
            async with client.acquire(ns, keys[1:], target_tier=Tier.DRAM):
                carried = (await client.stats()).leases
            return after_commit, pinned, carried

    assert asyncio.run(flow()) == (0, 1, 1)
    assert server.store.stats().leases == 0
