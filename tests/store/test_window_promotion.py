"""Window-aware Acquire and Prefetch: in a namespace with ``window_tokens`` (and sinks) they move
up, and Acquire leases, exactly the pages a continuation of the cached prefix attends to; the
other pages stay where they were, unleased. Lookup still answers the whole prefix, and a
namespace without a window leases the whole prefix as before. Checked through the store's
public surfaces (leases, ``inspect``, ``read_slots``) on each engine."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import CUDA_FAKE
from window_reference import reference_pages

from tierd.config import DiskConfig, MemoryTierConfig, StoreConfig, StoreDevice
from tierd.errors import ResourceExhausted
from tierd.keys import PageKey, chain_keys
from tierd.spec import Namespace, PageSpec
from tierd.store import PageStore
from tierd.tier import LOCAL_TIERS, MEMORY_TIERS, Tier

HOST_DEVICES = ("cpu", "fake")

MAX_PAGES = 20
WAIT_S = 10.0


def window_spec(page_tokens: int, window_tokens: int, sink_tokens: int = 0) -> PageSpec:
    """Small pages (32 bytes a token) so a store per example is cheap."""
    return PageSpec("windowed@r1", "float16", num_layers=1, num_kv_heads=1, head_dim=8,
                    page_tokens=page_tokens, window_tokens=window_tokens, sink_tokens=sink_tokens)


def window_config(data_dir: Path, spec: PageSpec, device: str, hbm_pages: int = 64,
                  dram_pages: int = 64) -> StoreConfig:
    """Room for every page of a case below the watermarks, so background eviction moves nothing."""
    return StoreConfig(
        data_dir=data_dir, hbm=MemoryTierConfig(hbm_pages * spec.page_bytes, region_share=1.0),
        dram=MemoryTierConfig(dram_pages * spec.page_bytes, region_share=1.0),
        disk=DiskConfig(256 * (spec.page_bytes + 64), fsync=False, writer_linger_s=0.0005),
        prefault=False, maintenance_interval_s=0.01, acquire_timeout_s=WAIT_S,
        device=StoreDevice.parse("cuda:0" if device == CUDA_FAKE else device))


@dataclass(frozen=True)
class Case:
    page_tokens: int
    window_tokens: int
    sink_tokens: int
    starts: tuple[Tier, ...]   # the fastest tier of each cached page before the request
    uncached: int              # keys after the cached prefix in the request
    target: Tier

    @property
    def num_pages(self) -> int:
        return len(self.starts)

    @property
    def spec(self) -> PageSpec:
        return window_spec(self.page_tokens, self.window_tokens, self.sink_tokens)

    @property
    def window(self) -> tuple[int, ...]:
        return reference_pages(self.num_pages, self.page_tokens, self.window_tokens, self.sink_tokens)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    page_tokens = draw(st.sampled_from([1, 2, 3, 4, 8]))
    starts = tuple(draw(st.lists(st.sampled_from(LOCAL_TIERS), max_size=MAX_PAGES)))
    span = (len(starts) + 2) * page_tokens
    window = draw(st.one_of(st.just(0), st.integers(1, span)))
    sinks = draw(st.integers(0, 3 * page_tokens)) if window else 0
    return Case(page_tokens, window, sinks, starts, draw(st.integers(0, 2)),
                draw(st.sampled_from(MEMORY_TIERS)))


def page_of(index: int, page_bytes: int) -> bytes:
    return bytes((index * 37 + j) % 251 for j in range(page_bytes))


@contextmanager
def seeded(case: Case, device: str) -> Iterator[tuple[PageStore, Namespace, list[PageKey]]]:
    """A store holding the case's pages where ``case.starts`` says (all on disk, some moved up
    to dram or hbm), and the request's keys: the cached ones, then ``case.uncached`` others."""
    spec = case.spec
    tokens = list(range((case.num_pages + case.uncached) * spec.page_tokens))
    with tempfile.TemporaryDirectory() as tmp:
        config = window_config(Path(tmp), spec, device)
        with PageStore(config) as first:  # closing writes every page to disk
            ns = first.register(spec)
            keys = chain_keys(ns.fingerprint, tokens, spec.page_tokens)
            first.put(ns.ns_id, keys[:case.num_pages],
                      [page_of(i, spec.page_bytes) for i in range(case.num_pages)])
        with PageStore(config) as store:  # reopened: every page is on disk only
            assert store.register(spec) == ns
            for i, start in enumerate(case.starts):
                if start is not Tier.DISK:
                    store.release(store.acquire(ns.ns_id, keys[i:i + 1], start).lease_id)
            yield store, ns, keys


