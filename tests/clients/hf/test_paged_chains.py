"""The paged worker's commits name their parents: pages committed as they fill (a prefill, each
decode page, a turn whose pages span two FILL leases, a request after a reused prefix) are one
chain to a prefix-aware daemon, so eviction from hbm takes it from its end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

import torch
from hf_paged_helpers import DRAM_PAGES, LIMITS, OPTIONS, page_bytes, prompt, tiny_models
from server_harness import ServerThread, make_server, serving_settings

from tierd.config import DiskConfig, EvictionPolicy, MemoryTierConfig
from tierd.tier import Tier
from tierd_client import NamespaceHandle, TierClient
from tierd_client.hf.paged import PagedWorker

# 64 hbm slots: the namespace's region has 32, background eviction starts above 28 pages and
# stops at 24.
HBM_PAGES = 64
REGION_LOW_PAGES = 24
CHAIN_PAGES = 21  # what the two requests below leave in hbm


@pytest.fixture()
def prefix_server(short_tmp: Path) -> Iterator[ServerThread]:
    size = page_bytes(torch.float32)
    srv = make_server(short_tmp, serving_settings(**LIMITS), hbm=MemoryTierConfig(HBM_PAGES * size),
                      dram=MemoryTierConfig(DRAM_PAGES * size), disk=DiskConfig(64 << 20),
                      eviction_policy=EvictionPolicy.PREFIX_AWARE)
    yield srv
    srv.stop()


@pytest.fixture()
def commits_seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes | None]]:
    """``(number of keys, parent)`` of every commit a TierClient makes in the test."""
    seen: list[tuple[int, bytes | None]] = []
    commit = TierClient.commit

    def spy(self: TierClient, lease: Any, keys: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((len(keys), kwargs.get("parent")))
        return commit(self, lease, keys, *args, **kwargs)

    monkeypatch.setattr(TierClient, "commit", spy)
    return seen


def commit_in_pieces(client: TierClient, paged: Any) -> tuple[NamespaceHandle, list[bytes]]:
    """Two requests commit a 21-page chain in 6 pieces; returns its namespace and keys."""
    worker = PagedWorker(client, paged, OPTIONS)
    with worker.begin(prompt(100, seed=20)) as first:  # 6 full pages, then 2 decode pages
        first.greedy(40)
        tokens = list(first.tokens)
    assert len(tokens) == 140
    # Reuses the first's 8 pages, prefills 10 more, then a turn of 40 tokens fills page 18 (in
    # the prefill's lease) and pages 19 and 20 (in a lease of the turn).
    with worker.begin(tokens + prompt(160, seed=21)) as second:
        assert second.reused_tokens == 8 * OPTIONS.page_tokens
        second.extend(prompt(40, seed=22))
        keys = worker.ns.keys(second.tokens)
    assert len(keys) == CHAIN_PAGES
    return worker.ns, keys


def test_each_commit_names_the_page_before_it(prefix_server: ServerThread,
                                              commits_seen: list[tuple[int, bytes | None]]) -> None:
    _, paged = tiny_models(torch.float32)
    with TierClient(prefix_server.address) as client:
        _, keys = commit_in_pieces(client, paged)
    assert commits_seen == [(6, None), (1, keys[5]), (1, keys[6]), (10, keys[7]), (1, keys[17]), (2, keys[18])]


def test_a_chain_committed_in_pieces_leaves_hbm_from_its_end(prefix_server: ServerThread) -> None:
    _, paged = tiny_models(torch.float32)
    with TierClient(prefix_server.address) as client:
        ns, keys = commit_in_pieces(client, paged)
        other = ns.keys(prompt(9 * OPTIONS.page_tokens, seed=23))
        client.put(ns, other, [bytes(ns.page_bytes)] * len(other), tier=Tier.HBM)  # 30 pages in 32
        deadline_s = time.monotonic() + 10.0
        while prefix_server.store.stats().tiers[Tier.HBM].pages > REGION_LOW_PAGES:
            assert time.monotonic() < deadline_s, "background eviction did not reach the low watermark"
            time.sleep(0.01)
        tiers = client.lookup_result(ns, keys).tiers
        stats = client.stats()
    # The prefix stays in hbm, the end went down to dram (without parents the end of an earlier
    # piece, a leaf then, goes first and strands the pieces after it).
    assert list(tiers) == [Tier.HBM] * 15 + [Tier.DRAM] * 6
    assert stats.eviction_policy == "prefix_aware" and stats.evictions_with_children == 0
