"""The disk tier with a cold format: pages are stored as fp8 (about half the bytes of bf16), the
checksum covers the stored bytes, reads decode to the namespace's dtype, the counts survive a
reopen, and any value whose header or bytes disagree with its namespace is a miss, never a page."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import ml_dtypes
import numpy as np
import pytest

from tierd.config import DiskConfig, MemoryTierConfig, StoreConfig
from tierd.spec import ColdFormat, Namespace, PageSpec
from tierd.tiers.disk import DiskTier, ReadStatus
from tierd.tiers.fp8_pages import Fp8PageCodec
from tierd.tiers.page_format import ENCODINGS, HEADER_BYTES, decode_header, disk_key, encode_header

WAIT_S = 10.0
EXACT = PageSpec(model="m@1", dtype="bfloat16", num_layers=2, num_kv_heads=2, head_dim=64, page_tokens=16)
FP8 = PageSpec(model="m@1", dtype="bfloat16", num_layers=2, num_kv_heads=2, head_dim=64, page_tokens=16,
               cold_format="fp8_e4m3")
KIVI = PageSpec(model="m@1", dtype="float32", num_layers=2, num_kv_heads=2, head_dim=64, page_tokens=16,
                cold_format="fp8_e4m3_kivi")
SPECS = {1: EXACT, 2: FP8, 3: KIVI}
NP_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}


def namespace(ns_id: int) -> Namespace:
    return Namespace(ns_id=ns_id, tenant="t", spec=SPECS[ns_id], fingerprint=bytes([ns_id]) * 16)


def make_config(data_dir: Path) -> StoreConfig:
    return StoreConfig(data_dir=data_dir, hbm=MemoryTierConfig(capacity_bytes=1 << 20),
                       dram=MemoryTierConfig(capacity_bytes=1 << 20),
                       disk=DiskConfig(capacity_bytes=16 << 20, map_min_extra_bytes=1 << 20, fsync=False))


def open_tier(config: StoreConfig) -> DiskTier:
    tier = DiskTier(config)
    tier.open()
    for ns_id in SPECS:
        tier.save_namespace(namespace(ns_id))
    return tier


@pytest.fixture
def config(tmp_path: Path) -> StoreConfig:
    return make_config(tmp_path)


@pytest.fixture
def tier(config: StoreConfig) -> Iterator[DiskTier]:
    t = open_tier(config)
    yield t
    t.close()


def key_of(i: int) -> bytes:
    return i.to_bytes(16, "big")


def kv_page(spec: PageSpec, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(spec.page_shape) * 2).astype(NP_DTYPES[spec.dtype])


def write(tier: DiskTier, ns_id: int, pages: list[np.ndarray]) -> list[bool]:
    done: list[bool] = []
    for i, page in enumerate(pages):
        tier.submit_write(ns_id, key_of(i), memoryview(page.tobytes()), i + 1, done.append)
    assert tier.barrier(WAIT_S)
    return done


def read(tier: DiskTier, ns_id: int, i: int) -> tuple[ReadStatus, np.ndarray]:
    spec = SPECS[ns_id]
    out = bytearray(spec.page_bytes)
    status = tier.read_into(ns_id, key_of(i), memoryview(out))
    return status, np.frombuffer(out, NP_DTYPES[spec.dtype]).reshape(spec.page_shape)


def stored_value(path: Path, ns_id: int, i: int) -> bytes:
    """The LMDB value of a page (the tier is closed: LMDB maps an environment once per process)."""
    env = lmdb.open(str(path), max_dbs=2, readonly=True, lock=False)
    try:
        with env.begin(db=env.open_db(b"pages", create=False)) as txn:
            value = txn.get(disk_key(ns_id, key_of(i)))
            assert value is not None
            return bytes(value)
    finally:
        env.close()


def rewrite(path: Path, ns_id: int, i: int, change: Callable[[bytes], bytes]) -> None:
    env = lmdb.open(str(path), max_dbs=2)
    try:
        with env.begin(write=True, db=env.open_db(b"pages")) as txn:
            dkey = disk_key(ns_id, key_of(i))
            txn.put(dkey, change(bytes(txn.get(dkey))))
    finally:
        env.close()


def decoded_by_codec(spec: PageSpec, page: np.ndarray) -> np.ndarray:
    codec = Fp8PageCodec(spec)
    stored, out = bytearray(codec.stored_bytes), bytearray(spec.page_bytes)
    codec.encode(memoryview(page.tobytes()), memoryview(stored))
    codec.decode(memoryview(bytes(stored)), memoryview(out))
    return np.frombuffer(out, NP_DTYPES[spec.dtype]).reshape(spec.page_shape)


@pytest.mark.parametrize("ns_id", [2, 3])
def test_pages_are_stored_quantized_and_read_back_decoded(config: StoreConfig, ns_id: int) -> None:
    spec = SPECS[ns_id]
    pages = [kv_page(spec, seed) for seed in range(3)]
    tier = open_tier(config)
    assert write(tier, ns_id, pages) == [True] * 3
    tier.close()
    codec = Fp8PageCodec(spec)
    value = stored_value(tier.path, ns_id, 0)
    header = decode_header(value)
    assert header is not None and header.encoding == ENCODINGS[spec.cold]
    assert len(value) == HEADER_BYTES + codec.stored_bytes
    tier = open_tier(config)
    for i, page in enumerate(pages):
        status, got = read(tier, ns_id, i)
        assert status is ReadStatus.OK
        assert got.tobytes() == decoded_by_codec(spec, page).tobytes()  # the codec's round trip
        assert np.allclose(got.astype(np.float32), page.astype(np.float32), rtol=2**-3, atol=0.05)
    stats = tier.stats()
    tier.close()
    assert stats.quantized_pages == 3 and stats.quantized_bytes_saved == 3 * codec.saved_bytes


def test_a_bf16_page_takes_about_half_the_disk_bytes(tier: DiskTier) -> None:
    write(tier, 1, [kv_page(EXACT, 0)])
    exact_bytes = tier.stats().stored_bytes
    write(tier, 2, [kv_page(FP8, 0)])
    fp8_bytes = tier.stats().stored_bytes - exact_bytes
    assert exact_bytes == HEADER_BYTES + EXACT.page_bytes
    assert fp8_bytes == HEADER_BYTES + EXACT.page_bytes // 2 + 4 * 2 * 2 * 2  # values + scales
    assert 1.9 < exact_bytes / fp8_bytes <= 2.0


def test_quantized_pages_are_found_and_decoded_after_a_reopen(config: StoreConfig) -> None:
    tier = open_tier(config)
    pages = [kv_page(FP8, seed) for seed in range(4)]
    write(tier, 2, pages)
    write(tier, 1, [kv_page(EXACT, 9)])
    before = tier.stats()
    tier.close()
    tier = DiskTier(config)
    tier.open()  # the namespace records come back from the meta database, with their specs
    try:
        assert {e.ns_id for e in tier.scan()} == {1, 2}
        after = tier.stats()
        assert (after.quantized_pages, after.quantized_bytes_saved) == (4, before.quantized_bytes_saved)
        for i, page in enumerate(pages):
            status, got = read(tier, 2, i)
            assert status is ReadStatus.OK and got.tobytes() == decoded_by_codec(FP8, page).tobytes()
        tier.delete(2, [key_of(0), key_of(1)])
        assert tier.barrier(WAIT_S)
        assert tier.stats().quantized_pages == 2
        assert tier.stats().quantized_bytes_saved == before.quantized_bytes_saved // 2
    finally:
        tier.close()


def _reseal(value: bytes, ns_id: int, i: int, encoding: int, payload: bytes | None = None) -> bytes:
    """``value`` with a header that checks out for ``payload`` (default: its own) as page ``i`` of
    namespace ``ns_id`` in ``encoding``: only the encoding or the size can then be wrong."""
    header = decode_header(value)
    assert header is not None
    body = value[HEADER_BYTES:] if payload is None else payload
    return encode_header(ns_id, key_of(i), bytes([ns_id]) * 16, len(body), header.seq, body, encoding) + body


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "header_says_exact": lambda v: _reseal(v, 2, 0, ENCODINGS[ColdFormat.EXACT]),
    "header_says_kivi": lambda v: _reseal(v, 2, 0, ENCODINGS[KIVI.cold]),
    "truncated": lambda v: v[:-1],
    "truncated_and_resealed": lambda v: _reseal(v, 2, 0, ENCODINGS[FP8.cold], v[HEADER_BYTES:-4]),
    "scale_flipped": lambda v: v[:-2] + bytes([v[-2] ^ 0x40]) + v[-1:],
    "value_flipped": lambda v: v[:HEADER_BYTES + 5] + bytes([v[HEADER_BYTES + 5] ^ 1]) + v[HEADER_BYTES + 6:],
    "exact_sized_payload": lambda v: _reseal(v, 2, 0, ENCODINGS[FP8.cold], bytes(FP8.page_bytes)),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_quantized_record_is_a_miss_and_a_checksum_failure(config: StoreConfig, damage: str) -> None:
    tier = open_tier(config)
    write(tier, 2, [kv_page(FP8, 0), kv_page(FP8, 1)])
    tier.close()
    rewrite(tier.path, 2, 0, DAMAGES[damage])
    tier = open_tier(config)
    try:
        status, got = read(tier, 2, 0)
        assert status is ReadStatus.CORRUPT
        assert not got.astype(np.float32).any()  # nothing written into the caller's buffer
        assert tier.stats().checksum_failures == 1
        assert read(tier, 2, 1)[0] is ReadStatus.OK
        assert tier.barrier(WAIT_S) and not tier.contains(2, key_of(0))
        assert [(e.ns_id, e.key) for e in tier.scan()] == [(2, key_of(1))]
    finally:
        tier.close()


def test_a_quantized_record_is_never_served_to_an_exact_namespace(config: StoreConfig) -> None:
    """A fp8 value planted under an exact namespace's key, with a header that checks out there
    (as a misdirected write by a buggy tierd would leave it), is a miss, not a short page."""
    tier = open_tier(config)
    write(tier, 2, [kv_page(FP8, 0)])
    write(tier, 1, [kv_page(EXACT, 0)])
    tier.close()
    planted = stored_value(tier.path, 2, 0)
    rewrite(tier.path, 1, 0, lambda _: _reseal(planted, 1, 0, ENCODINGS[FP8.cold]))
    tier = open_tier(config)
    try:
        status, got = read(tier, 1, 0)
        assert status is ReadStatus.CORRUPT
        assert not got.astype(np.float32).any() and tier.stats().checksum_failures == 1
    finally:
        tier.close()


def test_an_exact_record_is_never_decoded_for_a_quantized_namespace(config: StoreConfig) -> None:
    tier = open_tier(config)
    write(tier, 1, [kv_page(EXACT, 0)])
    write(tier, 2, [kv_page(FP8, 0)])
    tier.close()
    exact = stored_value(tier.path, 1, 0)
    rewrite(tier.path, 2, 0, lambda _: _reseal(exact, 2, 0, 0))
    tier = open_tier(config)
    try:
        assert read(tier, 2, 0)[0] is ReadStatus.CORRUPT
        assert tier.stats().checksum_failures == 1
    finally:
        tier.close()


def test_the_encoding_field_sits_where_the_reserved_field_was() -> None:
    """Pages written before cold formats had 0 there: they read as exact, unchanged."""
    header = encode_header(5, key_of(1), b"f" * 16, 4, 7, b"abcd", ENCODINGS[FP8.cold])
    assert struct.unpack_from("<I", header, 12) == (1,)
    assert struct.unpack_from("<I", encode_header(5, key_of(1), b"f" * 16, 4, 7, b"abcd"), 12) == (0,)


def test_a_namespace_id_saved_again_with_an_exact_spec_reads_exact(config: StoreConfig) -> None:
    """An id re-used for another spec (a second daemon on this data dir): the latest record
    decides; the old fp8 pages then fail their check instead of being served as exact."""
    tier = open_tier(config)
    try:
        write(tier, 2, [kv_page(FP8, 0)])
        tier.save_namespace(Namespace(ns_id=2, tenant="t", spec=EXACT, fingerprint=bytes([2]) * 16))
        out = bytearray(EXACT.page_bytes)
        assert tier.read_into(2, key_of(0), memoryview(out)) is ReadStatus.CORRUPT
        page = kv_page(EXACT, 1)
        write(tier, 2, [page])
        assert tier.read_into(2, key_of(0), memoryview(out)) is ReadStatus.OK and bytes(out) == page.tobytes()
    finally:
        tier.close()


def test_pages_are_encoded_on_the_writer_thread(tier: DiskTier, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never on the submitter's thread (the store's movers, the event loop's executor)."""
    threads: list[str] = []
    encode = Fp8PageCodec.encode

    def recording(self: Fp8PageCodec, page: memoryview, out: memoryview) -> None:
        threads.append(threading.current_thread().name)
        encode(self, page, out)

    monkeypatch.setattr(Fp8PageCodec, "encode", recording)
    assert write(tier, 2, [kv_page(FP8, seed) for seed in range(3)]) == [True] * 3
    assert threads == ["tierd-disk-writer"] * 3
