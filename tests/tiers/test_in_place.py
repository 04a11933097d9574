"""Pages written in place (LMDB ``writemap``): only for a durable tier on a file system that
overwrites preallocated blocks in place, with the whole map preallocated while open (so no store
into the map can meet a full disk: that would be a SIGBUS, not an error), the file trimmed back
at close; anywhere else the tier copies pages through LMDB as before and says why."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from data_dir_damage import DAMAGES
from disk_full import small_tmpfs
from test_disk_tier import make_config, open_tier, random_page, read_page, write_pages

from tierd.errors import ConfigError
from tierd.tiers import lmdb_file
from tierd.tiers.disk import DiskTier, ReadStatus, map_size_bytes
from tierd.tiers.lmdb_file import DATA_FILE_NAME, IN_PLACE_FILE_SYSTEMS, file_system_type, used_file_bytes

BTRFS_MAGIC = 0x9123683E


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.fixture
def in_place_dir(tmp_path: Path) -> Path:
    if file_system_type(tmp_path) not in IN_PLACE_FILE_SYSTEMS:
        pytest.skip(f"{tmp_path} is not on {', '.join(IN_PLACE_FILE_SYSTEMS.values())}")
    return tmp_path


def test_a_durable_tier_writes_in_place_into_a_preallocated_map_trimmed_at_close(
        in_place_dir: Path) -> None:
    config = make_config(in_place_dir, fsync=True)
    tier = open_tier(config)
    data_file = tier.path / DATA_FILE_NAME
    try:
        assert tier.writes_in_place
        assert _allocated(data_file) >= map_size_bytes(config.disk)  # every block of the map
        pages = {(1, i): random_page(i) for i in range(6)}
        assert all(ok for _, ok in write_pages(tier, pages).calls)
    finally:
        tier.close()
    used = used_file_bytes(data_file)
    assert used is not None and os.stat(data_file).st_size == used < map_size_bytes(config.disk)
    tier.open()
    try:
        assert tier.writes_in_place
        assert all(read_page(tier, 1, i) == (ReadStatus.OK, pages[(1, i)]) for i in range(6))
    finally:
        tier.close()
    tier = DiskTier(make_config(in_place_dir, fsync=False))  # the same data dir, copied through
    tier.open()
    try:
        assert not tier.writes_in_place
        assert all(read_page(tier, 1, i) == (ReadStatus.OK, pages[(1, i)]) for i in range(6))
    finally:
        tier.close()


def test_without_fsync_or_on_another_file_system_pages_are_copied(
        in_place_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tier = open_tier(make_config(in_place_dir / "nosync", fsync=False))
    assert not tier.writes_in_place
    tier.close()
    monkeypatch.setattr(lmdb_file, "file_system_type", lambda path: BTRFS_MAGIC)
    assert "file system" in (lmdb_file.in_place_problem(in_place_dir, 1 << 20) or "")
    tier = open_tier(make_config(in_place_dir / "btrfs", fsync=True))
    try:
        assert not tier.writes_in_place
        assert all(ok for _, ok in write_pages(tier, {(1, 0): random_page(0)}).calls)
        assert read_page(tier, 1, 0) == (ReadStatus.OK, random_page(0))
    finally:
        tier.close()


def test_a_failed_preallocation_falls_back_to_copies_and_leaves_the_file_as_found(
        in_place_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(in_place_dir, fsync=True)
    tier = open_tier(config)
    assert all(ok for _, ok in write_pages(tier, {(1, 0): random_page(0)}).calls)
    tier.close()
    data_file = tier.path / DATA_FILE_NAME
    size_before = os.stat(data_file).st_size

    def refuse(path: Path, num_bytes: int) -> str:
        os.truncate(path, num_bytes)  # as a preallocation cut short by ENOSPC would leave it
        return "preallocating failed: No space left on device"
    monkeypatch.setattr(lmdb_file, "preallocate", refuse)
    tier.open()
    try:
        assert not tier.writes_in_place
        assert os.stat(data_file).st_size == size_before
        assert read_page(tier, 1, 0) == (ReadStatus.OK, random_page(0))
        assert all(ok for _, ok in write_pages(tier, {(1, 1): random_page(1)}).calls)
    finally:
        tier.close()


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_a_refused_data_dir_is_not_extended_by_the_map(in_place_dir: Path, name: str) -> None:
    config = make_config(in_place_dir, fsync=True)
    tier = open_tier(config)
    assert all(ok for _, ok in write_pages(tier, {(1, i): random_page(i) for i in range(8)}).calls)
    tier.close()
    damage, fragment = DAMAGES[name]
    damage(tier.path)
    size_before = (tier.path / DATA_FILE_NAME).stat().st_size
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        DiskTier(config).open()
    assert (tier.path / DATA_FILE_NAME).stat().st_size == size_before


FS_BYTES = 48 << 20
WRITER = textwrap.dedent("""
    import sys
    sys.path[:0] = sys.argv[2:4]
    from pathlib import Path
    from test_disk_tier import make_config, open_tier, random_page, read_page, write_pages
    from tierd.tiers.disk import ReadStatus
    tier = open_tier(make_config(Path(sys.argv[1]), fsync=True))
    assert tier.writes_in_place
    print("open", flush=True)
    sys.stdin.readline()  # the parent fills the file system
    pages = {(1, i): random_page(i) for i in range(20)}
    calls = write_pages(tier, pages).calls
    assert calls == [(i, True) for i in range(20)], calls
    assert all(read_page(tier, 1, i) == (ReadStatus.OK, pages[(1, i)]) for i in range(20))
    tier.close()
    print("stored", flush=True)
""")


def test_in_place_writes_go_on_when_the_file_system_fills_up(tmp_path: Path) -> None:
    """The map's blocks were taken at open: a file system filled afterwards refuses nothing
    (in a child process: a store into an unbacked page would kill it with SIGBUS)."""
    with small_tmpfs(tmp_path / "fs", FS_BYTES) as fs:
        here = Path(__file__).parent
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(fs.root / "data"), str(here),
                                  str(here.parent)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdin is not None
            assert child.stdout.readline() == "open\n", child.stderr.read() if child.stderr else ""
            fs.fill()
            child.stdin.write("go\n")
            child.stdin.flush()
            out, err = child.communicate(timeout=120)
        finally:
            child.kill()
        assert child.returncode == 0 and out == "stored\n", (child.returncode, err)
