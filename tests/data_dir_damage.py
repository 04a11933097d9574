"""Ways a data dir's LMDB environment is found damaged (shared by the disk tier's and the daemon's
tests): each ``damage`` function takes the environment dir (``data_dir/pages.lmdb``) of a tierd
that wrote pages and closed cleanly."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import lmdb

DATA_FILE = "data.mdb"
FEW_BYTES = 7


def _data(env_dir: Path) -> Path:
    return env_dir / DATA_FILE


def not_lmdb(env_dir: Path) -> None:
    _data(env_dir).write_bytes(b"these are not the pages you are looking for\n" * 1000)


def zeroed_meta_pages(env_dir: Path) -> None:
    path = _data(env_dir)
    with open(path, "r+b") as f:
        f.write(bytes(2 * os.sysconf("SC_PAGE_SIZE")))


def truncated(env_dir: Path) -> None:
    path = _data(env_dir)
    page_bytes = os.sysconf("SC_PAGE_SIZE")
    size = path.stat().st_size
    assert size >= 8 * page_bytes, "write more pages first: the cut must keep the meta pages"
    os.truncate(path, size // 2)


def few_bytes(env_dir: Path) -> None:
    os.truncate(_data(env_dir), FEW_BYTES)


def empty(env_dir: Path) -> None:
    os.truncate(_data(env_dir), 0)


def foreign_env(env_dir: Path) -> None:
    shutil.rmtree(env_dir)
    env_dir.mkdir()
    env = lmdb.open(str(env_dir), max_dbs=2)
    try:
        other = env.open_db(b"sessions")
        with env.begin(write=True, db=other) as txn:
            txn.put(b"user:1", b"someone else's data")
    finally:
        env.close()


def unreadable_namespace_record(env_dir: Path) -> None:
    env = lmdb.open(str(env_dir), max_dbs=2)
    try:
        meta = env.open_db(b"meta")
        with env.begin(write=True, db=meta) as txn:
            txn.put(b"ns/\x00\x00\x00\x07", b"\xff{not json")
    finally:
        env.close()


# name -> (damage, a fragment of the refusal)
DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "not_lmdb": (not_lmdb, "no LMDB magic"),
    "zeroed_meta_pages": (zeroed_meta_pages, "no LMDB magic"),
    "truncated": (truncated, "is truncated"),
    "few_bytes": (few_bytes, "cut short"),
    "empty": (empty, "is empty (0 bytes)"),
    "foreign_env": (foreign_env, "not tierd's"),
    "unreadable_namespace_record": (unreadable_namespace_record, "is unreadable"),
}
FILE_DAMAGES = ("not_lmdb", "zeroed_meta_pages", "truncated", "few_bytes", "empty")
