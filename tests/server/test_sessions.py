"""Client sessions free their leases when they end; the in-flight cap; shutdown answers UNAVAILABLE."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from server_harness import PAGE_SPEC, ServerThread, keys_for, make_server, open_channel, pages_for, put_stream

from tierd.server import SESSION_METADATA_KEY, ServingSettings
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc

Code = grpc.StatusCode
REPO = Path(__file__).resolve().parents[2]
# Leases of a dead client must be gone well within this (the server sees the socket close at once).
RELEASE_WITHIN_S = 30.0


def wait_for(condition: Callable[[], bool], timeout_s: float = RELEASE_WITHIN_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def session_md(session_id: str) -> tuple[tuple[str, str], ...]:
    return ((SESSION_METADATA_KEY, session_id),)


def setup_pages(stub: pb_grpc.TierdStub, count: int = 2) -> tuple[pb.RegisterResponse, list[bytes]]:
    reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
    keys = keys_for(reg, count)
    stub.PutPages(put_stream(reg.ns_id, keys, pages_for(count)))
    return reg, keys


def test_session_stream_sends_id_limits_and_heartbeats(server: ServerThread,
                                                       stub: pb_grpc.TierdStub) -> None:
    events = stub.Session(pb.SessionRequest(client_name="test", client_pid=os.getpid()))
    first = next(events)
    assert len(first.session_id) == 32 and first.heartbeat_interval_s > 0
    assert first.limits.max_message_bytes == server.settings.max_message_bytes
    second = next(events)
    assert second.session_id == first.session_id and second.heartbeat_seq == 1
    assert stub.Stats(pb.StatsRequest()).server.sessions == 1
    events.cancel()
    assert wait_for(lambda: stub.Stats(pb.StatsRequest()).server.sessions == 0)


def test_leases_end_with_their_session(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg, keys = setup_pages(stub)
    events = stub.Session(pb.SessionRequest(client_name="worker"))
    md = session_md(next(events).session_id)
    stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys), metadata=md)
    stub.Allocate(pb.AllocateRequest(ns_id=reg.ns_id, num_pages=2), metadata=md)
    stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys))  # no session: survives
    assert server.store.stats().leases == 3
    events.cancel()
    assert wait_for(lambda: server.store.stats().leases == 1)


def test_unknown_session_is_not_found_and_takes_no_lease(server: ServerThread,
                                                         stub: pb_grpc.TierdStub) -> None:
    reg, keys = setup_pages(stub)
    details = ""
    with pytest.raises(grpc.RpcError) as info:
        stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys), metadata=session_md("ab" * 16))
    details = info.value.details()
    assert info.value.code() == Code.NOT_FOUND and "Session" in details
    assert server.store.stats().leases == 0


def test_a_sessions_lease_is_not_anyone_elses(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg, keys = setup_pages(stub)
    mine = stub.Session(pb.SessionRequest())
    theirs = stub.Session(pb.SessionRequest())
    my_md, their_md = session_md(next(mine).session_id), session_md(next(theirs).session_id)
    lease = stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys), metadata=my_md).lease
    for md in (their_md, None):
        for call in (lambda m=md: stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id), metadata=m),
                     lambda m=md: stub.Renew(pb.RenewRequest(lease_id=lease.lease_id), metadata=m)):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == Code.PERMISSION_DENIED
    assert server.store.stats().leases == 1
    stub.Renew(pb.RenewRequest(lease_id=lease.lease_id, ttl_s=5.0), metadata=my_md)
    stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id), metadata=my_md)
    assert server.store.stats().leases == 0
    mine.cancel()
    theirs.cancel()


WORKER = textwrap.dedent("""
    import sys, time, grpc
    from tierd.v1 import tierd_pb2 as pb, tierd_pb2_grpc as pb_grpc
    address, ns_id, keys = sys.argv[1], int(sys.argv[2]), [bytes.fromhex(k) for k in sys.argv[3:]]
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.TierdStub(channel)
    events = stub.Session(pb.SessionRequest(client_name="doomed"))
    md = (("tierd-session", next(events).session_id),)
    lease = stub.Acquire(pb.AcquireRequest(ns_id=ns_id, keys=keys, ttl_s=600), metadata=md).lease
    print(len(lease.slots), flush=True)
    time.sleep(600)
