"""Checks an LMDB ``data.mdb`` with plain file reads before LMDB maps it, and opens the
environment writing pages in place where that is safe.

LMDB maps the whole file and trusts its two meta pages: a file cut short (a full disk, a bad
copy) faults with SIGBUS on the first read past its end, which kills the process with nothing
logged. ``check_data_file`` reads the meta pages itself and raises ``ConfigError`` (one line:
what is wrong and what to do) for a file that LMDB would crash on or misread.

Layout read here (LMDB 0.9, 64-bit, little-endian): pages 0 and 1 are meta pages. Each starts
with a 16-byte page header (``mp_pgno`` u64, ``mp_pad`` u16, ``mp_flags`` u16, 4 bytes of
bounds) and then ``MDB_meta``: ``mm_magic`` u32, ``mm_version`` u32, ``mm_address`` u64,
``mm_mapsize`` u64, ``mm_dbs[2]`` (48 bytes each; the first one's ``md_pad`` u32 is the page
size), ``mm_last_pg`` u64, ``mm_txnid`` u64. LMDB uses the meta page with the larger txnid.

**Pages written in place** (``open_environment``). With ``writemap`` LMDB writes a transaction's
pages straight into its shared map of the file: no dirty-page malloc and copy at ``put``, no
``pwritev`` at commit. A durable commit still syncs the data (``msync``) before it writes and
syncs the meta page (``msync``), and the meta page's txnid is written last, so an acknowledged
commit survives a power loss as without it; pages a transaction writes are never ones the last
two commits reference, so a crash mid-transaction leaves a consistent file. The costs:

- LMDB extends the file to the map size with ``ftruncate`` (sparse), and a store into a hole of
  a shared map that the file system cannot back (full, over quota) is a SIGBUS, not an error.
  So pages are written in place only on a file system that overwrites an allocated block in
  place (ext4, tmpfs; not btrfs, zfs or other copy-on-write ones, nor xfs, whose blocks shared
  with a reflinked copy are allocated again on write), with the whole map preallocated
  (``posix_fallocate``) at open: a disk that fills later cannot refuse a store. Elsewhere, or
  without room for the map, or without fsync (``writemap`` without syncs does not order the
  meta page after the data), the environment opens without ``writemap``, as before, and the
  reason is returned. A clean close trims the file to the pages in use (``trim``).
- A wild store into the map by native code in the process would change the file instead of
  faulting. tierd itself only writes through LMDB's writer transaction: readers get read-only
  views, and every page read is checked against its checksum.
- A store into a page that is not in the page cache reads it from disk first.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from tierd.errors import ConfigError

DATA_FILE_NAME = "data.mdb"
LMDB_MAGIC = 0xBEEFC0DE
LMDB_DATA_VERSION = 1
P_META = 0x08
NUM_META_PAGES = 2
PAGE_HEADER = struct.Struct("<QHHI")  # mp_pgno, mp_pad, mp_flags, mp_lower/mp_upper
META_HEAD = struct.Struct("<IIQQ")    # mm_magic, mm_version, mm_address, mm_mapsize
DB_RECORD = struct.Struct("<IHHQQQQQ")  # md_pad (page size in the free db), flags, depth, ...
META_TAIL = struct.Struct("<QQ")      # mm_last_pg, mm_txnid
META_BYTES = PAGE_HEADER.size + META_HEAD.size + NUM_META_PAGES * DB_RECORD.size + META_TAIL.size
# LMDB's page size is the OS page size it was created on: a power of two in this range.
MIN_PAGE_BYTES = 512
MAX_PAGE_BYTES = 1 << 16


@dataclass(frozen=True)
class MetaPage:
    """One decoded meta page; ``page_bytes`` is the environment's page size."""

    page_number: int
    page_bytes: int
    last_page: int
    txn_id: int

    @property
    def min_file_bytes(self) -> int:
        """The file must reach the end of the last page this meta page references."""
        return (self.last_page + 1) * self.page_bytes


def _what_to_do(path: Path) -> str:
    return (f"move {path} away (or restore it from a backup) and start again; to start with an "
            f"empty disk tier, move the whole data dir aside")


