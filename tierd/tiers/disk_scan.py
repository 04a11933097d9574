"""The disk tier's walks over every stored page: counting them at open, and the header scan of a
warm restart. Headers only: payloads are never read (value sizes come from LMDB's leaf nodes)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import lmdb

from tierd.errors import InvalidArgument
from tierd.tiers.cold_pages import ColdForms
from tierd.tiers.disk_parents import ParentRecords
from tierd.tiers.page_format import EXACT_ENCODING, HEADER_BYTES, decode_header, split_disk_key


@dataclass(frozen=True)
class DiskEntry:
    """One stored page as ``scan`` sees it; ``stored_bytes`` includes the header; ``parent``:
    the page key of its parent, when its put named one."""

    ns_id: int
    key: bytes
    seq: int
    stored_bytes: int
    parent: bytes | None = None


@dataclass(frozen=True)
class StoredTotals:
    """What ``measure`` counted: pages and bytes (headers included); of those, the pages of
    quantized namespaces and the payload bytes they take less than exact pages would."""

    pages: int = 0
    stored_bytes: int = 0
    quantized_pages: int = 0
    quantized_bytes_saved: int = 0


def measure(env: lmdb.Environment, pages_db: lmdb._Database, forms: ColdForms) -> StoredTotals:
    """Count every stored value (one read transaction over keys and value sizes)."""
    pages = stored_bytes = quantized = saved = 0
    with env.begin(db=pages_db, buffers=True) as txn:
        for dkey, value in txn.cursor().iternext(keys=True, values=True):
            pages += 1
            stored_bytes += len(value)
            form = forms.of_disk_key(dkey)
            if form is not None:
                quantized += 1
                saved += form.saved_bytes(len(value) - HEADER_BYTES)
    return StoredTotals(pages, stored_bytes, quantized, saved)


ScanChunk = tuple[list[DiskEntry], list[tuple[bytes, bytes, int]], bytes | None, int]


def scan_chunk(env: lmdb.Environment, pages_db: lmdb._Database, after: bytes | None,
               max_entries: int, forms: ColdForms,
               parents: ParentRecords | None = None) -> ScanChunk:
    """Up to ``max_entries`` entries after key ``after``: (good, bad, last key, seen). A bad one
    is ``(disk key, its first HEADER_BYTES, its size)``. Good ones carry their ``parents`` record."""
    entries: list[DiskEntry] = []
    bad: list[tuple[bytes, bytes, int]] = []
    last_key: bytes | None = None
    with env.begin(db=pages_db, buffers=True) as txn:
        cursor = txn.cursor()
        positioned = cursor.first() if after is None else cursor.set_range(after)
        if positioned and after is not None and cursor.key() == after:
            positioned = cursor.next()
        while positioned and len(entries) + len(bad) < max_entries:
            last_key = bytes(cursor.key())
            value = cursor.value()
            entry = _entry_from_header(last_key, value, forms)
            if entry is None:
                bad.append((last_key, bytes(value[:HEADER_BYTES]), len(value)))
            elif parents is not None and (parent := parents.read(txn, last_key)) is not None:
                entries.append(replace(entry, parent=parent))
            else:
                entries.append(entry)
            positioned = cursor.next()
    return entries, bad, last_key, len(entries) + len(bad)


def _entry_from_header(dkey: bytes, value: memoryview, forms: ColdForms) -> DiskEntry | None:
    """The entry if its header is readable and agrees with its key, size and the encoding of
    its namespace (payload untouched)."""
    try:
        ns_id, key = split_disk_key(dkey)
    except InvalidArgument:
        return None
    header = decode_header(value[:HEADER_BYTES])
    form = forms.get(ns_id)
    encoding = EXACT_ENCODING if form is None else form.encoding
    if header is None or header.ns_id != ns_id or header.encoding != encoding \
            or len(value) != header.header_bytes + header.payload_bytes:
        return None
    return DiskEntry(ns_id=ns_id, key=key, seq=header.seq, stored_bytes=len(value))
