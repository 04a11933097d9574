"""The disk tier's data dir as a whole: one opener at a time, its page format recorded, a
version-1 data dir migrated (pages that verify kept, the others dropped), and what it refuses."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import lmdb
import pytest
import xxhash
from test_disk_tier import NS_IDS, key_of, make_config, namespace, open_tier, random_page, read_page, write_pages

from tierd.errors import ConfigError
from tierd.tiers.disk import DiskTier, ReadStatus
from tierd.tiers.disk_format import FORMAT_KEY
from tierd.tiers.page_format import HEADER_BYTES, MAGIC, V1_FORMAT_VERSION, disk_key

PAGE_BYTES = 4096


def lmdb_env(env_dir: Path) -> lmdb.Environment:
    return lmdb.open(str(env_dir), max_dbs=2)


def format_record(env_dir: Path) -> bytes | None:
    env = lmdb_env(env_dir)
    try:
        with env.begin(db=env.open_db(b"meta")) as txn:
            return txn.get(FORMAT_KEY)
    finally:
        env.close()


def as_version_1(value: bytes, corrupt: bool = False) -> bytes:
    """``value`` (format 2) rewritten as format 1 wrote it: its checksum over header and payload."""
    _magic, _version, header_len, ns_id, _r, payload_len, seq = struct.unpack_from("<4sHHIIQQ", value)
    prefix = struct.pack("<4sHHIIQQ", MAGIC, V1_FORMAT_VERSION, header_len, ns_id, 0, payload_len, seq)
    payload = value[HEADER_BYTES:]
    checksum = xxhash.xxh3_64_intdigest(prefix + payload) ^ int(corrupt)
    return prefix + struct.pack("<Q", checksum) + payload


def make_version_1(env_dir: Path, corrupt: set[bytes], record: bytes | None,
                   keep: frozenset[bytes] = frozenset()) -> None:
    """Rewrite every page but those under ``keep`` as format 1 (those under ``corrupt`` disk
    keys with a bad checksum) and set the format record to ``record`` (``None``: no record, as
    before records existed)."""
    env = lmdb_env(env_dir)
    try:
        pages_db, meta_db = env.open_db(b"pages"), env.open_db(b"meta")
        with env.begin(write=True) as txn:
            for dkey, value in list(txn.cursor(db=pages_db)):
                if dkey not in keep:
                    txn.put(dkey, as_version_1(value, dkey in corrupt), db=pages_db)
            if record is None:
                txn.delete(FORMAT_KEY, db=meta_db)
            else:
                txn.put(FORMAT_KEY, record, db=meta_db)
    finally:
        env.close()


def test_a_second_opener_is_refused_with_the_holders_pid_until_the_first_closes(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    first = open_tier(config)
    write_pages(first, {(1, 0): b"a" * 64})
    second = DiskTier(config)
    with pytest.raises(ConfigError, match=rf"in use by this process \(pid {os.getpid()}\)"):
        second.open()
    assert read_page(first, 1, 0, 64) == (ReadStatus.OK, b"a" * 64)  # the first goes on
    first.close()
    second.open()
    assert read_page(second, 1, 0, 64) == (ReadStatus.OK, b"a" * 64)
    second.close()


def test_a_new_data_dir_records_format_2(tmp_path: Path) -> None:
    t = open_tier(make_config(tmp_path))
    t.close()
    assert format_record(t.path) == b"2"


@pytest.mark.parametrize("record", [None, b"1"])
def test_a_version_1_data_dir_is_migrated_and_pages_that_fail_their_check_are_dropped(
        tmp_path: Path, record: bytes | None) -> None:
    config = make_config(tmp_path)
    pages = {(ns_id, i): random_page(10 * ns_id + i, PAGE_BYTES) for ns_id in NS_IDS for i in range(3)}
    t = open_tier(config)
    write_pages(t, pages)
    t.close()
    make_version_1(t.path, {disk_key(2, key_of(1))}, record)

    t = DiskTier(config)
    t.open()
    try:
        assert t.stats().checksum_failures == 1
        assert t.stats().stored_pages == len(pages) - 1
        for (ns_id, i), payload in pages.items():
            expected = (ReadStatus.MISSING, bytes(PAGE_BYTES)) if (ns_id, i) == (2, 1) \
                else (ReadStatus.OK, payload)
            assert read_page(t, ns_id, i, PAGE_BYTES) == expected
    finally:
        t.close()
    assert format_record(t.path) == b"2"
    reopened = DiskTier(config)  # nothing left to migrate: nothing more dropped
    reopened.open()
    assert reopened.stats().checksum_failures == 0
    assert read_page(reopened, 1, 0, PAGE_BYTES) == (ReadStatus.OK, pages[(1, 0)])
    reopened.close()


def test_a_migration_cut_short_resumes_keeping_the_pages_already_migrated(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    pages = {(1, i): random_page(i, PAGE_BYTES) for i in range(4)}
    t = open_tier(config)
    write_pages(t, pages)
    t.close()
    # As a kill -9 halfway leaves it: some pages in format 2 already, no record yet.
    make_version_1(t.path, set(), None, keep=frozenset({disk_key(1, key_of(0)), disk_key(1, key_of(2))}))
    t = DiskTier(config)
    t.open()
    assert t.stats().checksum_failures == 0
    assert all(read_page(t, 1, i, PAGE_BYTES) == (ReadStatus.OK, p) for (_, i), p in pages.items())
    t.close()
    assert format_record(t.path) == b"2"


def test_a_version_1_page_in_a_version_2_data_dir_is_never_served(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    t = open_tier(config)
    write_pages(t, {(1, 0): random_page(0, PAGE_BYTES)})
    t.close()
    make_version_1(t.path, set(), b"2")
    t = open_tier(config)
    assert t.read_into(1, key_of(0), memoryview(bytearray(PAGE_BYTES))) is ReadStatus.CORRUPT
    t.close()


@pytest.mark.parametrize(("record", "fragment"), [(b"3", "format 3, written by a newer tierd"),
                                                  (b"two", "unreadable format record")])
def test_a_format_record_it_cannot_read_is_refused(tmp_path: Path, record: bytes, fragment: str) -> None:
    config = make_config(tmp_path)
    t = open_tier(config)
    t.close()
    make_version_1(t.path, set(), record)
    with pytest.raises(ConfigError, match=fragment):
        DiskTier(config).open()
    again = DiskTier(config)  # the refusal released the lock and closed the environment
    with pytest.raises(ConfigError, match=fragment):
        again.open()


def test_a_foreign_lmdb_environment_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    env_dir = DiskTier(config).path
    env_dir.mkdir(parents=True)
    env = lmdb.open(str(env_dir))
    with env.begin(write=True) as txn:
        txn.put(b"user:1", b"someone else's data")
    env.close()
    with pytest.raises(ConfigError, match="not tierd's"):
        DiskTier(config).open()
    env = lmdb.open(str(env_dir))
    with env.begin() as txn:
        assert list(txn.cursor()) == [(b"user:1", b"someone else's data")]
    env.close()


def test_an_unreadable_namespace_record_is_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    t = open_tier(config)
    t.close()
    env = lmdb_env(t.path)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(b"ns/\x00\x00\x00\x01", b"{not json")
    env.close()
    with pytest.raises(ConfigError, match="namespace record .* is unreadable"):
        DiskTier(config).open()


def test_namespaces_saved_before_are_loaded_with_their_fingerprints(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    t = open_tier(config)
    write_pages(t, {(2, 4): b"p" * 32})
    t.close()
    t = DiskTier(config)  # no save_namespace this time: the records give the fingerprints
    t.open()
    assert t.load_namespaces() == [namespace(ns_id) for ns_id in NS_IDS]
    assert read_page(t, 2, 4, 32) == (ReadStatus.OK, b"p" * 32)
    t.close()
