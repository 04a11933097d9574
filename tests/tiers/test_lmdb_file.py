"""The plain-file check of ``data.mdb``: it reads real LMDB files as LMDB does, and names what is
wrong with damaged ones before LMDB maps them (a truncated map is a SIGBUS, not an error)."""

from __future__ import annotations

import mmap
import os
import re
from pathlib import Path

import lmdb
import pytest
from data_dir_damage import DAMAGES, FILE_DAMAGES
from test_disk_tier import make_config, open_tier, random_page, write_pages

from tierd.errors import ConfigError
from tierd.tiers.disk import DiskTier
from tierd.tiers.lmdb_file import LMDB_MAGIC, MetaPage, data_file_problem, decode_meta


def written_env(tmp_path: Path) -> Path:
    """The environment dir of a tier that stored some pages and closed."""
    t = open_tier(make_config(tmp_path))
    write_pages(t, {(1, i): random_page(i, 16 << 10) for i in range(8)})
    t.close()
    return t.path


def test_meta_pages_of_a_real_lmdb_file_decode_as_lmdb_reads_them(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path / "env"), max_dbs=2)
    db = env.open_db(b"x")
    for i in range(50):
        with env.begin(write=True, db=db) as txn:
            txn.put(i.to_bytes(4, "big"), os.urandom(3000))
    info, stat = env.info(), env.stat()
    env.close()
    raw = (tmp_path / "env" / "data.mdb").read_bytes()
    page_bytes = stat["psize"]
    metas = [decode_meta(raw, 0), decode_meta(raw[page_bytes:], 1)]
    assert all(isinstance(meta, MetaPage) for meta in metas)
    newest = max((m for m in metas if isinstance(m, MetaPage)), key=lambda m: m.txn_id)
    assert newest.page_bytes == page_bytes == mmap.PAGESIZE
    assert (newest.txn_id, newest.last_page) == (info["last_txnid"], info["last_pgno"])
    assert newest.min_file_bytes == len(raw)
    assert int.from_bytes(raw[16:20], "little") == LMDB_MAGIC
    assert data_file_problem(tmp_path / "env" / "data.mdb") is None


def test_no_file_is_no_problem_and_a_healthy_data_dir_opens(tmp_path: Path) -> None:
    assert data_file_problem(tmp_path / "data.mdb") is None
    env_dir = written_env(tmp_path)
    assert data_file_problem(env_dir / "data.mdb") is None
    t = DiskTier(make_config(tmp_path))
    t.open()
    assert t.stats().stored_pages == 8
    t.close()


@pytest.mark.parametrize("name", FILE_DAMAGES)
def test_a_damaged_file_is_named_with_what_to_do(tmp_path: Path, name: str) -> None:
    env_dir = written_env(tmp_path)
    damage, fragment = DAMAGES[name]
    damage(env_dir)
    problem = data_file_problem(env_dir / "data.mdb")
    assert problem is not None and fragment in problem and "\n" not in problem
    assert "move" in problem and "backup" in problem


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_the_disk_tier_refuses_every_damaged_data_dir(tmp_path: Path, name: str) -> None:
    env_dir = written_env(tmp_path)
    damage, fragment = DAMAGES[name]
    damage(env_dir)
    size_before = (env_dir / "data.mdb").stat().st_size
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        DiskTier(make_config(tmp_path)).open()
    assert (env_dir / "data.mdb").stat().st_size == size_before  # not "repaired" into empty