def decode_meta(buf: bytes, page_number: int) -> MetaPage | str:
    """The meta page at the start of ``buf``, or why it is not one."""
    if len(buf) < META_BYTES:
        return f"meta page {page_number} is cut short ({len(buf)} of {META_BYTES} bytes)"
    pgno, _pad, flags, _bounds = PAGE_HEADER.unpack_from(buf)
    magic, version, _address, _map_size = META_HEAD.unpack_from(buf, PAGE_HEADER.size)
    page_bytes = DB_RECORD.unpack_from(buf, PAGE_HEADER.size + META_HEAD.size)[0]
    last_page, txn_id = META_TAIL.unpack_from(buf, META_BYTES - META_TAIL.size)
    if magic != LMDB_MAGIC:
        return f"meta page {page_number} has no LMDB magic (found {magic:#010x})"
    if version != LMDB_DATA_VERSION:
        return (f"meta page {page_number} is LMDB data version {version}; this tierd reads "
                f"version {LMDB_DATA_VERSION}")
    if not flags & P_META or pgno != page_number:
        return f"page {page_number} is not marked as a meta page"
    if not MIN_PAGE_BYTES <= page_bytes <= MAX_PAGE_BYTES or page_bytes & (page_bytes - 1):
        return f"meta page {page_number} names an impossible page size ({page_bytes} bytes)"
    return MetaPage(page_number, page_bytes, last_page, txn_id)


def _read_metas(path: Path, file_bytes: int) -> list[MetaPage | str]:
    with open(path, "rb") as f:
        first = f.read(MAX_PAGE_BYTES * NUM_META_PAGES)
    metas: list[MetaPage | str] = [decode_meta(first, 0)]
    page_bytes = metas[0].page_bytes if isinstance(metas[0], MetaPage) else None
    if page_bytes is None:
        return metas
    if file_bytes < NUM_META_PAGES * page_bytes:
        metas.append(f"the file ends inside meta page 1 ({file_bytes} bytes, pages of "
                     f"{page_bytes} bytes)")
        return metas
    metas.append(decode_meta(first[page_bytes:], 1))
    return metas


def data_file_problem(path: Path) -> str | None:
    """Why ``path`` (an LMDB ``data.mdb``) cannot be opened safely, or ``None`` when it can be,
    or when it does not exist (LMDB creates it)."""
    try:
        file_bytes = os.stat(path).st_size
        if file_bytes == 0:
            return (f"{path} is empty (0 bytes): it is not an LMDB file, and starting empty "
                    f"would hide lost data; {_what_to_do(path)}")
        metas = _read_metas(path, file_bytes)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}; check its permissions and the disk"
    bad = [meta for meta in metas if isinstance(meta, str)]
    if bad:
        return f"{path} ({file_bytes} bytes) is not a usable LMDB file: {bad[0]}; {_what_to_do(path)}"
    newest = max((meta for meta in metas if isinstance(meta, MetaPage)), key=lambda m: m.txn_id)
    if file_bytes < newest.min_file_bytes:
        return (f"{path} is truncated: {file_bytes} bytes, but its newest meta page (transaction "
                f"{newest.txn_id}) uses pages up to {newest.last_page} of {newest.page_bytes} "
                f"bytes ({newest.min_file_bytes} bytes); {_what_to_do(path)}")
    return None


def check_data_file(path: Path) -> None:
    """``ConfigError`` with ``data_file_problem``'s reason, if there is one."""
    problem = data_file_problem(path)
    if problem is not None:
        raise ConfigError(problem)


# ---- pages written in place --------------------------------------------------------------

# statfs(2) f_type of the file systems that overwrite an allocated block in place, so a
# preallocated file takes stores through a shared map without allocating (btrfs, zfs and other
# copy-on-write file systems allocate on every overwrite). Not xfs: a block it shares with a
# reflinked copy (coreutils 9's cp makes them by default) is allocated again when written, and a
# full disk then ends the daemon with SIGBUS.
IN_PLACE_FILE_SYSTEMS = {0xEF53: "ext4", 0x01021994: "tmpfs"}
_STATFS_BYTES = 256  # larger than struct statfs on every 64-bit Linux ABI