def residency(store: PageStore, ns: Namespace, keys: list[PageKey]) -> list[frozenset[Tier]]:
    """The tiers holding each key."""
    index = store.inspect()
    held = []
    for key in keys:
        tiers = {tier for tier in MEMORY_TIERS
                 if key in index.regions[(ns.ns_id, tier)].pages}
        if key in index.disk_pages.get(ns.ns_id, frozenset()):
            tiers.add(Tier.DISK)
        held.append(frozenset(tiers))
    return held


def pinned_slots(store: PageStore, ns: Namespace, tier: Tier) -> set[int]:
    return {slot for slot, count in store.inspect().regions[(ns.ns_id, tier)].pins.items() if count}


def assert_only_the_window_moved(case: Case, before: list[frozenset[Tier]],
                                 after: list[frozenset[Tier]]) -> None:
    for i in range(case.num_pages):
        if i in case.window:  # moved up, through dram on its way from disk to hbm
            assert case.target in after[i] and before[i] <= after[i], f"page {i} of the window"
            assert after[i] - before[i] <= {case.target, Tier.DRAM}, f"page {i} of the window"
        else:
            assert after[i] == before[i], f"page {i} outside the window moved"


# Hypothesis reruns the body without the fixtures: the host devices only (the CUDA path is in
# the example tests below).
@pytest.mark.parametrize("device", HOST_DEVICES)
@settings(max_examples=60, deadline=None)
@given(case=cases())
def test_acquire_promotes_and_leases_exactly_the_window(device: str, case: Case) -> None:
    with seeded(case, device) as (store, ns, keys):
        cached = keys[:case.num_pages]
        before = residency(store, ns, cached)
        assert [min(tiers) for tiers in before] == list(case.starts)
        lease = store.acquire(ns.ns_id, keys, case.target, timeout_s=WAIT_S, owner="w")
        assert lease.page_indices == case.window
        assert lease.keys == tuple(keys[i] for i in case.window)
        assert lease.prefix_pages == case.num_pages and lease.tier is case.target
        # Without a window the lease is what it always was: the cached prefix, no window.
        assert (lease.window is None) == (case.window_tokens == 0)
        if case.window_tokens == 0:
            assert lease.keys == tuple(cached)
        assert store.read_slots(lease.lease_id) == [page_of(i, ns.page_bytes) for i in case.window]
        after = residency(store, ns, cached)
        assert_only_the_window_moved(case, before, after)
        # Exactly the leased slots are pinned: the rest of the prefix is not leased.
        assert pinned_slots(store, ns, case.target) == set(lease.slots)
        other = next(t for t in MEMORY_TIERS if t is not case.target)
        assert pinned_slots(store, ns, other) == set()
        # Lookup still answers the whole prefix, each page at its fastest tier.
        found = store.lookup(ns.ns_id, keys)
        assert found.num_hits == case.num_pages
        assert list(found.tiers) == [min(tiers) for tiers in after]
        store.release(lease.lease_id)
        assert pinned_slots(store, ns, case.target) == set()


@pytest.mark.parametrize("device", HOST_DEVICES)
@settings(max_examples=60, deadline=None)
@given(case=cases())
def test_prefetch_moves_exactly_the_window(device: str, case: Case) -> None:
    with seeded(case, device) as (store, ns, keys):
        cached = keys[:case.num_pages]
        before = residency(store, ns, cached)
        scheduled = store.prefetch(ns.ns_id, keys, case.target)
        assert scheduled == sum(case.target not in before[i] for i in case.window)
        deadline = time.monotonic() + WAIT_S
        while not all(case.target in tiers for i, tiers in enumerate(residency(store, ns, cached))
                      if i in case.window):
            assert time.monotonic() < deadline, "prefetched pages did not arrive"
            time.sleep(0.002)
        assert_only_the_window_moved(case, before, residency(store, ns, cached))
        assert store.inspect().leases == () and pinned_slots(store, ns, case.target) == set()
        assert store.lookup(ns.ns_id, keys).num_hits == case.num_pages


