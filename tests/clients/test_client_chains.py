"""put(parent=...) and commit(parent=...) against a real prefix-aware daemon: a chain put in
pieces (calls, PutPages batches, local commits) stays one chain, so eviction takes it from its
end; a malformed parent is refused before anything is sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import PAGE_BYTES, PAGE_SPEC, ServerThread, make_server, serving_settings

from tierd.config import EvictionPolicy
from tierd_client import (
    AsyncTierClient,
    ClientOptions,
    InvalidArgumentError,
    NamespaceHandle,
    PageSpec,
    Tier,
    TierClient,
)

SPEC = PageSpec(model=PAGE_SPEC.model, dtype=PAGE_SPEC.dtype, num_layers=PAGE_SPEC.num_layers,
                num_kv_heads=PAGE_SPEC.num_kv_heads, head_dim=PAGE_SPEC.head_dim,
                page_tokens=PAGE_SPEC.page_tokens)
BYTE_PATH = ClientOptions(local_data_path=False)
# A local put (into leased slots: not over the page socket) commits every 4 pages.
LOCAL_PATH = ClientOptions(put_slots=4, page_socket=False)
DRAM_LOW_PAGES = 48  # the harness's 64 dram slots, background eviction down to 75%


@pytest.fixture()
def server(short_tmp: Path) -> Iterator[ServerThread]:
    # At most 8 pages per PutPages and 8 keys per request (so per local Commit): a put is split
    # into calls that each name the key before their first.
    srv = make_server(short_tmp, serving_settings(max_put_bytes=8 * PAGE_BYTES, max_keys_per_request=8),
                      eviction_policy=EvictionPolicy.PREFIX_AWARE)
    try:
        yield srv
    finally:
        srv.stop()


def _keys(ns: NamespaceHandle, count: int, start: int = 0) -> list[bytes]:
    return ns.keys(range(start * SPEC.page_tokens, (start + count) * SPEC.page_tokens))


def _pages(count: int) -> list[bytes]:
    return [bytes([i % 251]) * SPEC.page_bytes for i in range(count)]


def _settle(server: ServerThread) -> None:
    deadline_s = time.monotonic() + 10.0
    while server.store.stats().tiers[Tier.DRAM].pages > DRAM_LOW_PAGES:
        assert time.monotonic() < deadline_s, "background eviction did not reach the low watermark"
        time.sleep(0.01)


def _evicted_from_its_end(tiers: tuple[Tier, ...]) -> bool:
    """A cached prefix in dram, the rest on disk."""
    return list(tiers) == sorted(tiers) and tiers[0] is Tier.DRAM and tiers[-1] is Tier.DISK


@pytest.mark.parametrize("options", [BYTE_PATH, LOCAL_PATH], ids=["byte-path", "local"])
def test_a_chain_put_in_pieces_is_evicted_from_its_end(server: ServerThread,
                                                       options: ClientOptions) -> None:
    with TierClient(server.address, options) as client:
        ns = client.register(SPEC)
        chain, other = _keys(ns, 32), _keys(ns, 28, start=10_000)
        client.put(ns, chain[:3], _pages(3))
        client.put(ns, chain[3:], _pages(29), parent=chain[2])  # 4 PutPages, or 4 Commits
        client.put(ns, other, _pages(28))
        _settle(server)
        assert _evicted_from_its_end(client.lookup_result(ns, chain).tiers)
        stats = client.stats()
        assert stats.eviction_policy == "prefix_aware" and stats.evictions_with_children == 0


def test_the_async_client_names_parents_in_put_and_commit(server: ServerThread) -> None:
    async def flow() -> tuple[Tier, ...]:
        async with AsyncTierClient(server.address, BYTE_PATH) as client:
            ns = await client.register(SPEC)
            chain, other = _keys(ns, 32), _keys(ns, 28, start=10_000)
            await client.put(ns, chain[:3], _pages(3))
            await client.put(ns, chain[3:24], _pages(21), parent=chain[2])
            fill = await client.allocate(ns, 8, tier=Tier.DRAM)  # its bytes do not matter here
            await fill.commit(chain[24:], release=True, parent=chain[23])
            await client.put(ns, other, _pages(28))
            _settle(server)
            return (await client.lookup_result(ns, chain)).tiers

    assert _evicted_from_its_end(asyncio.run(flow()))


@pytest.mark.parametrize("parent", [b"short", bytes(17), "a" * 16, 7], ids=["5B", "17B", "str", "int"])
def test_a_malformed_parent_is_refused_before_anything_is_sent(server: ServerThread,
                                                               parent: object) -> None:
    with TierClient(server.address, BYTE_PATH) as client:
        ns = client.register(SPEC)
        keys = _keys(ns, 2)
        with pytest.raises(InvalidArgumentError, match="parent: a page key must be 16 bytes"):
            client.put(ns, keys, _pages(2), parent=parent)  # type: ignore[arg-type]
        fill = client.allocate(ns, 2)
        with pytest.raises(InvalidArgumentError, match="the key of the page just before keys"):
            fill.commit(keys, parent=parent)  # type: ignore[arg-type]
        assert client.lookup(ns, keys) == 0
        fill.release()
