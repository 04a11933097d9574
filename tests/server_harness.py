"""Test harness: a real grpc.aio server (uvloop, own thread) over a real PageStore on a temp
unix socket.

Tests talk to it with the raw generated stubs over a blocking channel, and look at the store
directly (it is thread-safe) to check that rejected requests changed nothing.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import uvloop

from tierd.config import DiskConfig, MemoryTierConfig, StoreConfig
from tierd.keys import chain_keys
from tierd.server import ServingSettings, TierdServicer, build_server, set_serving
from tierd.server.auth import TenantToken, token_digest
from tierd.server.page_service import PageService
from tierd.server.page_socket import PageSocket, PageSocketSettings
from tierd.server.region_socket import RegionSocket, RegionSocketSettings
from tierd.store import PageStore
from tierd.v1 import tierd_pb2 as pb

START_TIMEOUT_S = 60.0
ALPHA_TOKEN, BRAVO_TOKEN = "alpha-secret-token-0123456789", "bravo-secret-token-0123456789"
TENANT_TOKENS = (TenantToken("alpha", token_digest(ALPHA_TOKEN)),
                 TenantToken("bravo", token_digest(BRAVO_TOKEN)))
NO_PAGE_SOCKET = "-"  # make_server(settings with advertised_page_socket=NO_PAGE_SOCKET): none
PAGE_SPEC = pb.PageSpec(model="tiny@test", dtype="float16", num_layers=2, num_kv_heads=2,
                        head_dim=32, page_tokens=16)  # 8 KiB pages
PAGE_BYTES = 2 * 2 * 16 * 2 * 32 * 2


def store_config(data_dir: Path, **changes: object) -> StoreConfig:
    """Small tiers: 32 hbm and 64 dram slots of 8 KiB for the first namespace (region_share 0.5)."""
    config = StoreConfig(data_dir=data_dir, hbm=MemoryTierConfig(64 * PAGE_BYTES),
                         dram=MemoryTierConfig(128 * PAGE_BYTES), disk=DiskConfig(64 << 20),
                         shm_prefix=f"tdt{os.getpid()}", prefault=False, acquire_timeout_s=10.0)
    return replace(config, **changes)


class ServerThread:
    """Store + servicer + server on one uvloop event loop in a thread of its own."""

    def __init__(self, config: StoreConfig, settings: ServingSettings, socket_path: Path) -> None:
        self.config = config
        self.settings = settings
        self.address = f"unix:{socket_path}"
        self.store = PageStore(config)
        self.servicer: TierdServicer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-tierd-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise TimeoutError("test server did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            uvloop.run(self._main())
        except BaseException as exc:  # surfaced to the test thread by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self._loop.run_in_executor(None, self.store.open)
        regions = None
        if self.settings.advertised_region_socket:
            regions = RegionSocket(RegionSocketSettings(Path(self.settings.advertised_region_socket)),
                                   self.store.shared_region_fd)
            regions.start()
        self.servicer = TierdServicer(self.store, self.settings)
        pages = None
        if self.settings.advertised_page_socket:
            pages = PageSocket(PageSocketSettings(Path(self.settings.advertised_page_socket)),
                               PageService(self.store, self.settings, self.servicer.epoch))
            pages.start()
        server, health = build_server(self.servicer, self.settings)
        server.add_insecure_port(self.address)
        await server.start()
        await set_serving(health, True)
        self._ready.set()
        await self._stop.wait()
        self.servicer.begin_shutdown()
        await server.stop(grace=5.0)
        await self.servicer.wait_idle(5.0)
        for unix in (pages, regions):
            if unix is not None:
                unix.close()
        await self._loop.run_in_executor(None, self.store.close)
        self.servicer.close()

    def call_soon(self, fn: object) -> None:
        """Run ``fn()`` on the server's loop (e.g. ``servicer.begin_shutdown``)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT_S)


def serving_settings(**changes: object) -> ServingSettings:
    """Small limits (chunks of 5000 bytes, 40-page gets), fast heartbeats; ``changes`` on top."""
    settings = ServingSettings(chunk_bytes=5000, max_message_bytes=1 << 20, max_put_bytes=1 << 20,
                               max_get_bytes=40 * PAGE_BYTES, max_keys_per_request=1000,
                               session_heartbeat_s=0.2)
    return replace(settings, **changes)


def make_server(tmp: Path, settings: ServingSettings | None = None, **store_changes: object
                ) -> ServerThread:
    settings = settings or serving_settings()
    if not settings.advertised_region_socket:
        settings = replace(settings, advertised_region_socket=str(tmp / "s-regions.sock"))
    if not settings.advertised_page_socket:  # "-": no page socket (clients use gRPC)
        settings = replace(settings, advertised_page_socket=str(tmp / "s-pages.sock"))
    elif settings.advertised_page_socket == NO_PAGE_SOCKET:
        settings = replace(settings, advertised_page_socket="")
    server = ServerThread(store_config(tmp / "data", **store_changes), settings, tmp / "s.sock")
    server.start()
    return server


def open_channel(srv: ServerThread) -> grpc.Channel:
    limit = srv.settings.max_message_bytes
    return grpc.insecure_channel(srv.address, options=[
        ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)])


def pages_for(count: int, seed: int = 0) -> list[bytes]:
    """Distinct, recognisable pages: page i is filled from byte (seed * 31 + i)."""
    return [bytes((seed * 31 + i + j) % 251 for j in range(256)) * (PAGE_BYTES // 256)
            for i in range(count)]


def keys_for(reg: pb.RegisterResponse, count: int, start: int = 0) -> list[bytes]:
    tokens = list(range(start, start + count * PAGE_SPEC.page_tokens))
    return chain_keys(reg.fingerprint, tokens, PAGE_SPEC.page_tokens)


def put_stream(ns_id: int, keys: list[bytes], pages: list[bytes], chunk_bytes: int = 3000,
               tier: int = pb.TIER_UNSPECIFIED, **header: object) -> Iterator[pb.PutPagesRequest]:
    """A PutPages stream: header first, keys spread over the messages, data cut at chunk_bytes."""
    data = b"".join(pages)
    chunks = [data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes)] or [b""]
    per = max(1, -(-len(keys) // len(chunks)))
    for i, chunk in enumerate(chunks):
        message = pb.PutPagesRequest(keys=keys[i * per:(i + 1) * per], data=chunk)
        if i == 0:
            message.header.CopyFrom(pb.PutPagesHeader(ns_id=ns_id, tier=tier, **header))
        yield message
