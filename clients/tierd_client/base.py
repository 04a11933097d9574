"""What both clients hold apart from their transport: target, options, call metadata, the mapped
arenas, the queue of lease ids released client-side, and how their channel is configured.

``AsyncTierClient`` (grpc.aio) and ``TierClient`` (grpc's blocking API) derive from ``ClientBase``
and differ only in how they run a ``requests.Call``.

CUDA regions: both clients synchronize a device before the daemon may touch slots this process's
kernels use (``tierd_client.arena``'s ordering rule): ``fence_devices`` names the devices for one
lease, ``handback_devices`` those of the queued releases a call sends. Both are empty (and import
no cupy) unless this process maps that namespace's CUDA region.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from tierd.handles import HandleKind
from tierd.tier import Tier
from tierd_client import cuda_ipc
from tierd_client.arena import ArenaView
from tierd_client.errors import FailedPreconditionError, InvalidArgumentError
from tierd_client.leases import ReleaseQueue
from tierd_client.local_path import LocalPathStats, LocalReader, SlotPool
from tierd_client.local_steps import LocalPath
from tierd_client.options import ClientOptions, bearer_token, grpc_target
from tierd_client.page_socket import PageRequest, PageSockets, page_request
from tierd_client.requests import Call, require_ns
from tierd_client.types import NamespaceHandle

# gRPC's reconnect backoff starts at 1 s by default; a restarted daemon is back much sooner.
_RECONNECT_BACKOFF_MS = 100
_MAX_RECONNECT_BACKOFF_MS = 2000
CLOSED_MESSAGE = "this client is closed; create a new one"


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {what} {path}: {exc.strerror}") from None


def channel_credentials(options: ClientOptions) -> grpc.ChannelCredentials | None:
    """TLS credentials from ``options.tls_*`` files; ``None`` for a plaintext channel."""
    if options.tls_ca is None:
        return None
    key = _read_pem(options.tls_key, "tls_key") if options.tls_key is not None else None
    cert = _read_pem(options.tls_cert, "tls_cert") if options.tls_cert is not None else None
    return grpc.ssl_channel_credentials(root_certificates=_read_pem(options.tls_ca, "tls_ca"),
                                        private_key=key, certificate_chain=cert)


def open_channel(api: ModuleType, target: str, options: ClientOptions) -> Any:
    """A channel of ``api`` (``grpc`` or ``grpc.aio``: the same factory functions) to ``target``,
    with the message limits and the short reconnect backoff both clients use."""
    limit = options.max_message_bytes
    channel_options = [("grpc.max_send_message_length", limit),
                       ("grpc.max_receive_message_length", limit),
                       ("grpc.initial_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS),
                       ("grpc.min_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS),
                       ("grpc.max_reconnect_backoff_ms", _MAX_RECONNECT_BACKOFF_MS)]
    credentials = channel_credentials(options)
    if credentials is None:
        return api.insecure_channel(target, options=channel_options)
    return api.secure_channel(target, credentials, options=channel_options)


def client_name(options: ClientOptions) -> str:
    """The name the Session stream announces."""
    return options.client_name or f"pid-{os.getpid()}"


class ClientBase:
    """State shared by the blocking and the async client (no transport here)."""

    def __init__(self, target: str | os.PathLike[str] | None, options: ClientOptions | None) -> None:
        self.target = grpc_target(target)
        self.options = options or ClientOptions()
        # Sent on every call: the options' metadata and the tenant token (or $TIERD_TOKEN's).
        self._metadata = self.options.call_metadata()
        self._arenas: dict[tuple[int, Tier, str, bytes], ArenaView] = {}
        self._arenas_lock = threading.Lock()
        self._releases = ReleaseQueue()
        # The epoch of the daemon run the session talks to (b"" before the first session).
        self._server_epoch = b""
        # Local reads and puts need the daemon's region socket: a daemon on this machine.
        local = self.options.local_data_path and self.target.startswith("unix:")
        # Byte-path gets and puts of a daemon on this machine skip gRPC: its page socket.
        self._page_sockets = PageSockets(bearer_token(self._metadata), self.options.rpc_timeout_s)
        self._use_page_socket = self.options.page_socket and self.target.startswith("unix:")
        self._local = LocalPath(LocalReader(self.arena, local), SlotPool(), self.arena, self.options,
                                page_socket=self._use_page_socket)
        self._closed = False

    def page_request(self, call: Call) -> PageRequest | None:
        """``call`` as a page socket request, when it is a GetPages or PutPages that may go there."""
        return page_request(call) if self._use_page_socket else None

    def local_path_stats(self) -> LocalPathStats:
        """What the local data path did so far (pages read without an RPC, fallbacks, puts, calls
        over the page socket)."""
        return replace(self._local.reader.stats(), page_socket_calls=self._page_sockets.calls,
                       page_socket_fallbacks=self._page_sockets.fallbacks)

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPreconditionError(CLOSED_MESSAGE)

    def arena(self, ns: NamespaceHandle, tier: Tier = Tier.HBM) -> ArenaView:
        """Map ``ns``'s region of ``tier`` (once per client); slot numbers of leases index it.

        After a daemon restart, register again (new handles) and call ``arena`` again: views of
        the old regions no longer reach the cache, and ``arena(old_ns)`` raises ``NotFoundError``.
        """
        ns = require_ns(ns)
        handle = ns.region(tier)
        if handle is None:
            raise FailedPreconditionError(
                f"the daemon gave no {tier.label} region for namespace {ns.ns_id}; "
                f"it has {[h.tier.label for h in ns.regions]}")
        key = (ns.ns_id, tier, handle.name, handle.grant)
        # Callers' threads (the blocking client's, or threads beside the async client's loop).
        with self._arenas_lock:
            view = self._arenas.pop(key, None)
            if view is not None and view.is_stale():
                view.close()  # mapping it again reports the region gone: register again
                view = None
            if view is None:
                view = ArenaView(handle, ns.spec, self._current_epoch)
            self._arenas[key] = view
            return view

    def _current_epoch(self) -> bytes:
        return self._server_epoch

    def _on_server_epoch(self, epoch: bytes) -> None:
        """The session reached daemon run ``epoch`` (first session, or a restarted daemon): CUDA
        views of another run map the dead daemon's memory (keeping it resident on the GPU) and
        never the cache's, so they are closed."""
        self._server_epoch = epoch
        with self._arenas_lock:
            old = {key: view for key, view in self._arenas.items()
                   if view.is_cuda and view.handle.epoch and view.handle.epoch != epoch}
            for key in old:
                del self._arenas[key]
        for view in old.values():
            view.close()

    def fence_devices(self, ns: NamespaceHandle, tier: Tier) -> frozenset[int]:
        """The device to synchronize before a Commit or Release of a lease on ``ns``'s ``tier``
        region: its CUDA device when this process maps that region; else none."""
        handle = ns.region(tier)
        if handle is None or handle.kind is not HandleKind.CUDA_IPC:
            return frozenset()
        device_index = cuda_ipc.device_index_of(handle.device)
        if not cuda_ipc.registry().is_mapped(device_index, handle.ipc_handle):
            return frozenset()
        return frozenset((device_index,))

    def handback_devices(self, call: Call) -> frozenset[int]:
        """Devices to synchronize before ``call`` reaches the daemon: those of the queued
        (``release_later``) leases it ends, an Acquire's carried ones or a queued Release."""
        if call.carried:
            return self._releases.devices_for(call.carried)
        if call.rpc == "Release" and call.owner:
            return self._releases.devices_for(((call.owner, call.request.lease_id),))
        return frozenset()

    def _view_devices(self) -> frozenset[int]:
        """The devices of this client's CUDA views (synchronized before its session ends)."""
        with self._arenas_lock:
            return frozenset(view.device_index for view in self._arenas.values() if view.is_cuda)

    def _close_arenas(self) -> None:
        self._page_sockets.close()
        self._local.pool.drain()  # their leases end with the session
        with self._arenas_lock:
            views = list(self._arenas.values())
            self._arenas.clear()
        for view in views:
            view.close()
