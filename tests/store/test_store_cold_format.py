"""A namespace with a cold format in the page store: dram keeps exact pages, the disk holds fp8
(twice the bf16 pages per disk byte), promotions and reads from disk decode, a quantized page is
never found by an exact namespace, restart finds the pages again, and a damaged one is a miss."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from store_helpers import SPEC, make_keys, small_config

from tierd.config import StoreConfig
from tierd.spec import PageSpec
from tierd.store import PageStore
from tierd.tier import Tier
from tierd.tiers.fp8_pages import Fp8PageCodec
from tierd.tiers.page_format import HEADER_BYTES

# SPEC's shape (16 KiB pages in 16-bit dtypes), in bfloat16: exact, and stored as fp8.
EXACT = replace(SPEC, dtype="bfloat16")
FP8 = replace(EXACT, cold_format="fp8_e4m3")


def kv_pages(spec: PageSpec, num_pages: int, seed: int = 0) -> list[bytes]:
    """Pages of K/V-like values (random bytes would hold NaNs once read as bfloat16)."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(spec.page_shape) * 2).astype(ml_dtypes.bfloat16).tobytes()
            for _ in range(num_pages)]


def fp8_round_trip(page: bytes) -> bytes:
    codec = Fp8PageCodec(FP8)
    stored, out = bytearray(codec.stored_bytes), bytearray(FP8.page_bytes)
    codec.encode(memoryview(page), memoryview(stored))
    codec.decode(memoryview(bytes(stored)), memoryview(out))
    return bytes(out)


def shared_config(tmp_path: Path, device: str, **changes: object) -> StoreConfig:
    """Room for two namespaces' regions in hbm and dram."""
    cfg = small_config(tmp_path, device=device, hbm_pages=16, dram_pages=32, **changes)
    return cfg.with_changes(hbm=replace(cfg.hbm, region_share=0.5), dram=replace(cfg.dram, region_share=0.5))


def test_dram_holds_exact_pages_and_the_disk_serves_them_decoded(tmp_path: Path, device: str) -> None:
    cfg = shared_config(tmp_path, device)
    pages = kv_pages(FP8, 6)
    with PageStore(cfg) as store:
        ns = store.register(FP8)
        keys = make_keys(ns, 6)
        store.put(ns.ns_id, keys, pages)
        assert [bytes(p) for p in store.get(ns.ns_id, keys)] == pages  # from dram: exact
        assert store.flush() == 6
        disk = store.stats().tiers[Tier.DISK]
        assert disk.quantized_pages == 6
        assert disk.quantized_bytes_saved == 6 * Fp8PageCodec(FP8).saved_bytes
        assert [bytes(p) for p in store.get(ns.ns_id, keys)] == pages  # dram still holds them
    decoded = [fp8_round_trip(page) for page in pages]
    assert decoded != pages  # lossy: the figures below are the fp8 ones
    with PageStore(cfg) as store:  # restart: the pages are found on disk, quantized
        assert store.register(FP8) == ns
        found = store.lookup(ns.ns_id, keys)
        assert found.num_hits == 6 and set(found.tiers) == {Tier.DISK}
        assert store.stats().tiers[Tier.DISK].quantized_pages == 6
        assert [bytes(p) for p in store.get(ns.ns_id, keys)] == decoded  # disk -> caller
        lease = store.acquire(ns.ns_id, keys[:4], Tier.HBM)  # disk -> dram -> hbm
        assert store.read_slots(lease.lease_id) == decoded[:4]
        store.release(lease.lease_id)
        assert set(store.lookup(ns.ns_id, keys[:4]).tiers) == {Tier.HBM}
        close = [np.frombuffer(d, ml_dtypes.bfloat16).astype(np.float32) for d in decoded]
        exact = [np.frombuffer(p, ml_dtypes.bfloat16).astype(np.float32) for p in pages]
        assert all(np.allclose(c, e, rtol=2**-3, atol=0.05) for c, e in zip(close, exact))


