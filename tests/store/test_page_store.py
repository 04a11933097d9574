"""Page store behaviour a worker relies on: put/get/lookup, leases, eviction, write policies."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from store_helpers import SPEC, make_keys, make_pages, small_config

from tierd.config import WritePolicy
from tierd.errors import ConfigError, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from tierd.spec import Namespace, PageSpec
from tierd.store import CommitResult, PageStore
from tierd.tier import Tier
from tierd.values import LeaseKind


def test_put_get_lookup_round_trip(store: PageStore, ns: Namespace) -> None:
    keys, pages = make_keys(ns, 6), make_pages(ns, 6)
    result = store.put(ns.ns_id, keys, pages)
    assert (result.stored, result.skipped, result.durable_ticket) == (6, 0, None)
    found = store.lookup(ns.ns_id, keys)
    assert found.num_hits == 6 and set(found.tiers) == {Tier.DRAM}
    assert [bytes(p) for p in store.get(ns.ns_id, keys)] == pages
    again = store.put(ns.ns_id, keys, pages)
    assert (again.stored, again.skipped) == (0, 6)


def test_lookup_and_get_stop_at_first_missing_key(store: PageStore, ns: Namespace) -> None:
    keys, pages = make_keys(ns, 5), make_pages(ns, 5)
    store.put(ns.ns_id, keys[:2] + keys[3:], pages[:2] + pages[3:])
    assert store.lookup(ns.ns_id, keys).num_hits == 2
    assert [bytes(p) for p in store.get(ns.ns_id, keys)] == pages[:2]
    assert store.lookup(ns.ns_id, []).num_hits == 0


def test_put_accepts_numpy_and_torch_pages(store: PageStore, ns: Namespace) -> None:
    torch = pytest.importorskip("torch")
    keys = make_keys(ns, 2)
    a = np.random.default_rng(1).standard_normal(SPEC.page_shape).astype(np.float16)
    b = torch.randn(SPEC.page_shape, dtype=torch.float16)
    store.put(ns.ns_id, keys, [a, b])
    got = store.get(ns.ns_id, keys)
    assert bytes(got[0]) == a.tobytes()
    assert bytes(got[1]) == b.numpy().tobytes()


@pytest.mark.parametrize("bad_pages, match", [
    ([b"x" * 10], "holds 10 bytes"),
    ([12345], "expected bytes"),
])
def test_bad_pages_are_rejected_without_state_change(store: PageStore, ns: Namespace,
                                                     bad_pages: list, match: str) -> None:
    keys = make_keys(ns, 1)
    with pytest.raises(InvalidArgument, match=match):
        store.put(ns.ns_id, keys, bad_pages)
    assert store.lookup(ns.ns_id, keys).num_hits == 0
    assert store.stats().tiers[Tier.DRAM].used_bytes == 0


def test_bad_keys_and_unknown_namespace(store: PageStore, ns: Namespace) -> None:
    with pytest.raises(InvalidArgument, match="16 bytes"):
        store.lookup(ns.ns_id, [b"short"])
    with pytest.raises(InvalidArgument, match="keys but"):
        store.put(ns.ns_id, make_keys(ns, 2), make_pages(ns, 1))
    with pytest.raises(NotFound, match="Register"):
        store.lookup(999, [])
    with pytest.raises(InvalidArgument, match="disk"):
        store.put(ns.ns_id, make_keys(ns, 1), make_pages(ns, 1), tier=Tier.DISK)


def test_register_is_idempotent_and_namespaces_never_mix(tmp_path: Path, device: str) -> None:
    cfg = small_config(tmp_path, device=device, hbm_pages=32, dram_pages=64)
    cfg = cfg.with_changes(hbm=replace(cfg.hbm, region_share=0.25), dram=replace(cfg.dram, region_share=0.25))
    with PageStore(cfg) as store:
        _check_namespaces_never_mix(store)


def _check_namespaces_never_mix(store: PageStore) -> None:
    a = store.register(SPEC)
    assert store.register(SPEC) == a
    other_tenant = store.register(SPEC, tenant="other")
    other_spec = store.register(PageSpec("tiny@r2", "float16", 2, 2, 64, 16))
    assert len({a.ns_id, other_tenant.ns_id, other_spec.ns_id}) == 3
    key = make_keys(a, 1)
    store.put(a.ns_id, key, make_pages(a, 1))
    # The same key bytes in another namespace are a different page.
    assert store.lookup(other_tenant.ns_id, key).num_hits == 0
    assert store.lookup(other_spec.ns_id, key).num_hits == 0
    with pytest.raises(InvalidArgument, match="tenant"):
        store.register(SPEC, tenant="")


def test_lru_demotion_cascades_dram_to_disk(store: PageStore, ns: Namespace) -> None:
    keys, pages = make_keys(ns, 16), make_pages(ns, 16)
    store.put(ns.ns_id, keys, pages)          # fills dram (16 slots)
    store.lookup(ns.ns_id, keys[:4])           # the first four become most recent
    more_keys, more_pages = make_keys(ns, 4, start_token=10_000), make_pages(ns, 4, seed=9)
    store.put(ns.ns_id, more_keys, more_pages)  # needs 4 slots: the 4 least recent go to disk
    tiers = dict(zip(keys, store.lookup(ns.ns_id, keys).tiers))
    on_disk = {k for k, t in tiers.items() if t is Tier.DISK}
    assert on_disk and on_disk.isdisjoint(keys[:4])
    assert on_disk <= set(keys[4:8] + keys[8:])
    assert [bytes(p) for p in store.get(ns.ns_id, keys)] == pages
    stats = store.stats()
    assert stats.tiers[Tier.DRAM].evictions >= 4 and stats.tiers[Tier.DISK].pages >= 4


def test_background_eviction_keeps_dram_under_high_watermark(store: PageStore, ns: Namespace) -> None:
    store.put(ns.ns_id, make_keys(ns, 16), make_pages(ns, 16))
    deadline = time.monotonic() + 10
    high = store.config.dram.high_watermark * 16
    while store.stats().tiers[Tier.DRAM].pages > high and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.stats().tiers[Tier.DRAM].pages <= store.config.dram.low_watermark * 16


def test_acquire_promotes_from_disk_to_hbm_and_pins(store: PageStore, ns: Namespace) -> None:
    keys, pages = make_keys(ns, 20), make_pages(ns, 20)
    store.put(ns.ns_id, keys, pages)
    store.flush()
    lease = store.acquire(ns.ns_id, keys[:6], Tier.HBM, owner="worker-1")
    assert lease.kind is LeaseKind.READ and lease.keys == tuple(keys[:6]) and len(lease.slots) == 6
    assert store.read_slots(lease.lease_id) == pages[:6]
    assert set(store.lookup(ns.ns_id, keys[:6]).tiers) == {Tier.HBM}
    # Filling hbm with other pages never evicts the leased ones.
    with pytest.raises(ResourceExhausted):
        store.allocate(ns.ns_id, 8)
    store.allocate(ns.ns_id, 2)
    assert store.read_slots(lease.lease_id) == pages[:6]
    assert store.release_owner("worker-1") == 1
    with pytest.raises(NotFound):
        store.release(lease.lease_id)


def test_acquire_returns_the_cached_prefix_only(store: PageStore, ns: Namespace) -> None:
    keys = make_keys(ns, 4)
    store.put(ns.ns_id, keys[:2], make_pages(ns, 2))
    lease = store.acquire(ns.ns_id, keys, Tier.HBM)
    assert lease.keys == tuple(keys[:2])
    store.release(lease.lease_id)
    with pytest.raises(ResourceExhausted, match="acquire fewer"):
        store.acquire(ns.ns_id, make_keys(ns, 9), Tier.HBM)


def test_lease_expiry_frees_pins(tmp_path: Path, device: str) -> None:
    with PageStore(small_config(tmp_path, device=device)) as store:
        ns = store.register(SPEC)
        fill = store.allocate(ns.ns_id, 8, ttl_s=600)
        with pytest.raises(ResourceExhausted):
            store.allocate(ns.ns_id, 1, ttl_s=5)
        store.renew(fill.lease_id, ttl_s=0.05)  # now it expires, however slow this machine is
        deadline = time.monotonic() + 10
        while store.stats().leases and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.stats().leases == 0
        with pytest.raises(NotFound):
            store.renew(fill.lease_id)
        assert store.allocate(ns.ns_id, 8).num_pages == 8


def test_renew_extends_and_validates_ttl(store: PageStore, ns: Namespace) -> None:
    lease = store.allocate(ns.ns_id, 1, ttl_s=1)
    renewed = store.renew(lease.lease_id, ttl_s=60)
    assert renewed.expires_at_s > lease.expires_at_s
    with pytest.raises(InvalidArgument, match="ttl"):
        store.renew(lease.lease_id, ttl_s=-1)


def test_allocate_commit_binds_slots_and_rejects_bad_commits(store: PageStore, ns: Namespace) -> None:
    lease = store.allocate(ns.ns_id, 3, owner="w")
    keys, pages = make_keys(ns, 3), make_pages(ns, 3)
    store.write_slots(lease.lease_id, lease.slots, pages)
    with pytest.raises(InvalidArgument, match="not open slots"):
        store.commit(lease.lease_id, keys[:1], [max(lease.slots) + 1])
    with pytest.raises(InvalidArgument, match="keys but"):
        store.commit(lease.lease_id, keys, lease.slots[:2])
    assert store.lookup(ns.ns_id, keys).num_hits == 0  # rejected commits changed nothing
    assert store.commit(lease.lease_id, keys[:2], lease.slots[:2]) == CommitResult(committed=2, durable_ticket=None)
    with pytest.raises(InvalidArgument):
        store.commit(lease.lease_id, keys[2:], lease.slots[:1])  # already committed
    store.release(lease.lease_id)
    found = store.lookup(ns.ns_id, keys)
    assert found.num_hits == 2 and set(found.tiers) == {Tier.HBM}
    assert [bytes(p) for p in store.get(ns.ns_id, keys[:2])] == pages[:2]
    read = store.acquire(ns.ns_id, keys[:1], Tier.DRAM)
    with pytest.raises(FailedPrecondition, match="read lease"):
        store.commit(read.lease_id, keys[:1], read.slots)


def test_hbm_pages_demote_to_dram_under_pressure(store: PageStore, ns: Namespace) -> None:
    keys, pages = make_keys(ns, 12), make_pages(ns, 12)
    store.put(ns.ns_id, keys, pages, tier=Tier.HBM)  # 12 pages through an 8-slot hbm region
    tiers = store.lookup(ns.ns_id, keys).tiers
    assert len(tiers) == 12 and Tier.DRAM in tiers
    assert [bytes(p) for p in store.get(ns.ns_id, keys)] == pages


def test_write_back_reaches_disk_only_on_flush(store: PageStore, ns: Namespace) -> None:
    keys, pages = make_keys(ns, 4), make_pages(ns, 4)
    store.put(ns.ns_id, keys, pages)
    assert store.stats().tiers[Tier.DISK].pages == 0
    assert store.flush() == 4
    assert store.stats().tiers[Tier.DISK].pages == 4
    assert store.flush() == 0


def test_write_through_is_durable_when_the_ticket_says_so(tmp_path: Path, device: str) -> None:
    cfg = small_config(tmp_path, device=device, write_policy=WritePolicy.WRITE_THROUGH)
    with PageStore(cfg) as store:
        ns = store.register(SPEC)
        keys, pages = make_keys(ns, 5), make_pages(ns, 5)
        result = store.put(ns.ns_id, keys, pages)
        assert result.durable_ticket is not None
        assert store.wait_durable(result.durable_ticket, timeout_s=10)
        assert store.stats().tiers[Tier.DISK].pages == 5
        again = store.put(ns.ns_id, keys, pages)
        assert again.skipped == 5 and store.wait_durable(again.durable_ticket, timeout_s=10)


def test_write_through_commit_returns_a_ticket_covering_every_key(tmp_path: Path, device: str) -> None:
    cfg = small_config(tmp_path, device=device, write_policy=WritePolicy.WRITE_THROUGH)
    with PageStore(cfg) as store:
        ns = store.register(SPEC)
        keys, pages = make_keys(ns, 4), make_pages(ns, 4)
        store.put(ns.ns_id, keys[:1], pages[:1], tier=Tier.HBM)  # cached before: skipped, still covered
        lease = store.allocate(ns.ns_id, 4)
        store.write_slots(lease.lease_id, lease.slots, pages)
        result = store.commit(lease.lease_id, keys, lease.slots)
        assert result.committed == 3 and result.durable_ticket is not None
        assert store.wait_durable(result.durable_ticket, timeout_s=10)
        assert store.stats().tiers[Tier.DISK].pages == 4
        assert store.ticket_namespace(result.durable_ticket) == ns.ns_id
        store.release(lease.lease_id)
    with PageStore(cfg) as store:  # the committed pages survive a restart
        ns = store.register(SPEC)
        assert [bytes(p) for p in store.get(ns.ns_id, keys)] == pages


def test_ticket_namespace_names_the_issuer_and_rejects_unknown_tickets(tmp_path: Path, device: str) -> None:
    cfg = small_config(tmp_path, device=device, hbm_pages=16, dram_pages=32, write_policy=WritePolicy.WRITE_THROUGH)
    cfg = cfg.with_changes(hbm=replace(cfg.hbm, region_share=0.5), dram=replace(cfg.dram, region_share=0.5))
    with PageStore(cfg) as store:
        first = store.register(SPEC)
        second = store.register(replace(SPEC, model="other@r1"))
        t1 = store.put(first.ns_id, make_keys(first, 1), make_pages(first, 1)).durable_ticket
        t2 = store.put(second.ns_id, make_keys(second, 1), make_pages(second, 1)).durable_ticket
        assert (store.ticket_namespace(t1), store.ticket_namespace(t2)) == (first.ns_id, second.ns_id)
        with pytest.raises(InvalidArgument, match="never issued"):
            store.ticket_namespace(t2 + 100)


def test_refused_disk_writes_are_counted_and_logged_once(tmp_path: Path, device: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    page = SPEC.page_bytes
    cfg = small_config(tmp_path, device=device, write_policy=WritePolicy.WRITE_THROUGH)
    cfg = cfg.with_changes(disk=replace(cfg.disk, capacity_bytes=2 * (page + 64)))
    with caplog.at_level("WARNING", logger="tierd.store.disk_book"), PageStore(cfg) as store:
        ns = store.register(SPEC)
        result = store.put(ns.ns_id, make_keys(ns, 8), make_pages(ns, 8))  # queued in one batch
        assert not store.wait_durable(result.durable_ticket, timeout_s=10)  # some pages never queued
        refused = store.stats().disk_writes_refused
        assert refused >= 1
    warnings = [r for r in caplog.records if "refused since the last warning" in r.getMessage()]
    assert len(warnings) == 1 and refused > 1  # one line for the burst, not one per page


def test_close_flushes_and_reopen_restores_pages_and_recency(tmp_path: Path, device: str) -> None:
    cfg = small_config(tmp_path, device=device)
    with PageStore(cfg) as store:
        ns = store.register(SPEC)
        keys, pages = make_keys(ns, 10), make_pages(ns, 10)
        store.put(ns.ns_id, keys, pages)
    with PageStore(cfg) as store:
        assert store.register(SPEC) == ns  # same id and fingerprint after restart
        found = store.lookup(ns.ns_id, keys)
        assert found.num_hits == 10 and set(found.tiers) == {Tier.DISK}
        assert [bytes(p) for p in store.get(ns.ns_id, keys)] == pages


def test_a_second_store_on_one_data_dir_is_refused_while_the_first_is_open(tmp_path: Path,
                                                                           device: str) -> None:
    cfg = small_config(tmp_path, device=device)
    with PageStore(cfg) as first:
        ns = first.register(SPEC)
        keys, pages = make_keys(ns, 2), make_pages(ns, 2)
        first.put(ns.ns_id, keys, pages)
        second = PageStore(cfg)
        with pytest.raises(ConfigError, match=rf"data dir .* is in use by this process \(pid {os.getpid()}\)"):
            second.open()
        assert [bytes(p) for p in first.get(ns.ns_id, keys)] == pages  # the first goes on
    with PageStore(cfg) as again:  # closing released the lock
        assert [bytes(p) for p in again.get(ns.ns_id, keys)] == pages


def test_delete_drops_from_every_tier(store: PageStore, ns: Namespace) -> None:
    keys, pages = make_keys(ns, 4), make_pages(ns, 4)
    store.put(ns.ns_id, keys, pages)
    store.flush()
    lease = store.acquire(ns.ns_id, keys[:1], Tier.HBM)
    assert store.delete(ns.ns_id, keys[:2] + make_keys(ns, 1, 99_999)) == 2
    assert store.lookup(ns.ns_id, keys).num_hits == 0
    assert store.lookup(ns.ns_id, keys[2:]).num_hits == 2
    store.release(lease.lease_id)
    assert store.stats().tiers[Tier.HBM].used_bytes == 0  # the deleted, leased slot is free again


def test_stats_count_hits_misses_and_bytes(store: PageStore, ns: Namespace) -> None:
    keys = make_keys(ns, 3)
    store.put(ns.ns_id, keys[:2], make_pages(ns, 2))
    store.lookup(ns.ns_id, keys)
    stats = store.stats()
    dram = stats.tiers[Tier.DRAM]
    assert dram.hits == 2 and dram.misses == 1 and dram.pages == 2
    assert dram.bytes_in == 2 * SPEC.page_bytes and dram.used_bytes == 2 * SPEC.page_bytes
    assert stats.tiers[Tier.HBM].misses == 3 and stats.namespaces == 1


def test_open_close_idempotent_and_closed_store_refuses(tmp_path: Path, device: str) -> None:
    store = PageStore(small_config(tmp_path, device=device))
    store.open()
    store.open()
    store.close()
    store.close()
    with pytest.raises(Unavailable):
        store.lookup(1, [])
    with pytest.raises(Unavailable):
        store.open()


def test_hbm_disabled_keeps_working_in_dram(tmp_path: Path, device: str) -> None:
    cfg = small_config(tmp_path, device=device)
    cfg = cfg.with_changes(hbm=replace(cfg.hbm, capacity_bytes=0))
    with PageStore(cfg) as store:
        ns = store.register(SPEC)
        keys = make_keys(ns, 2)
        store.put(ns.ns_id, keys, make_pages(ns, 2))
        with pytest.raises(FailedPrecondition, match="hbm"):
            store.acquire(ns.ns_id, keys, Tier.HBM)
        assert store.acquire(ns.ns_id, keys, Tier.DRAM).num_pages == 2


def test_tenant_quota_caps_the_total_of_its_namespaces(tmp_path: Path, device: str) -> None:
    cfg = small_config(tmp_path, device=device, hbm_pages=32, dram_pages=64)
    quota = {Tier.HBM: 6 * SPEC.page_bytes, Tier.DRAM: 10 * SPEC.page_bytes}
    cfg = cfg.with_changes(tenant_quotas={"team": quota})
    with PageStore(cfg) as store:
        first = store.register(SPEC, tenant="team")
        assert store.num_slots(first.ns_id, Tier.HBM) == 6
        assert store.num_slots(first.ns_id, Tier.DRAM) == 10
        with pytest.raises(ResourceExhausted, match="tenant 'team'"):
            store.register(PageSpec("tiny@r2", "float16", 2, 2, 64, 16), tenant="team")
        assert len(store.namespaces()) == 1  # the refused register left nothing behind
        other = store.register(SPEC, tenant="other")  # no quota: a share of what is unassigned
        assert store.num_slots(other.ns_id, Tier.DRAM) == 64 - 10


def test_lease_namespace_names_the_owner_of_live_leases_only(store: PageStore, ns: Namespace) -> None:
    lease = store.allocate(ns.ns_id, 1)
    assert store.lease_namespace(lease.lease_id) == ns
    store.release(lease.lease_id)
    with pytest.raises(NotFound):
        store.lease_namespace(lease.lease_id)
