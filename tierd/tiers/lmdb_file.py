"""Checks an LMDB ``data.mdb`` with plain file reads before LMDB maps it.

LMDB maps the whole file and trusts its two meta pages: a file cut short (a full disk, a bad
copy) faults with SIGBUS on the first read past its end, which kills the process with nothing
logged. ``check_data_file`` reads the meta pages itself and raises ``ConfigError`` (one line:
what is wrong and what to do) for a file that LMDB would crash on or misread.

Layout read here (LMDB 0.9, 64-bit, little-endian): pages 0 and 1 are meta pages. Each starts
with a 16-byte page header (``mp_pgno`` u64, ``mp_pad`` u16, ``mp_flags`` u16, 4 bytes of
bounds) and then ``MDB_meta``: ``mm_magic`` u32, ``mm_version`` u32, ``mm_address`` u64,
``mm_mapsize`` u64, ``mm_dbs[2]`` (48 bytes each; the first one's ``md_pad`` u32 is the page
size), ``mm_last_pg`` u64, ``mm_txnid`` u64. LMDB uses the meta page with the larger txnid.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

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
