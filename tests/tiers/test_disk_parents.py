"""The disk tier's ``parents`` database: written and deleted with its page, read back at a restart."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import lmdb
import pytest

from tierd.config import DiskConfig, MemoryTierConfig, StoreConfig
from tierd.spec import Namespace, PageSpec
from tierd.tiers.disk import MAX_DBS, DiskTier, PageWrite
from tierd.tiers.disk_parents import PARENT_BYTES, PARENTS_DB
from tierd.tiers.page_format import disk_key

PAGE_BYTES = 4096
WAIT_S = 10.0
NS_ID = 1
SPEC = PageSpec(model="m@1", dtype="float16", num_layers=2, num_kv_heads=2, head_dim=8,
                page_tokens=4)


def make_config(data_dir: Path) -> StoreConfig:
    return StoreConfig(data_dir=data_dir, hbm=MemoryTierConfig(capacity_bytes=1 << 20),
                       dram=MemoryTierConfig(capacity_bytes=1 << 20),
                       disk=DiskConfig(capacity_bytes=16 << 20, map_min_extra_bytes=1 << 20,
                                       fsync=False))


def open_tier(config: StoreConfig) -> DiskTier:
    tier = DiskTier(config)
    tier.open()
    tier.save_namespace(Namespace(ns_id=NS_ID, tenant="t", spec=SPEC,
                                  fingerprint=NS_ID.to_bytes(16, "big")))
    return tier


def key_of(i: int) -> bytes:
    return i.to_bytes(PARENT_BYTES, "big")


def write_chain(tier: DiskTier, length: int) -> None:
    """Pages 0..length-1, each the parent of the next (page 0 a root)."""
    done = threading.Semaphore(0)
    writes = [PageWrite(NS_ID, key_of(i), memoryview(bytes([i]) * PAGE_BYTES), i,
                        lambda ok: done.release(), key_of(i - 1) if i else None)
              for i in range(length)]
    assert tier.submit_writes(writes) == length
    assert tier.barrier(WAIT_S)


def parents_of(tier: DiskTier) -> dict[int, int | None]:
    return {int.from_bytes(e.key, "big"): None if e.parent is None else int.from_bytes(e.parent, "big")
            for e in tier.scan()}


def raw_parents(path: Path) -> dict[bytes, bytes]:
    """The ``parents`` database as LMDB holds it (the tier closed)."""
    env = lmdb.open(str(path), max_dbs=MAX_DBS)
    try:
        db = env.open_db(PARENTS_DB)
        with env.begin(db=db) as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor()}
    finally:
        env.close()


def edit_raw(path: Path, edit: str, dkey: bytes = b"", value: bytes = b"") -> None:
    env = lmdb.open(str(path), max_dbs=MAX_DBS)
    try:
        db = env.open_db(PARENTS_DB)
        with env.begin(write=True) as txn:
            if edit == "drop_db":
                txn.drop(db, delete=True)
            else:
                txn.put(dkey, value, db=db)
    finally:
        env.close()


def test_restart_returns_each_pages_parent(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    tier = open_tier(config)
    write_chain(tier, 4)
    assert parents_of(tier) == {0: None, 1: 0, 2: 1, 3: 2}
    tier.close()
    assert set(raw_parents(tier.path)) == {disk_key(NS_ID, key_of(i)) for i in (1, 2, 3)}

    reopened = open_tier(config)
    try:
        assert parents_of(reopened) == {0: None, 1: 0, 2: 1, 3: 2}
    finally:
        reopened.close()


def test_a_deleted_page_takes_its_parent_record_with_it(tmp_path: Path) -> None:
    tier = open_tier(make_config(tmp_path))
    write_chain(tier, 3)
    tier.delete(NS_ID, [key_of(2), key_of(1)])
    assert tier.barrier(WAIT_S)
    assert parents_of(tier) == {0: None}
    tier.close()
    assert raw_parents(tier.path) == {}


def test_a_rewrite_without_a_parent_removes_the_record(tmp_path: Path) -> None:
    tier = open_tier(make_config(tmp_path))
    write_chain(tier, 2)
    tier.submit_write(NS_ID, key_of(1), memoryview(bytes(PAGE_BYTES)), 5, lambda ok: None)
    assert tier.barrier(WAIT_S)
    assert parents_of(tier) == {0: None, 1: None}
    tier.close()


@pytest.mark.parametrize("value", [b"", b"short", bytes(PARENT_BYTES + 1)])
def test_a_record_of_a_bad_length_is_ignored(tmp_path: Path, value: bytes,
                                             caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path)
    tier = open_tier(config)
    write_chain(tier, 3)
    tier.close()
    edit_raw(tier.path, "put", disk_key(NS_ID, key_of(2)), value)

    reopened = open_tier(config)
    try:
        with caplog.at_level(logging.WARNING, logger="tierd.tiers.disk_parents"):
            assert parents_of(reopened) == {0: None, 1: 0, 2: None}
        assert "parent record" in caplog.text
    finally:
        reopened.close()


def test_an_old_data_dir_without_the_database_opens_with_every_page_a_root(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    tier = open_tier(config)
    write_chain(tier, 3)
    tier.close()
    edit_raw(tier.path, "drop_db")

    reopened = open_tier(config)
    try:
        assert parents_of(reopened) == {0: None, 1: None, 2: None}
        write_chain(reopened, 2)  # the database is created again and written from then on
        assert parents_of(reopened) == {0: None, 1: 0, 2: None}
    finally:
        reopened.close()