def test_an_exact_namespace_never_finds_a_quantized_page(tmp_path: Path, device: str) -> None:
    cfg = shared_config(tmp_path, device)
    with PageStore(cfg) as store:
        exact, fp8 = store.register(EXACT), store.register(FP8)
        assert exact.ns_id != fp8.ns_id and exact.fingerprint != fp8.fingerprint
        exact_keys, fp8_keys = make_keys(exact, 4), make_keys(fp8, 4)  # the same tokens
        assert set(exact_keys).isdisjoint(fp8_keys)
        store.put(fp8.ns_id, fp8_keys, kv_pages(FP8, 4))
        store.flush()
        assert store.lookup(exact.ns_id, exact_keys).num_hits == 0
        assert store.lookup(exact.ns_id, fp8_keys).num_hits == 0  # keys are per namespace too
        assert store.get(exact.ns_id, fp8_keys) == []
    with PageStore(cfg) as store:
        assert store.lookup(exact.ns_id, exact_keys).num_hits == 0
        assert store.lookup(exact.ns_id, fp8_keys).num_hits == 0
        assert store.lookup(fp8.ns_id, fp8_keys).num_hits == 4


@pytest.mark.parametrize("device", ["cpu"])
def test_a_bf16_namespace_fits_twice_the_pages_per_disk_byte(tmp_path: Path, device: str) -> None:
    capacity = 12 * (HEADER_BYTES + EXACT.page_bytes)  # 12 exact pages' worth of disk
    on_disk: dict[str, int] = {}
    for spec in (EXACT, FP8):
        cfg = small_config(tmp_path / spec.cold_format, device=device, dram_pages=4)
        cfg = cfg.with_changes(disk=replace(cfg.disk, capacity_bytes=capacity, high_watermark=1.0,
                                            low_watermark=1.0))
        with PageStore(cfg) as store:
            ns = store.register(spec)
            keys, pages = make_keys(ns, 40), kv_pages(spec, 40)
            for first in range(0, 40, 4):  # a flush at a time: older disk pages make room
                store.put(ns.ns_id, keys[first:first + 4], pages[first:first + 4])
                store.flush()
            disk = store.stats().tiers[Tier.DISK]
            store.delete(ns.ns_id, keys)  # nothing left for the close to flush
            assert disk.used_bytes <= capacity
            on_disk[spec.cold_format] = disk.pages
            if spec.cold_format:
                assert disk.used_bytes == disk.pages * (HEADER_BYTES + Fp8PageCodec(spec).stored_bytes)
    assert on_disk[""] == 12
    assert on_disk["fp8_e4m3"] == capacity // (HEADER_BYTES + Fp8PageCodec(FP8).stored_bytes) == 23


def test_a_damaged_quantized_page_is_a_miss_and_a_checksum_failure(tmp_path: Path, device: str) -> None:
    cfg = shared_config(tmp_path, device)
    pages = kv_pages(FP8, 4, seed=3)
    with PageStore(cfg) as store:
        ns = store.register(FP8)
        keys = make_keys(ns, 4)
        store.put(ns.ns_id, keys, pages)
    codec = Fp8PageCodec(FP8)
    stored = bytearray(codec.stored_bytes)
    codec.encode(memoryview(pages[2]), memoryview(stored))
    data_file = next(cfg.data_dir.rglob("data.mdb"))
    raw = bytearray(data_file.read_bytes())
    at = raw.find(bytes(stored[:64]))
    assert at >= 0, "the quantized payload was not found verbatim in data.mdb"
    raw[at + codec.stored_bytes - 3] ^= 0x10  # inside a scale
    data_file.write_bytes(bytes(raw))
    with PageStore(cfg) as store:
        got = store.get(ns.ns_id, keys)
        assert [bytes(p) for p in got] == [fp8_round_trip(p) for p in pages[:2]]
        assert store.stats().checksum_failures == 1
        assert store.lookup(ns.ns_id, keys).num_hits == 2