""")


def test_a_killed_worker_frees_its_leases(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    reg, keys = setup_pages(stub, count=3)
    worker = subprocess.Popen([sys.executable, "-c", WORKER, server.address, str(reg.ns_id),
                               *(k.hex() for k in keys)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "3"
        assert server.store.stats().leases == 1
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        assert wait_for(lambda: server.store.stats().leases == 0)
    finally:
        worker.kill()
        worker.wait(10)


def test_in_flight_cap_answers_resource_exhausted(short_tmp: Path) -> None:
    settings = ServingSettings(max_inflight_rpcs=1, chunk_bytes=5000, max_message_bytes=1 << 20)
    srv = make_server(short_tmp, settings)
    release = threading.Event()
    try:
        with open_channel(srv) as channel:
            stub = pb_grpc.TierdStub(channel)
            reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))

            def slow_put() -> Iterator[pb.PutPagesRequest]:
                yield pb.PutPagesRequest(header=pb.PutPagesHeader(ns_id=reg.ns_id))
                release.wait(30)

            # A PutPages stream the client keeps open is in flight until it ends.
            open_put = stub.PutPages.future(slow_put())
            assert wait_for(lambda: srv.servicer is not None and srv.servicer.in_flight == 1)
            with pytest.raises(grpc.RpcError) as info:
                stub.Stats(pb.StatsRequest())
            assert info.value.code() == Code.RESOURCE_EXHAUSTED
            assert "max_inflight_rpcs" in info.value.details()
            release.set()
            assert open_put.result(30).num_stored == 0
            assert stub.Stats(pb.StatsRequest()).server.rpcs_rejected == 1
    finally:
        release.set()
        srv.stop()


def test_shutdown_ends_sessions_and_refuses_new_work(server: ServerThread,
                                                     stub: pb_grpc.TierdStub) -> None:
    reg, keys = setup_pages(stub)
    events = stub.Session(pb.SessionRequest())
    md = session_md(next(events).session_id)
    stub.Acquire(pb.AcquireRequest(ns_id=reg.ns_id, keys=keys), metadata=md)
    assert server.servicer is not None
    server.call_soon(server.servicer.begin_shutdown)
    # The stream ends without an error, after however many heartbeats a machine of this speed sent.
    seqs = [e.heartbeat_seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    with pytest.raises(grpc.RpcError) as info:
        stub.Lookup(pb.LookupRequest(ns_id=reg.ns_id, keys=keys))
    assert info.value.code() == Code.UNAVAILABLE and "shutting down" in info.value.details()
    assert wait_for(lambda: server.store.stats().leases == 0)


def test_session_count_is_capped(short_tmp: Path) -> None:
    srv = make_server(short_tmp, ServingSettings(max_sessions=1, session_heartbeat_s=0.2))
    try:
        with open_channel(srv) as channel:
            stub = pb_grpc.TierdStub(channel)
            first = stub.Session(pb.SessionRequest())
            next(first)
            with pytest.raises(grpc.RpcError) as info:
                next(stub.Session(pb.SessionRequest()))
            assert info.value.code() == Code.RESOURCE_EXHAUSTED and "max_sessions" in info.value.details()
            first.cancel()
            assert wait_for(lambda: srv.servicer is not None and srv.servicer.num_sessions == 0)
            assert next(stub.Session(pb.SessionRequest())).session_id
    finally:
        srv.stop()


def _run_epochs(srv: ServerThread) -> tuple[list[bytes], list[bytes]]:
    """The epochs on one Register's region handles and on a session's first two events."""
    with open_channel(srv) as channel:
        stub = pb_grpc.TierdStub(channel)
        handles = [bytes(h.epoch) for h in stub.Register(pb.RegisterRequest(spec=PAGE_SPEC)).regions]
        events = stub.Session(pb.SessionRequest(client_name="epoch"))
        session = [bytes(next(events).server_epoch) for _ in range(2)]  # the opening one, a heartbeat
        events.cancel()
    return handles, session


def test_every_handle_and_session_event_carries_the_runs_epoch(short_tmp: Path) -> None:
    srv = make_server(short_tmp)
    try:
        handles, session = _run_epochs(srv)
    finally:
        srv.stop()
    assert handles and session
    epoch = session[0]
    assert len(epoch) == 16 and set(handles) == {epoch} and set(session) == {epoch}
    # The daemon restarts on the same socket and data directory: its regions are new memory.
    again = make_server(short_tmp)
    try:
        handles_again, session_again = _run_epochs(again)
    finally:
        again.stop()
    assert len(session_again[0]) == 16 and session_again[0] != epoch
    assert set(handles_again) == set(session_again) == {session_again[0]}