def test_a_window_lets_a_prefix_longer_than_the_tier_be_acquired(tmp_path: Path, device: str) -> None:
    spec = window_spec(page_tokens=4, window_tokens=6, sink_tokens=1)  # pages 0 and the last 2
    with PageStore(window_config(tmp_path, spec, device, hbm_pages=4, dram_pages=64)) as store:
        ns = store.register(spec)
        assert store.num_slots(ns.ns_id, Tier.HBM) == 4
        keys = chain_keys(ns.fingerprint, range(30 * 4), 4)
        store.put(ns.ns_id, keys, [page_of(i, ns.page_bytes) for i in range(30)])
        lease = store.acquire(ns.ns_id, keys, Tier.HBM)
        assert lease.page_indices == (0, 28, 29) and lease.prefix_pages == 30
        assert store.read_slots(lease.lease_id) == [page_of(i, ns.page_bytes) for i in (0, 28, 29)]
        store.release(lease.lease_id)
    wide = window_spec(page_tokens=4, window_tokens=20)  # 5 pages: more than hbm has
    with PageStore(window_config(tmp_path / "wide", wide, device, hbm_pages=4)) as store:
        ns = store.register(wide)
        with pytest.raises(ResourceExhausted, match="cannot lease 5 pages"):
            store.acquire(ns.ns_id, chain_keys(ns.fingerprint, range(40), 4), Tier.HBM)


def test_try_acquire_needs_only_the_window_in_the_target(tmp_path: Path, device: str) -> None:
    spec = window_spec(page_tokens=2, window_tokens=4)  # the last 2 pages
    with PageStore(window_config(tmp_path, spec, device)) as store:
        ns = store.register(spec)
        keys = chain_keys(ns.fingerprint, range(10 * 2), 2)
        store.put(ns.ns_id, keys, [page_of(i, ns.page_bytes) for i in range(10)], tier=Tier.DRAM)
        assert store.try_acquire(ns.ns_id, keys, Tier.HBM) is None  # the window is in dram
        lease = store.acquire(ns.ns_id, keys[8:], Tier.HBM)  # pages 8, 9 of the chain into hbm
        store.release(lease.lease_id)
        fast = store.try_acquire(ns.ns_id, keys, Tier.HBM)
        assert fast is not None and fast.page_indices == (8, 9) and fast.prefix_pages == 10
        assert set(residency(store, ns, keys[:8])[0]) == {Tier.DRAM}


def test_a_windowed_namespace_survives_a_restart(tmp_path: Path) -> None:
    spec = window_spec(page_tokens=4, window_tokens=12, sink_tokens=4)
    config = window_config(tmp_path, spec, "cpu")
    with PageStore(config) as store:
        ns = store.register(spec)
    with PageStore(config) as store:
        assert [n.spec for n in store.namespaces()] == [spec]
        assert store.register(spec) == ns


def test_a_window_page_failing_its_checksum_leases_the_window_before_it(tmp_path: Path,
                                                                       device: str) -> None:
    # 16-token pages, 16 sinks and a 32-token window: of 10 pages, 0, 8 and 9; of 9, 0, 7 and 8.
    spec = PageSpec("windowed@r1", "float16", num_layers=2, num_kv_heads=2, head_dim=64,
                    page_tokens=16, window_tokens=32, sink_tokens=16)
    config = window_config(tmp_path, spec, device, hbm_pages=8, dram_pages=16)
    rng = np.random.default_rng(3)
    pages = [rng.integers(0, 256, spec.page_bytes, dtype=np.uint8).tobytes() for _ in range(10)]
    with PageStore(config) as store:
        ns = store.register(spec)
        keys = chain_keys(ns.fingerprint, range(10 * 16), 16)
        store.put(ns.ns_id, keys, pages)
    data_file = next(config.data_dir.rglob("data.mdb"))
    raw = bytearray(data_file.read_bytes())
    at = raw.find(pages[9][:64])
    assert at >= 0
    raw[at + spec.page_bytes // 2] ^= 0xFF  # page 9 no longer matches its checksum
    data_file.write_bytes(bytes(raw))
    with PageStore(config) as store:
        assert store.register(spec) == ns
        lease = store.acquire(ns.ns_id, keys, Tier.HBM, timeout_s=WAIT_S)
        # Page 9 was dropped: the prefix is 9 pages, and its window was moved up in a second round.
        assert lease.prefix_pages == 9 and lease.page_indices == (0, 7, 8)
        assert store.read_slots(lease.lease_id) == [pages[i] for i in (0, 7, 8)]
        assert store.stats().checksum_failures == 1
        assert [held.lease_id for held in store.inspect().leases] == [lease.lease_id]
        assert pinned_slots(store, ns, Tier.HBM) == set(lease.slots)
        assert store.lookup(ns.ns_id, keys).num_hits == 9
