"""The byte path over the daemon's page socket (tierd_client.page_socket): ``get`` and ``put`` of
both clients skip gRPC on the daemon's machine, fall back to it when the socket cannot serve, keep
tenants apart, and never return a page other than the one committed under its key while another
thread evicts, deletes and rewrites it."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from local_reader import SPEC, page_words, reader_keys
from server_harness import NO_PAGE_SOCKET, ServerThread, make_server, serving_settings

from tierd.config import MemoryTierConfig
from tierd.server.auth import TenantToken, token_digest
from tierd.server.page_service import PageService
from tierd.server.page_socket import PageSocket, PageSocketSettings
from tierd_client import (
    AsyncTierClient,
    ClientOptions,
    NotFoundError,
    PermissionDeniedError,
    TierClient,
)
from tierd_client.types import NamespaceHandle, PageSocketAddress

BYTES_ONLY = ClientOptions(local_data_path=False)
LIMITS = {"chunk_bytes": 4 << 20, "max_message_bytes": 16 << 20, "max_put_bytes": 64 << 20,
          "max_get_bytes": 64 << 20}
# The namespace gets 8 hbm and 16 dram slots of 1 MiB: the flood below evicts all the time.
TIERS = {"hbm": MemoryTierConfig(16 * SPEC.page_bytes), "dram": MemoryTierConfig(32 * SPEC.page_bytes)}
CHURN_KEYS = 3
CHURN_OPS = 120
MIN_READS = 120
FLOOD_PAGES = 6
CLOSE_POLLS = 3000


def start(tmp: Path, **settings: object) -> ServerThread:
    return make_server(tmp, serving_settings(**{**LIMITS, **settings}), **TIERS)


def pages(start: int, count: int, page_bytes: int, version: int = 1) -> list[np.ndarray]:
    return [page_words(i, version, page_bytes) for i in range(start, start + count)]


def as_bytes(pages_: list[np.ndarray]) -> list[bytes]:
    return [page.tobytes() for page in pages_]


def test_get_and_put_go_over_the_page_socket_and_match_grpc(short_tmp: Path) -> None:
    server = start(short_tmp)
    try:
        with TierClient(server.address, BYTES_ONLY) as fast, \
                TierClient(server.address, replace(BYTES_ONLY, page_socket=False)) as grpc_only:
            ns = fast.register(SPEC)
            assert ns.page_socket is not None and ns.page_socket.path == server.settings.advertised_page_socket
            keys = reader_keys(ns, 5)
            result = fast.put(ns, keys[:4], pages(0, 4, ns.page_bytes))
            assert (result.num_stored, result.num_skipped, result.durable_tickets) == (4, 0, ())
            assert fast.put(ns, keys[:2], pages(0, 2, ns.page_bytes)).num_skipped == 2
            assert fast.get(ns, keys[:4]) == as_bytes(pages(0, 4, ns.page_bytes))
            assert fast.get(ns, [keys[4], keys[0]]) == []  # the prefix ends at the first miss
            stats = fast.local_path_stats()
            assert (stats.page_socket_calls, stats.page_socket_fallbacks) == (4, 0)
            # The same store over gRPC, and what gRPC stores the page socket serves.
            assert grpc_only.get(ns, keys[:4]) == fast.get(ns, keys[:4])
            grpc_only.put(ns, keys[4:], pages(4, 1, ns.page_bytes))
            assert fast.get(ns, keys[4:]) == as_bytes(pages(4, 1, ns.page_bytes))
            assert grpc_only.local_path_stats().page_socket_calls == 0
    finally:
        server.stop()


def test_a_put_that_waits_for_disk_goes_over_grpc(short_tmp: Path) -> None:
    server = start(short_tmp)
    try:
        with TierClient(server.address, BYTES_ONLY) as client:
            ns = client.register(SPEC)
            keys = reader_keys(ns, 1)
            client.put(ns, keys, pages(0, 1, ns.page_bytes), wait_durable=True, durable_timeout_s=30)
            assert client.local_path_stats().page_socket_calls == 0
            assert client.get(ns, keys) == as_bytes(pages(0, 1, ns.page_bytes))
            assert client.local_path_stats().page_socket_calls == 1
    finally:
        server.stop()


@pytest.mark.parametrize("broken", ["missing socket", "another daemon run"])
def test_a_page_socket_that_cannot_serve_falls_back_to_grpc(short_tmp: Path, broken: str) -> None:
    server = start(short_tmp)
    try:
        with TierClient(server.address, BYTES_ONLY) as client:
            ns = client.register(SPEC)
            assert ns.page_socket is not None
            wrong = (PageSocketAddress(str(short_tmp / "nothing.sock"), ns.page_socket.epoch)
                     if broken == "missing socket" else replace(ns.page_socket, epoch=b"x" * 16))
            stale = replace(ns, page_socket=wrong)
            keys = reader_keys(ns, 2)
            assert client.put(stale, keys, pages(0, 2, ns.page_bytes)).num_stored == 2
            assert client.get(stale, keys) == as_bytes(pages(0, 2, ns.page_bytes))
            stats = client.local_path_stats()
            assert (stats.page_socket_calls, stats.page_socket_fallbacks) == (0, 2)
            assert client.get(ns, keys) == as_bytes(pages(0, 2, ns.page_bytes))  # the right one serves
            assert client.local_path_stats().page_socket_calls == 1
    finally:
        server.stop()


def test_a_busy_page_socket_sends_the_call_over_grpc_and_is_tried_again(short_tmp: Path) -> None:
    server = start(short_tmp)
    path = short_tmp / "busy.sock"
    assert server.servicer is not None
    service = PageService(server.store, server.settings, server.servicer.epoch)
    try:
        with PageSocket(PageSocketSettings(path, max_connections=1), service) as sockets, \
                TierClient(server.address, BYTES_ONLY) as client:
            holder = TierClient(server.address, BYTES_ONLY)
            ns = holder.register(SPEC)
            assert ns.page_socket is not None
            busy = replace(ns, page_socket=replace(ns.page_socket, path=str(path)))
            keys = reader_keys(ns, 2)
            holder.put(busy, keys, pages(0, 2, ns.page_bytes))  # holds the one connection
            assert holder.local_path_stats().page_socket_calls == 1
            assert client.get(busy, keys) == as_bytes(pages(0, 2, ns.page_bytes))
            assert client.local_path_stats().page_socket_fallbacks == 1
            holder.close()
            for _ in range(CLOSE_POLLS):  # the daemon's connection thread sees the close
                if sockets.num_connections == 0:
                    break
                time.sleep(0.01)
            assert client.get(busy, keys) == as_bytes(pages(0, 2, ns.page_bytes))
            assert client.local_path_stats().page_socket_calls == 1  # not given up on
    finally:
        server.stop()


def test_a_daemon_without_a_page_socket_is_served_over_grpc(short_tmp: Path) -> None:
    server = start(short_tmp, advertised_page_socket=NO_PAGE_SOCKET)
    try:
        with TierClient(server.address, BYTES_ONLY) as client:
            ns = client.register(SPEC)
            assert ns.page_socket is None
            keys = reader_keys(ns, 1)
            client.put(ns, keys, pages(0, 1, ns.page_bytes))
            assert client.get(ns, keys) == as_bytes(pages(0, 1, ns.page_bytes))
            assert client.local_path_stats().page_socket_calls == 0
    finally:
        server.stop()


def test_refusals_are_the_errors_grpc_gives(short_tmp: Path) -> None:
    tokens = (TenantToken("alpha", token_digest("alpha-token-1")), TenantToken("bravo", token_digest("bravo-token-1")))
    server = start(short_tmp, tenant_tokens=tokens)
    try:
        with TierClient(server.address, replace(BYTES_ONLY, token="alpha-token-1")) as alpha, \
                TierClient(server.address, replace(BYTES_ONLY, token="bravo-token-1")) as bravo:
            ns = alpha.register(SPEC)
            keys = reader_keys(ns, 1)
            alpha.put(ns, keys, pages(0, 1, ns.page_bytes))
            with pytest.raises(PermissionDeniedError, match="another tenant"):
                bravo.get(ns, keys)
            with pytest.raises(PermissionDeniedError, match="another tenant"):
                bravo.put(ns, keys, pages(0, 1, ns.page_bytes))
            with pytest.raises(NotFoundError):
                alpha.get(replace(ns, ns_id=ns.ns_id + 99), keys)
            assert bravo.local_path_stats().page_socket_calls == 2  # refused there, not over gRPC
            assert alpha.get(ns, keys) == as_bytes(pages(0, 1, ns.page_bytes))  # connection reused
    finally:
        server.stop()


def test_the_async_client_uses_the_page_socket(short_tmp: Path) -> None:
    server = start(short_tmp)

    async def run() -> None:
        async with AsyncTierClient(server.address, BYTES_ONLY) as client:
            ns = await client.register(SPEC)
            keys = reader_keys(ns, 3)
            await client.put(ns, keys, pages(0, 3, ns.page_bytes))
            got = await asyncio.gather(*(client.get(ns, [key]) for key in keys))
            assert [page for pages_ in got for page in pages_] == as_bytes(pages(0, 3, ns.page_bytes))
            assert client.local_path_stats().page_socket_calls == 4

    try:
        asyncio.run(run())
    finally:
        server.stop()


class Churn:
    """Rewrites, deletes and floods (evictions) CHURN_OPS times; every version committed."""

    def __init__(self, client: TierClient, ns_keys: list[bytes], flood: list[bytes], page_bytes: int) -> None:
        self.client, self.keys, self.flood, self.page_bytes = client, ns_keys, flood, page_bytes
        self.committed: dict[int, set[int]] = {k: set() for k in range(len(ns_keys))}
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self, ns: NamespaceHandle) -> None:
        try:
            for op in range(CHURN_OPS):
                k = op % len(self.keys)
                if op % 3 == 0:
                    self.client.delete(ns, [self.keys[k]])
                self.committed[k].add(op)  # before the put: a reader may see it at once
                self.client.put(ns, [self.keys[k]], [page_words(k, op, self.page_bytes)])
                if op % 4 == 0:  # other pages: the churned ones are evicted, their slots reused
                    batch = self.flood[(op // 4 * FLOOD_PAGES) % len(self.flood):][:FLOOD_PAGES]
                    self.client.put(ns, batch, [page_words(99, op, self.page_bytes)] * len(batch))
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


def test_reads_never_return_a_page_evicted_overwritten_or_deleted_meanwhile(short_tmp: Path) -> None:
    server = start(short_tmp)
    try:
        with TierClient(server.address, BYTES_ONLY) as writer, TierClient(server.address, BYTES_ONLY) as reader:
            ns = writer.register(SPEC)
            all_keys = reader_keys(ns, CHURN_KEYS + 24)
            churn = Churn(writer, all_keys[:CHURN_KEYS], all_keys[CHURN_KEYS:], ns.page_bytes)
            thread = threading.Thread(target=churn.run, args=(ns,))
            thread.start()
            reads = seen = 0
            while not churn.done.is_set() or reads < MIN_READS:
                k = reads % CHURN_KEYS
                for page in reader.get(ns, [all_keys[k]]):
                    words = np.frombuffer(page, "<u8")
                    assert (words == words[0]).all(), "a torn page"
                    key_index, version = int(words[0]) >> 32, int(words[0]) & 0xFFFFFFFF
                    assert key_index == k and version in churn.committed[k], (key_index, version)
                    seen += 1
                reads += 1
            thread.join()
            assert churn.error is None, churn.error
            assert seen > 0 and reader.local_path_stats().page_socket_calls >= reads
    finally:
        server.stop()
