"""The client's view of a windowed namespace against a real daemon (tests/server_harness.py):
``lease.page_indices`` / ``prefix_pages`` name the window's pages of the requested keys, renew
keeps them, a namespace without a window reads ``0, 1, ...``; a daemon answer whose window does
not fit its keys is the daemon's fault (``TierdRpcError``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import PAGE_SPEC, ServerThread, make_server

from tierd.v1 import tierd_pb2 as pb
from tierd_client import AsyncTierClient, ClientOptions, PageSpec, Tier, TierClient, TierdRpcError
from tierd_client.convert import lease_from_wire

PLAIN = PageSpec(model=PAGE_SPEC.model, dtype=PAGE_SPEC.dtype, num_layers=PAGE_SPEC.num_layers,
                 num_kv_heads=PAGE_SPEC.num_kv_heads, head_dim=PAGE_SPEC.head_dim,
                 page_tokens=PAGE_SPEC.page_tokens)
# 16-token pages, a 20-token window and 16 sinks: of 8 pages, page 0 and pages 6, 7.
WINDOWED = PageSpec(model=PLAIN.model, dtype=PLAIN.dtype, num_layers=PLAIN.num_layers,
                    num_kv_heads=PLAIN.num_kv_heads, head_dim=PLAIN.head_dim,
                    page_tokens=PLAIN.page_tokens, window_tokens=20, sink_tokens=16)
BYTE_PATH = ClientOptions(local_data_path=False)


@pytest.fixture()
def server(short_tmp: Path) -> Iterator[ServerThread]:
    srv = make_server(short_tmp)
    try:
        yield srv
    finally:
        srv.stop()


def _pages(count: int) -> list[bytes]:
    return [bytes([i + 1]) * PLAIN.page_bytes for i in range(count)]


def test_a_windowed_lease_names_its_pages(server: ServerThread) -> None:
    with TierClient(server.address, BYTE_PATH) as client:
        ns = client.register(WINDOWED)
        assert ns.spec == WINDOWED and ns.spec.windowed
        keys = ns.keys(range(9 * 16))  # 9 keys, 8 of them cached
        client.put(ns, keys[:8], _pages(8))
        assert client.lookup(ns, keys) == 8
        with client.acquire(ns, keys, Tier.HBM, timeout_s=10.0) as lease:
            assert lease.page_indices == (0, 6, 7) and lease.prefix_pages == 8
            assert lease.keys == (keys[0], keys[6], keys[7]) and len(lease.slots) == 3
            hbm = client.arena(ns, Tier.HBM).bytes()
            for slot, index in zip(lease.slots, lease.page_indices):
                assert bytes(hbm[slot]) == _pages(8)[index]
            lease.renew(30.0)
            assert lease.page_indices == (0, 6, 7) and lease.prefix_pages == 8


def test_a_lease_without_a_window_counts_from_zero(server: ServerThread) -> None:
    with TierClient(server.address, BYTE_PATH) as client:
        ns = client.register(PLAIN)
        keys = ns.keys(range(4 * 16))
        client.put(ns, keys[:3], _pages(3))
        with client.acquire(ns, keys) as lease:
            assert lease.state.window is None
            assert lease.page_indices == (0, 1, 2) and lease.prefix_pages == 3


def test_the_async_client_shows_the_window(server: ServerThread) -> None:
    async def main() -> tuple[tuple[int, ...], int]:
        async with AsyncTierClient(server.address, BYTE_PATH) as client:
            ns = await client.register(WINDOWED)
            keys = ns.keys(range(8 * 16))
            await client.put(ns, keys, _pages(8))
            async with client.acquire(ns, keys) as lease:
                return lease.page_indices, lease.prefix_pages

    assert asyncio.run(main()) == ((0, 6, 7), 8)


@pytest.mark.parametrize("fields", [
    {"keys": [b"k" * 16] * 2, "page_indices": [3], "prefix_pages": 4},      # one index for two keys
    {"keys": [b"k" * 16] * 2, "page_indices": [3, 1], "prefix_pages": 4},   # not ascending
    {"keys": [b"k" * 16] * 2, "page_indices": [1, 4], "prefix_pages": 4},   # beyond the prefix
    {"keys": [b"k" * 16] * 2, "page_indices": [0, 2], "prefix_pages": 4},   # not the last page
    {"keys": [], "page_indices": [], "prefix_pages": 4},                     # a prefix, no pages
])
def test_a_window_that_does_not_fit_the_keys_is_the_daemons_fault(fields: dict[str, object]) -> None:
    message = pb.Lease(lease_id=1, ns_id=1, tier=pb.TIER_HBM, kind=pb.LEASE_KIND_READ,
                       slots=[0] * len(fields["keys"]), **fields)  # type: ignore[arg-type]
    with pytest.raises(TierdRpcError, match="Lease.page_indices"):
        lease_from_wire(message, 0.0)
