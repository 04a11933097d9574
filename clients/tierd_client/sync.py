"""``TierClient``: the blocking client, on grpc's synchronous API.

Each call runs in its caller's thread straight on a blocking gRPC channel (no event loop, no
hand-off to another thread); the session stream is read by a daemon thread of its own. Safe to
call from several threads at once: the in-flight cap is a semaphore, and a live session costs
no lock. What a call sends and makes of the answers is ``requests``' (shared with
``AsyncTierClient``); this module only moves it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc

from tierd.spec import PageSpec
from tierd.tier import Tier
from tierd.v1 import tierd_pb2_grpc as pb_grpc
from tierd_client import cuda_ipc, local_steps, page_socket, requests
from tierd_client.base import CLOSED_MESSAGE, ClientBase, client_name, open_channel
from tierd_client.errors import FailedPreconditionError, from_grpc
from tierd_client.leases import Lease
from tierd_client.options import ClientOptions
from tierd_client.requests import HEALTH_SERVICE, Call, Steps
from tierd_client.rpc import SyncRpcRunner
from tierd_client.session import SyncSession, session_lost
from tierd_client.transfer import PageAssembler
from tierd_client.types import CommitResult, DaemonStats, LeaseState, LookupResult, NamespaceHandle, PutResult
from tierd_client.wire_pages import get_pages_callable

__all__ = ["Lease", "TierClient"]

T = TypeVar("T")


def _single_threaded_streams() -> ModuleType:
    """``grpc``'s channel factories as ``open_channel`` calls them, with streaming responses
    read by the thread that iterates them (``SingleThreadedUnaryStream``)."""
    option = (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)
    api = ModuleType("tierd_client.sync.single_threaded_grpc")
    api.insecure_channel = lambda target, options: grpc.insecure_channel(  # type: ignore[attr-defined]
        target, options=[*options, option])
    api.secure_channel = lambda target, credentials, options: grpc.secure_channel(  # type: ignore[attr-defined]
        target, credentials, options=[*options, option])
    return api


class TierClient(ClientBase):
    """Blocking client of one tierd daemon; use as a context manager.

    ``socket_path``: the daemon's unix socket (default ``$TIERD_SOCKET`` or
    ``/run/tierd/tierd.sock``), ``unix:PATH`` or ``host:port``. Connecting sends nothing; the
    first call retries with backoff while the daemon is unavailable.
    """

    def __init__(self, socket_path: str | os.PathLike[str] | None = None,
                 options: ClientOptions | None = None) -> None:
        super().__init__(socket_path, options)
        self._channel: grpc.Channel = open_channel(grpc, self.target, self.options)
        self._stub = pb_grpc.TierdStub(self._channel)  # type: ignore[no-untyped-call]
        # GetPages reads its stream in the caller's thread: on grpc's default channel a
        # streaming call starts a thread to poll it whenever none runs (each call, when no
        # Session is open), 0.2-0.5 ms of a 512 KiB get on a 2-core machine. That mode is a
        # channel option, so GetPages has a channel of its own (the Session stream, read by its
        # own thread and cancelled from others, keeps the default); with the same core options
        # it shares the first channel's connection (grpc pools subchannels).
        self._pages_channel: grpc.Channel = open_channel(_single_threaded_streams(), self.target,
                                                         self.options)
        self._get_pages_stream = get_pages_callable(self._pages_channel)
        self._runner = SyncRpcRunner(self.target, self.options.retry, self.options.max_inflight_rpcs)
        # The session stream lives as long as the client: it takes no in-flight slot (opening it
        # from inside a limited call must not wait for a slot that call holds).
        self._session = SyncSession(
            lambda request: self._stub.Session(request, metadata=self._metadata),
            client_name(self.options),
            lambda rpc, attempt: self._runner.call(rpc, attempt, limited=False),
            on_epoch=self._on_server_epoch)
        self._close_lock = threading.Lock()

    @property
    def session_id(self) -> str:
        """The id of the open session (``""`` before the first lease RPC)."""
        return self._session.session_id

    def close(self) -> None:
        """End the session (the daemon frees this client's leases) and close the channel. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            try:
                # The session's end releases every lease: this process's kernels go first.
                cuda_ipc.synchronize(self._view_devices())
                self._run(requests.release_all_steps(self._releases.take(), self._session.is_open))
            finally:
                self._closed = True
                self._session.close()
                self._close_arenas()
                self._pages_channel.close()
                self._channel.close()

    def __enter__(self) -> TierClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------------
    def _run(self, steps: Steps[T]) -> T:
        return requests.run_steps(steps, self._send)

    def _send(self, call: Call) -> Any:
        """Run one ``call`` (retried on UNAVAILABLE); its answer for the steps."""
        if self._closed:
            raise FailedPreconditionError(CLOSED_MESSAGE)
        devices = self.handback_devices(call)
        if devices:  # queued releases of CUDA slots: this process's kernels first
            cuda_ipc.synchronize(devices)
        timeout = call.timeout_s or self.options.rpc_timeout_s
        page = self.page_request(call)
        if page is not None:
            answer = page_socket.run_blocking(self._page_sockets, page)
            if answer is not None:
                return answer
        if call.rpc == "PutPages":
            return self._runner.call(call.rpc, lambda: self._stub.PutPages(
                requests.sync_messages(call.request.messages()), timeout=timeout,
                metadata=self._metadata))
        if call.rpc == "GetPages":
            return self._runner.call(call.rpc, lambda: self._get_pages(call, timeout))
        method = getattr(self._stub, call.rpc)
        if not call.session:
            return self._runner.call(call.rpc, lambda: method(call.request, timeout=timeout,
                                                              metadata=self._metadata))
        return self._runner.call(call.rpc, lambda: self._session_attempt(method, call, timeout))

    def _session_attempt(self, method: Any, call: Call, timeout: float) -> tuple[Any, str]:
        session_metadata = self._session.metadata()
        session_id = session_metadata[0][1]
        request = requests.request_for_session(call, session_id)
        try:
            response = method(request, timeout=timeout, metadata=self._metadata + session_metadata)
        except grpc.RpcError as exc:
            lost = session_lost(exc, self._session.is_open(session_id), call.rpc)
            if lost is not None:
                raise lost from None
            raise
        return response, session_id

    def _get_pages(self, call: Call, timeout: float) -> list[bytes]:
        """One GetPages call, its stream reassembled into pages."""
        assembler = PageAssembler(call.page_bytes, len(call.request.keys))
        stream = self._get_pages_stream(call.request, timeout=timeout, metadata=self._metadata)
        try:
            for message in stream:
                assembler.add(message)
        except BaseException:
            stream.cancel()  # a stream the assembler refused (or an interrupt) is not read on
            raise
        return assembler.pages()

    # -- namespaces and lookups ------------------------------------------------------------
    def register(self, spec: PageSpec, tenant: str = "") -> NamespaceHandle:
        """Register (tenant, spec); idempotent. The handle computes keys: ``ns.keys(token_ids)``."""
        return self._run(requests.register_steps(spec, tenant))

    def lookup(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> int:
        """How many leading ``keys`` are cached."""
        return self.lookup_result(ns, keys).num_hits

    def lookup_result(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> LookupResult:
        """The cached prefix length and the tier of each hit."""
        return self._run(requests.lookup_steps(ns, keys, self.options))

    def prefetch(self, ns: NamespaceHandle, keys: Sequence[bytes],
                 target_tier: Tier = Tier.HBM) -> int:
        """Start moving the pages up to ``target_tier``; returns the number scheduled at once."""
        return self._run(requests.prefetch_steps(ns, keys, target_tier))

    def delete(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> int:
        """Drop the pages from every tier; returns how many were there."""
        return self._run(requests.delete_steps(ns, keys, self.options))

    # -- byte path -------------------------------------------------------------------------
    def put(self, ns: NamespaceHandle, keys: Sequence[bytes], pages: object,
            tier: Tier = Tier.DRAM, wait_durable: bool = False,
            durable_timeout_s: float | None = None, *, parent: bytes | None = None) -> PutResult:
        """Store one page per key (``ns.page_bytes`` each; bytes-like, numpy or torch) in
        ``tier``. On the daemon's machine the pages are copied into leased slots of the mapped
        region and committed with one RPC (see ``ClientOptions.put_slots``).

        ``keys`` are a chain; ``parent`` is the key of the page before ``keys[0]`` (16 bytes),
        ``None`` when ``keys[0]`` starts one: prefix-aware eviction keeps a chain's earlier pages
        while later ones are cached."""
        return self._run(local_steps.put_steps(self._local, ns, keys, pages, tier, wait_durable,
                                               durable_timeout_s, parent))

    def get(self, ns: NamespaceHandle, keys: Sequence[bytes]) -> list[bytes]:
        """The pages of the longest cached prefix of ``keys``, in order. On the daemon's machine
        resident pages are copied out of its regions without an RPC."""
        return self._run(local_steps.get_steps(self._local, ns, keys))

    def get_into(self, ns: NamespaceHandle, keys: Sequence[bytes], out: object) -> int:
        """Copy the pages of the longest cached prefix of ``keys`` into ``out`` (``len(keys) *
        page_bytes`` writable bytes: bytearray, numpy, CPU torch); returns how many pages.

        On the daemon's machine resident pages come straight from its regions through its page
        index (no RPC; never a page evicted, overwritten or deleted during the copy), the rest
        over GetPages."""
        return self._run(local_steps.get_into_steps(self._local, ns, keys, out))

    def wait_durable(self, ticket: int, timeout_s: float | None = None) -> bool:
        """Wait until the pages of a put's or commit's ticket are on disk; False if ``timeout_s`` passed."""
        return self._run(requests.wait_durable_steps(ticket, timeout_s))

    # -- zero-copy path --------------------------------------------------------------------
    def acquire(self, ns: NamespaceHandle, keys: Sequence[bytes], target_tier: Tier = Tier.HBM,
                timeout_s: float | None = None, ttl_s: float | None = None) -> Lease:
        """READ-lease the longest cached prefix of ``keys``, resident in ``target_tier``.

        Carries the ids of leases given back with ``release_later`` (the daemon ends them first).
        """
        call = requests.acquire_call(ns, keys, target_tier, timeout_s, ttl_s, self.options)
        state, session_id = self._run(requests.acquire_steps(call, ns, self._releases,
                                                             self._session.is_open))
        return Lease(self, ns, state, session_id)

    def allocate(self, ns: NamespaceHandle, num_pages: int, ttl_s: float | None = None,
                 tier: Tier = Tier.HBM) -> Lease:
        """FILL-lease ``num_pages`` free slots of ``tier`` (hbm or dram); write pages into them
        (``arena(ns, lease.tier)``), then ``commit``."""
        call = requests.allocate_call(ns, num_pages, ttl_s, tier)
        state, session_id = self._run(requests.lease_steps(call))
        return Lease(self, ns, state, session_id)

    def commit(self, lease: Lease, keys: Sequence[bytes], slots: Sequence[int] | None = None, *,
               wait_durable: bool = False, durable_timeout_s: float | None = None,
               release: bool = False, parent: bytes | None = None) -> CommitResult:
        """Bind filled ``slots`` (default: the lease's first ``len(keys)``) to ``keys``.

        ``wait_durable`` (write_through daemons): answer only once the pages are on disk, or once
        ``durable_timeout_s`` passed. ``release``: the daemon then ends the lease (its other
        slots go back) and ``lease`` counts as released. ``parent``: as for ``put``.

        On a CUDA region this process maps, the device is synchronized first (this process's
        work), so the daemon never copies a slot a kernel is still writing.
        """
        devices = self.fence_devices(lease.ns, lease.tier)
        if devices:
            cuda_ipc.synchronize(devices)
        result = self._run(requests.commit_steps(lease.state, keys, slots, wait_durable,
                                                 durable_timeout_s, release, self.options,
                                                 parent=parent))
        if release:
            lease._mark_released()
        return result

    def renew(self, lease: Lease, ttl_s: float | None = None) -> None:
        lease.renew(ttl_s)

    def release(self, lease: Lease) -> None:
        lease.release()

    def _renew_state(self, lease_id: int, ttl_s: float | None) -> LeaseState:
        return self._run(requests.renew_steps(lease_id, ttl_s))

    def _release_lease(self, lease: Lease) -> None:
        """Release ``lease``; on a mapped CUDA region after this process's kernels are done."""
        devices = self.fence_devices(lease.ns, lease.tier)
        if devices:
            cuda_ipc.synchronize(devices)
        self._run(requests.release_steps(lease.lease_id))

    def _release_later_lease(self, lease: Lease) -> None:
        """Queue ``lease`` for the next Acquire (which synchronizes its device, if any, first)."""
        if self._session.is_open(lease.session_id):
            self._releases.remember_devices(lease.session_id, lease.lease_id,
                                            self.fence_devices(lease.ns, lease.tier))
        self._run(requests.release_later_steps(self._releases, lease.session_id, lease.lease_id,
                                               self._session.is_open))

    # -- operations ------------------------------------------------------------------------
    def stats(self) -> DaemonStats:
        return self._run(requests.stats_steps())

    def flush(self, timeout_s: float | None = None) -> int:
        """Write every dirty page to disk; returns how many were written."""
        return self._run(requests.flush_steps(timeout_s))

    def health(self, service: str = HEALTH_SERVICE, timeout_s: float = 5.0) -> bool:
        """True when the daemon answers SERVING for ``service``; one attempt, no retries, so a
        daemon that is down raises ``UnavailableError`` at once."""
        self._check_open()
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = stub.Check(requests.health_request(service), timeout=timeout_s,
                                  metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_grpc(exc, "Health.Check") from None
        return requests.is_serving(response)
