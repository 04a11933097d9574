"""A scripted stand-in for tierd that speaks the real wire contract, for client-only tests.

It keeps pages in a dict and enforces the limits it announces (small ones, so the client's
batching and chunking are exercised); tests can make it answer UNAVAILABLE, watch concurrency,
and see which session each lease RPC named. The real daemon is tested in tests/e2e.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tierd.keys import namespace_fingerprint
from tierd.spec import PageSpec
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc

CHUNK_BYTES = 100
MAX_KEYS = 4
PUT_PAGES = 3  # max_put_bytes is this many pages of the registered spec
GET_PAGES = 2  # max_get_bytes likewise
SLOTS = 8
# A held call gives up after this long, so a test that never releases it cannot hang the server.
HELD_CALL_LIMIT_S = 60.0


@dataclass
class FakeState:
    pages: dict[bytes, bytes] = field(default_factory=dict)
    page_bytes: int = 0
    fail_unavailable: dict[str, int] = field(default_factory=dict)  # rpc -> answers left
    calls: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    lookup_delay_s: float = 0.0
    sessions_open: set[str] = field(default_factory=set)
    sessions_ended: list[str] = field(default_factory=list)
    leases: dict[int, str] = field(default_factory=dict)  # lease id -> session id
    lease_sessions: list[str] = field(default_factory=list)  # session metadata of lease RPCs
    commits: list[tuple[int, list[bytes], list[int]]] = field(default_factory=list)
    carried: list[list[int]] = field(default_factory=list)  # release_lease_ids of each Acquire
    released_by_commit: list[int] = field(default_factory=list)
    stats_held_after: int | None = None  # Stats calls beyond this many wait for stats_release
    stats_release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeTierd(pb_grpc.TierdServicer):
    def __init__(self, state: FakeState) -> None:
        self.s = state
        self._next_lease = 1

    # -- helpers --------------------------------------------------------------------------
    def _enter(self, rpc: str, context: grpc.ServicerContext) -> None:
        with self.s.lock:
            self.s.calls[rpc] = self.s.calls.get(rpc, 0) + 1
            left = self.s.fail_unavailable.get(rpc, 0)
            if left:
                self.s.fail_unavailable[rpc] = left - 1
        if left:
            context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down (scripted)")

    def _session(self, context: grpc.ServicerContext) -> str:
        sid = dict(context.invocation_metadata()).get("tierd-session", "")
        with self.s.lock:
            self.s.lease_sessions.append(sid)
            known = sid in self.s.sessions_open
        if not known:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown session {sid!r}")
        return sid

    def _limits(self) -> pb.ServerLimits:
        return pb.ServerLimits(max_message_bytes=1 << 20, chunk_bytes=CHUNK_BYTES,
                               max_put_bytes=PUT_PAGES * self.s.page_bytes,
                               max_keys_per_request=MAX_KEYS,
                               max_get_bytes=GET_PAGES * self.s.page_bytes)

    def _check_keys(self, keys: list[bytes], context: grpc.ServicerContext) -> None:
        if len(keys) > MAX_KEYS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{len(keys)} keys > {MAX_KEYS}")
        if any(len(k) != 16 for k in keys):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "keys must be 16 bytes")

    def _prefix(self, keys: list[bytes]) -> int:
        n = 0
        while n < len(keys) and keys[n] in self.s.pages:
            n += 1
        return n

    # -- RPCs -----------------------------------------------------------------------------
    def Register(self, request, context):
        self._enter("Register", context)
        m = request.spec
        spec = PageSpec(model=m.model, dtype=m.dtype, num_layers=m.num_layers,
                        num_kv_heads=m.num_kv_heads, head_dim=m.head_dim, page_tokens=m.page_tokens)
        self.s.page_bytes = spec.page_bytes
        return pb.RegisterResponse(ns_id=1, page_bytes=spec.page_bytes, tenant="default",
                                   fingerprint=namespace_fingerprint(spec), spec=request.spec,
                                   limits=self._limits())

    def Lookup(self, request, context):
        self._enter("Lookup", context)
        self._check_keys(list(request.keys), context)
        with self.s.lock:
            self.s.in_flight += 1
            self.s.max_in_flight = max(self.s.max_in_flight, self.s.in_flight)
        try:
            time.sleep(self.s.lookup_delay_s)
            n = self._prefix(list(request.keys))
            return pb.LookupResponse(num_hits=n, tiers=[pb.TIER_DRAM] * n)
        finally:
            with self.s.lock:
                self.s.in_flight -= 1

    def PutPages(self, request_iterator, context):
        self._enter("PutPages", context)
        first = next(request_iterator)
        if not first.HasField("header"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message needs the header")
        keys, data = list(first.keys), bytearray(first.data)
        for msg in request_iterator:
            if msg.HasField("header") or len(msg.data) > CHUNK_BYTES:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad chunk")
            keys.extend(msg.keys)
            data.extend(msg.data)
        self._check_keys(keys, context)
        if len(data) != len(keys) * self.s.page_bytes or len(keys) > PUT_PAGES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{len(data)} bytes for {len(keys)} keys")
        stored = 0
        for i, key in enumerate(keys):
            stored += key not in self.s.pages
            self.s.pages[key] = bytes(data[i * self.s.page_bytes:(i + 1) * self.s.page_bytes])
        return pb.PutPagesResponse(num_stored=stored, num_skipped=len(keys) - stored,
                                   durable_ticket=5, durable=first.header.wait_durable)

    def GetPages(self, request, context):
        self._enter("GetPages", context)
        keys = list(request.keys)
        self._check_keys(keys, context)
        if len(keys) > GET_PAGES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{len(keys)} pages > {GET_PAGES}")
        n = self._prefix(keys)
        blob = b"".join(self.s.pages[k] for k in keys[:n])
        yield pb.GetPagesResponse(num_pages=n, page_bytes=self.s.page_bytes, data=blob[:CHUNK_BYTES])
        for start in range(CHUNK_BYTES, len(blob), CHUNK_BYTES):
            yield pb.GetPagesResponse(data=blob[start:start + CHUNK_BYTES])

    def _new_lease(self, sid: str, kind: int, keys: list[bytes], num: int) -> pb.Lease:
        with self.s.lock:
            lease_id = self._next_lease
            self._next_lease += 1
            self.s.leases[lease_id] = sid
        return pb.Lease(lease_id=lease_id, ns_id=1, tier=pb.TIER_HBM, kind=kind, keys=keys,
                        slots=list(range(num)), expires_in_s=30.0)

    def Acquire(self, request, context):
        self._enter("Acquire", context)
        sid = self._session(context)
        if request.ns_id != 1:  # refused before anything changes, carried leases included
            context.abort(grpc.StatusCode.NOT_FOUND, f"namespace {request.ns_id} does not exist")
        with self.s.lock:  # as the daemon does: carried leases end first (unknown ones skipped)
            self.s.carried.append(list(request.release_lease_ids))
            for lease_id in request.release_lease_ids:
                if self.s.leases.get(lease_id) == sid:
                    del self.s.leases[lease_id]
        n = self._prefix(list(request.keys))
        return pb.AcquireResponse(lease=self._new_lease(sid, pb.LEASE_KIND_READ,
                                                        list(request.keys[:n]), n))

    def Allocate(self, request, context):
        self._enter("Allocate", context)
        sid = self._session(context)
        if request.num_pages > SLOTS:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "every slot is leased")
        return pb.AllocateResponse(lease=self._new_lease(sid, pb.LEASE_KIND_FILL, [],
                                                         request.num_pages))

    def Commit(self, request, context):
        self._enter("Commit", context)
        self._session(context)
        with self.s.lock:
            self.s.commits.append((request.lease_id, list(request.keys), list(request.slots)))
            if request.release_lease:
                self.s.released_by_commit.append(request.lease_id)
                self.s.leases.pop(request.lease_id, None)
        return pb.CommitResponse(num_committed=len(request.keys))

    def Release(self, request, context):
        self._enter("Release", context)
        self._session(context)
        with self.s.lock:
            gone = self.s.leases.pop(request.lease_id, None) is None
        if gone:
            context.abort(grpc.StatusCode.NOT_FOUND, f"lease {request.lease_id} does not exist")
        return pb.ReleaseResponse()

    def Renew(self, request, context):
        self._enter("Renew", context)
        self._session(context)
        if request.lease_id not in self.s.leases:
            context.abort(grpc.StatusCode.NOT_FOUND, f"lease {request.lease_id} does not exist")
        return pb.RenewResponse(lease=pb.Lease(lease_id=request.lease_id, ns_id=1, tier=pb.TIER_HBM,
                                               kind=pb.LEASE_KIND_FILL, expires_in_s=request.ttl_s))

    def Stats(self, request, context):
        self._enter("Stats", context)
        with self.s.lock:
            held = self.s.stats_held_after is not None and self.s.calls["Stats"] > self.s.stats_held_after
        if held:
            self.s.stats_release.wait(HELD_CALL_LIMIT_S)
        tiers = [pb.TierStats(tier=t, capacity_bytes=1000 * t, used_bytes=10 * t, pages=len(self.s.pages),
                              hits=t, misses=2 * t, evictions=3 * t, bytes_in=4 * t, bytes_out=5 * t,
                              queue_depth=0) for t in (pb.TIER_HBM, pb.TIER_DRAM, pb.TIER_DISK)]
        return pb.StatsResponse(tiers=tiers, namespaces=1, leases=len(self.s.leases),
                                checksum_failures=0, uptime_s=12.5,
                                write_policy=pb.WRITE_POLICY_WRITE_THROUGH,
                                server=pb.ServerStats(sessions=len(self.s.sessions_open),
                                                      version="fake", device="cpu"))

    def Flush(self, request, context):
        self._enter("Flush", context)
        return pb.FlushResponse(num_flushed=len(self.s.pages))

    def Session(self, request, context):
        self._enter("Session", context)
        sid = uuid.uuid4().hex
        with self.s.lock:
            self.s.sessions_open.add(sid)
        yield pb.SessionEvent(session_id=sid, heartbeat_interval_s=0.1, limits=self._limits())
        seq = 0
        while context.is_active():
            time.sleep(0.02)
            seq += 1
            if seq % 5 == 0:
                yield pb.SessionEvent(session_id=sid, heartbeat_seq=seq)
        with self.s.lock:
            self.s.sessions_open.discard(sid)
            self.s.sessions_ended.append(sid)
            for lease_id in [lid for lid, owner in self.s.leases.items() if owner == sid]:
                del self.s.leases[lease_id]


@dataclass
class FakeDaemon:
    socket_path: Path
    state: FakeState
    health: health.HealthServicer


def start_fake_daemon(socket_path: Path, tls: grpc.ServerCredentials | None = None
                      ) -> tuple[grpc.Server, FakeDaemon]:
    """A started fake on ``socket_path`` (with ``tls``: on localhost TCP, and ``socket_path``
    is then ``localhost:PORT``); the caller stops the server."""
    state = FakeState()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    pb_grpc.add_TierdServicer_to_server(FakeTierd(state), server)
    health_servicer = health.HealthServicer()
    health_servicer.set("tierd.v1.Tierd", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if tls is None:
        server.add_insecure_port(f"unix:{socket_path}")
    else:
        socket_path = Path(f"localhost:{server.add_secure_port('localhost:0', tls)}")
    server.start()
    return server, FakeDaemon(socket_path, state, health_servicer)
