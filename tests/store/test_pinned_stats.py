"""``pinned_bytes`` in Stats: the dram bytes page-locked for the GPU, from the store's dram arena
through the server's and the client's conversions to ``tierctl stats``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cuda_fake_runtime import FakeCudaRuntime
from store_helpers import SPEC, small_config

from tierd.server.convert import stats_to_pb
from tierd.server.metrics import ServerCounters
from tierd.store import PageStore
from tierd.store.types import StoreStats
from tierd.tier import LOCAL_TIERS, Tier
from tierd_client.convert import stats_from_wire
from tierd_client.tierctl import format_stats

DRAM_PAGES = 16


@pytest.fixture
def runtime() -> Iterator[FakeCudaRuntime]:
    fake = FakeCudaRuntime(device_index=0)
    yield fake
    fake.close()


def _as_client_sees_it(stats: StoreStats, device: str) -> dict[str, object]:
    daemon = stats_from_wire(stats_to_pb(stats, ServerCounters(1, 0, 0, "test", device)))
    pinned_bytes = daemon.tiers[Tier.DRAM].pinned_bytes
    assert ("page-locked" in format_stats(daemon)) == (pinned_bytes > 0)
    tiers = json.loads(json.dumps(daemon.to_json_dict()))["tiers"]
    return {label: tier["pinned_bytes"] for label, tier in tiers.items()}


def test_without_a_gpu_nothing_is_pinned(tmp_path: Path) -> None:
    with PageStore(small_config(tmp_path / "data", dram_pages=DRAM_PAGES)) as store:
        store.register(SPEC)
        stats = store.stats()
    assert all(stats.tiers[tier].pinned_bytes == 0 for tier in LOCAL_TIERS)
    assert _as_client_sees_it(stats, "cpu") == {"hbm": 0, "dram": 0, "disk": 0}


def test_pinned_dram_reaches_stats_and_is_given_back_on_close(tmp_path: Path,
                                                                runtime: FakeCudaRuntime) -> None:
    config = small_config(tmp_path / "data", dram_pages=DRAM_PAGES, device="cuda:0")
    with PageStore(config, cuda_runtime=runtime) as store:
        assert store.stats().tiers[Tier.DRAM].pinned_bytes == 0  # no namespace, no region yet
        store.register(SPEC)
        stats = store.stats()
        region_bytes = DRAM_PAGES * SPEC.page_bytes
        assert stats.tiers[Tier.DRAM].pinned_bytes == region_bytes
        assert stats.tiers[Tier.HBM].pinned_bytes == 0 and stats.tiers[Tier.DISK].pinned_bytes == 0
        assert _as_client_sees_it(stats, "cuda:0") == {"hbm": 0, "dram": region_bytes, "disk": 0}
        registered = runtime.registered()
        assert region_bytes in registered.values()  # the dram region, whatever the engine pins too
    assert runtime.registered() == {}, "closing the store unregisters every pinned range"


def test_without_pin_dram_the_gpu_store_pins_no_dram(tmp_path: Path, runtime: FakeCudaRuntime) -> None:
    config = small_config(tmp_path / "data", dram_pages=DRAM_PAGES, device="cuda:0", pin_dram=False)
    with PageStore(config, cuda_runtime=runtime) as store:
        store.register(SPEC)
        assert store.stats().tiers[Tier.DRAM].pinned_bytes == 0
        assert DRAM_PAGES * SPEC.page_bytes not in runtime.registered().values()
