"""What a Register may ask for: bounded names and dimensions, capped namespaces, and a tenant's
quota shared by its namespaces. A refused Register keeps nothing, in memory or on disk."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from store_helpers import SPEC, small_config

from tierd.config import StoreConfig
from tierd.errors import InvalidArgument, ResourceExhausted
from tierd.spec import MAX_MODEL_BYTES, MAX_TENANT_BYTES, REGISTER_DIMENSION_LIMITS, PageSpec
from tierd.store import PageStore
from tierd.tier import Tier

MiB = 1 << 20
# A refusal quotes a client's string cut short: its message stays this small whatever was sent.
MAX_MESSAGE_CHARS = 600


def spec_with(**changes: object) -> PageSpec:
    return replace(SPEC, **changes)


def refused(store: PageStore, spec: PageSpec, tenant: str = "default") -> str:
    with pytest.raises(InvalidArgument) as info:
        store.register(spec, tenant=tenant)
    message = str(info.value)
    assert len(message) < MAX_MESSAGE_CHARS, message
    return message


def test_a_huge_model_name_with_control_characters_is_refused_and_never_stored(tmp_path: Path) -> None:
    cfg = small_config(tmp_path / "data")
    huge = "evil\x00\x1b[2J" + "m" * (4 * MiB)
    with PageStore(cfg) as store:
        message = refused(store, spec_with(model=huge))
        assert "spec.model" in message and f"limit is {MAX_MODEL_BYTES} bytes" in message
        assert f"{len(huge.encode())} bytes" in message
        assert store.namespaces() == [] and store.stats().namespaces == 0
        assert store.register(SPEC).ns_id >= 0  # the store still registers a good spec
    with PageStore(cfg) as store:  # restarted: the refused namespace was never persisted
        assert [ns.spec for ns in store.namespaces()] == [SPEC]


@pytest.mark.parametrize(("spec", "tenant", "fragments"), [
    (spec_with(model="é" * 129), "default", ("spec.model is 258 bytes", "limit is 256 bytes")),
    (spec_with(model="llama\n3"), "default", ("spec.model", "U+000A at index 5")),
    (spec_with(model="llama\x7f"), "default", ("spec.model", "U+007F")),
    (SPEC, "t" * (MAX_TENANT_BYTES + 1), ("tenant is 129 bytes", f"limit is {MAX_TENANT_BYTES}")),
    (SPEC, "team\ta", ("tenant", "U+0009")),
    (SPEC, "", ("tenant must not be empty",)),
    (spec_with(num_layers=1025), "default", ("spec.num_layers is 1025", "at most 1024")),
    (spec_with(num_kv_heads=1025, num_layers=1, head_dim=1, page_tokens=1), "default",
     ("spec.num_kv_heads is 1025", "at most 1024")),
    (spec_with(head_dim=4097, num_layers=1, num_kv_heads=1, page_tokens=1), "default",
     ("spec.head_dim is 4097", "at most 4096")),
    (spec_with(page_tokens=65537, num_layers=1, num_kv_heads=1, head_dim=1), "default",
     ("spec.page_tokens is 65537", "at most 65536")),
    (spec_with(num_layers=64, num_kv_heads=64, head_dim=128, page_tokens=64), "default",
     ("pages of 134217728 bytes", "up to 1048576 bytes", "store.max_page_size")),
])
def test_out_of_bounds_registers_name_the_field_and_limit_and_keep_nothing(
        tmp_path: Path, spec: PageSpec, tenant: str, fragments: tuple[str, ...]) -> None:
    cfg = small_config(tmp_path / "data").with_changes(max_page_bytes=MiB)
    with PageStore(cfg) as store:
        message = refused(store, spec, tenant)
        for fragment in fragments:
            assert fragment in message, message
        assert store.namespaces() == []


@pytest.mark.parametrize("spec", [
    spec_with(model="m" * MAX_MODEL_BYTES),
    spec_with(model="modèle-ünicode@rév 2"),
    *(spec_with(**{"num_layers": 1, "num_kv_heads": 1, "head_dim": 1, "page_tokens": 1, name: limit})
      for name, limit in REGISTER_DIMENSION_LIMITS.items()),
])
def test_specs_at_the_limits_register(tmp_path: Path, spec: PageSpec) -> None:
    cfg = small_config(tmp_path / "data", hbm_pages=64, dram_pages=64)
    with PageStore(cfg) as store:
        assert store.register(spec, tenant="t" * MAX_TENANT_BYTES).spec == spec


def test_namespaces_are_capped_per_tenant_and_overall(tmp_path: Path) -> None:
    cfg = small_config(tmp_path / "data", hbm_pages=64, dram_pages=64).with_changes(
        max_namespaces_per_tenant=2, max_namespaces=3,
        hbm=replace(small_config(tmp_path).hbm, region_share=0.25),
        dram=replace(small_config(tmp_path).dram, region_share=0.25))
    specs = [spec_with(model=f"m@{i}") for i in range(3)]
    with PageStore(cfg) as store:
        first = [store.register(spec, tenant="a") for spec in specs[:2]]
        with pytest.raises(ResourceExhausted, match=r"has 2 namespaces.*max_namespaces_per_tenant = 2"):
            store.register(specs[2], tenant="a")
        assert [store.register(spec, tenant="a") for spec in specs[:2]] == first  # idempotent
        store.register(specs[0], tenant="b")
        with pytest.raises(ResourceExhausted, match=r"holds 3 namespaces.*store.max_namespaces = 3"):
            store.register(specs[0], tenant="c")
        assert len(store.namespaces()) == 3
    with PageStore(cfg) as store:  # namespaces read back from disk count too
        with pytest.raises(ResourceExhausted, match="max_namespaces_per_tenant"):
            store.register(specs[2], tenant="a")
        assert len(store.namespaces()) == 3


def quota_config(data_dir: Path, hbm_pages: int, dram_pages: int) -> StoreConfig:
    cfg = small_config(data_dir, hbm_pages=64, dram_pages=64)
    return cfg.with_changes(
        hbm=replace(cfg.hbm, region_share=0.5), dram=replace(cfg.dram, region_share=0.5),
        tenant_quotas={"team": {Tier.HBM: hbm_pages * SPEC.page_bytes,
                                Tier.DRAM: dram_pages * SPEC.page_bytes}})


def test_a_tenants_quota_is_shared_by_several_namespaces(tmp_path: Path) -> None:
    cfg = quota_config(tmp_path / "data", hbm_pages=6, dram_pages=10)
    with PageStore(cfg) as store:
        spaces = [store.register(spec_with(model=f"m@{i}"), tenant="team") for i in range(3)]
        slots = [{tier: store.num_slots(ns.ns_id, tier) for tier in (Tier.HBM, Tier.DRAM)}
                 for ns in spaces]
        # region_share (0.5) of what is left of the quota; the last page that fits goes whole.
        assert [s[Tier.HBM] for s in slots] == [3, 1, 1]
        assert [s[Tier.DRAM] for s in slots] == [5, 2, 1]
        for tier, quota_pages in ((Tier.HBM, 6), (Tier.DRAM, 10)):
            assert sum(s[tier] for s in slots) <= quota_pages
        store.register(spec_with(model="m@3"), tenant="team")  # the last hbm page
        with pytest.raises(ResourceExhausted, match=r"no hbm room .* tenant 'team'.*quota"):
            store.register(spec_with(model="m@4"), tenant="team")
        assert len(store.namespaces()) == 4  # the refused Register left nothing behind
        other = store.register(SPEC, tenant="other")  # no quota: a share of what is unassigned
        assert store.num_slots(other.ns_id, Tier.HBM) == (64 - 6) // 2
    with PageStore(cfg) as store:
        assert sorted(ns.spec.model for ns in store.namespaces() if ns.tenant == "team") == [
            f"m@{i}" for i in range(4)]


def test_a_quota_smaller_than_one_page_refuses_the_register(tmp_path: Path) -> None:
    cfg = quota_config(tmp_path / "data", hbm_pages=4, dram_pages=4)
    big = spec_with(page_tokens=SPEC.page_tokens * 8)  # 8 pages of SPEC: above the whole quota
    with PageStore(cfg) as store:
        with pytest.raises(ResourceExhausted, match="tenant 'team'"):
            store.register(big, tenant="team")
        assert store.namespaces() == []
        assert store.num_slots(store.register(SPEC, tenant="team").ns_id, Tier.HBM) == 2
    with PageStore(cfg) as store:
        assert [ns.spec for ns in store.namespaces()] == [SPEC]