def file_system_type(path: Path) -> int | None:
    """``statfs(2)``'s ``f_type`` of the file system holding ``path``, or ``None``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(_STATFS_BYTES)
        if libc.statfs(os.fsencode(path), buf) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def in_place_problem(env_dir: Path, map_bytes: int) -> str | None:
    """Why the ``data.mdb`` in ``env_dir`` cannot be written in place through a map of
    ``map_bytes``, or ``None`` when it can (the whole map fits on its file system)."""
    fs_type = file_system_type(env_dir)
    if fs_type not in IN_PLACE_FILE_SYSTEMS:
        found = "unknown" if fs_type is None else f"{fs_type:#x}"
        return (f"its file system (statfs type {found}) is not one of "
                f"{', '.join(sorted(IN_PLACE_FILE_SYSTEMS.values()))}")
    try:
        allocated = os.stat(env_dir / DATA_FILE_NAME).st_blocks * 512
    except FileNotFoundError:
        allocated = 0
    stats = os.statvfs(env_dir)
    free = stats.f_bavail * stats.f_frsize
    if map_bytes - allocated > free:
        return (f"the map ({map_bytes} bytes) does not fit in the {free} bytes free on its file "
                f"system")
    return None


def preallocate(data_file: Path, num_bytes: int) -> str | None:
    """Allocate every block of ``data_file``'s first ``num_bytes``; ``None``, or why not."""
    try:
        fd = os.open(data_file, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, num_bytes)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"preallocating {num_bytes} bytes of {data_file} failed: {exc.strerror or exc}"
    return None


def used_file_bytes(data_file: Path) -> int | None:
    """Bytes of ``data_file`` that either meta page references, or ``None`` if unreadable."""
    try:
        metas = _read_metas(data_file, os.stat(data_file).st_size)
    except OSError:
        return None
    good = [meta.min_file_bytes for meta in metas if isinstance(meta, MetaPage)]
    return max(good) if len(good) == NUM_META_PAGES else None


def trim(data_file: Path, keep_bytes: int = 0) -> None:
    """Cut ``data_file`` (closed by LMDB) back to the pages in use, never below ``keep_bytes``:
    what ``writemap`` extended past them is unused. Left as it is if its meta pages are
    unreadable."""
    used = used_file_bytes(data_file)
    if used is None:
        return
    try:
        if os.stat(data_file).st_size > max(used, keep_bytes):
            os.truncate(data_file, max(used, keep_bytes))
    except OSError:
        return


@dataclass(frozen=True)
class OpenedEnvironment:
    """An environment ``open_environment`` opened; ``not_in_place``: why its pages are not
    written in place (``None`` when they are)."""

    env: lmdb.Environment
    data_file: Path
    not_in_place: str | None
    size_before: int  # of data.mdb before the open

    @property
    def in_place(self) -> bool:
        return self.not_in_place is None

    @property
    def how(self) -> str:
        """How pages are written, for the log."""
        return ("pages are written in place (LMDB writemap)" if self.not_in_place is None
                else f"pages are copied through LMDB: {self.not_in_place}")

    def close(self, clean: bool) -> None:
        """Close the environment. Written in place, the file is trimmed: to the pages in use
        after a ``clean`` session, never below its size before the open otherwise."""
        self.env.close()
        if self.in_place:
            trim(self.data_file, 0 if clean else self.size_before)


def open_environment(env_dir: Path, map_bytes: int, in_place: bool,
                     **options: Any) -> OpenedEnvironment:
    """``lmdb.open(env_dir, map_size=map_bytes, **options)``, in place (``writemap``) when
    ``in_place`` and ``in_place_problem`` allow it and the map could be preallocated; otherwise
    without ``writemap`` (after trimming what a failed preallocation left)."""

    def open_env(writemap: bool) -> lmdb.Environment:
        return lmdb.open(str(env_dir), map_size=map_bytes, subdir=True, writemap=writemap,
                         **options)

    data_file = env_dir / DATA_FILE_NAME
    try:
        size_before = os.stat(data_file).st_size
    except FileNotFoundError:
        size_before = 0
    problem = in_place_problem(env_dir, map_bytes) if in_place else "fsync is off"
    if problem is None:
        env = open_env(True)
        problem = preallocate(data_file, env.info()["map_size"])
        if problem is None:
            return OpenedEnvironment(env, data_file, None, size_before)
        env.close()
        trim(data_file, size_before)
    return OpenedEnvironment(open_env(False), data_file, problem, size_before)
