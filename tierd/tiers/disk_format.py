"""The disk tier's environment as a whole: is it tierd's, which page format it holds, and the
migration of a version-1 one. Runs in ``DiskTier.open``, before the tier serves.

The ``meta`` database records the page format at ``format/version`` (ASCII decimal), written
when the data dir is created. A data dir without that record but with pages or namespaces, or
with version 1, was written by a tierd whose checksums did not cover the page key: it is
**migrated** at open. Every version-1 page whose own checksum verifies is re-checksummed under
its LMDB key and its namespace's fingerprint (format 2); a page that does not verify, or whose
namespace has no record, is dropped and counted as a checksum failure. Then the record says 2.
A migration cut short (kill -9) resumes at the next open: pages already in format 2 are kept.
A record of a newer version is refused: this tierd would misread it.

All writes go through the tier's one writer thread; reads are short read-only transactions.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import lmdb

from tierd.errors import ConfigError, InvalidArgument
from tierd.tiers.disk_writer import Barrier, DiskWriter, DropIfUnchanged, PutMeta, PutPage
from tierd.tiers.page_format import (
    FORMAT_VERSION,
    HEADER_BYTES,
    V1_FORMAT_VERSION,
    decode_header,
    encode_header,
    split_disk_key,
    verify_v1,
)

log = logging.getLogger(__name__)

FORMAT_KEY = b"format/version"
# A record longer than this is not a version number.
MAX_FORMAT_RECORD_BYTES = 16
# One migration step reads at most this many payload bytes (copied, then queued) at a time.
MIGRATION_CHUNK_BYTES = 64 << 20
MIGRATION_CHUNK_ENTRIES = 1024


class FormatState(enum.Enum):
    """What ``format_state`` found."""

    NEW = "new"          # nothing stored yet: record the current version
    CURRENT = "current"  # format 2
    V1 = "v1"            # written before page keys were checksummed: migrate


@dataclass(frozen=True)
class MigrationResult:
    """Pages of a version-1 data dir: re-checksummed, and dropped because they did not verify."""

    migrated_pages: int
    dropped_pages: int


class NamespaceFingerprints:
    """ns_id -> namespace fingerprint, for the checksums; filled from the namespace records."""

    def __init__(self, initial: Mapping[int, bytes]) -> None:
        self._lock = threading.Lock()
        self._by_ns: dict[int, bytes] = dict(initial)

    def get(self, ns_id: int) -> bytes | None:
        with self._lock:
            return self._by_ns.get(ns_id)

    def add(self, ns_id: int, fingerprint: bytes) -> None:
        with self._lock:
            self._by_ns[ns_id] = fingerprint


def _refusal(path: Path, what: str) -> ConfigError:
    return ConfigError(f"the disk tier at {path} {what}; move the data dir aside to start with "
                       f"an empty disk tier, or restore it from a backup")


def check_databases(env: lmdb.Environment, tierd_dbs: frozenset[bytes], path: Path) -> None:
    """``ConfigError`` if the environment holds databases other than tierd's (a foreign LMDB
    environment); reads at most ``len(tierd_dbs) + 1`` names."""
    names: list[bytes] = []
    with env.begin() as txn:
        for name in txn.cursor().iternext(values=False):
            names.append(bytes(name))
            if len(names) > len(tierd_dbs):
                break
    foreign = [name for name in names if name not in tierd_dbs]
    if foreign:
        shown = ", ".join(repr(name[:32]) for name in foreign)
        raise _refusal(path, f"is an LMDB environment that is not tierd's (it holds {shown}; "
                             f"tierd's databases are {', '.join(sorted(map(repr, tierd_dbs)))})")


def format_state(env: lmdb.Environment, meta_db: lmdb._Database, holds_data: bool,
                 path: Path) -> FormatState:
    """The environment's page format; ``ConfigError`` for a newer or unreadable record.
    ``holds_data``: any page or namespace record is stored."""
    with env.begin(db=meta_db) as txn:
        record = txn.get(FORMAT_KEY)
    if record is None:
        return FormatState.V1 if holds_data else FormatState.NEW
    text = record[:MAX_FORMAT_RECORD_BYTES].decode("ascii", "replace")
    if len(record) > MAX_FORMAT_RECORD_BYTES or not text.isdigit():
        raise _refusal(path, f"has an unreadable format record ({text!r})")
    version = int(text)
    if version == FORMAT_VERSION:
        return FormatState.CURRENT
    if version == V1_FORMAT_VERSION:
        return FormatState.V1
    raise ConfigError(f"the disk tier at {path} holds pages in format {version}, written by a "
                      f"newer tierd; this one reads formats {V1_FORMAT_VERSION} and "
                      f"{FORMAT_VERSION}: run the newer tierd, or move the data dir aside")


class _Outcomes:
    """Collects the ``on_done`` results of the ops of one step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: list[bool] = []

    def on_done(self, stored: bool) -> None:
        with self._lock:
            self._results.append(stored)

    def all_stored(self, writer: DiskWriter, queued: int, expected: int) -> bool:
        """After a barrier: ``True`` if all ``expected`` ops were queued and stored."""
        done = threading.Event()
        if queued != expected or not writer.try_submit(Barrier(lambda _stored: done.set())):
            return False
        done.wait()
        with self._lock:
            return len(self._results) == expected and all(self._results)


def record_format(writer: DiskWriter, path: Path) -> None:
    """Store the current format version (durable when this returns)."""
    outcomes = _Outcomes()
    queued = writer.try_submit(PutMeta(FORMAT_KEY, str(FORMAT_VERSION).encode("ascii"),
                                       outcomes.on_done))
    if not outcomes.all_stored(writer, int(queued), 1):
        raise ConfigError(f"the disk tier at {path} could not record its format version (disk "
                          f"full or I/O error, see the log): free space on its file system")


def _chunks(env: lmdb.Environment, pages_db: lmdb._Database
            ) -> Iterator[list[tuple[bytes, bytes]]]:
    """Every (disk key, value copy) in bounded chunks, each read in its own short transaction."""
    after: bytes | None = None
    while True:
        chunk: list[tuple[bytes, bytes]] = []
        chunk_bytes = 0
        with env.begin(db=pages_db, buffers=True) as txn:
            cursor = txn.cursor()
            positioned = cursor.first() if after is None else cursor.set_range(after)
            if positioned and after is not None and bytes(cursor.key()) == after:
                positioned = cursor.next()
            while positioned and len(chunk) < MIGRATION_CHUNK_ENTRIES \
                    and chunk_bytes < MIGRATION_CHUNK_BYTES:
                value = bytes(cursor.value())
                chunk.append((bytes(cursor.key()), value))
                chunk_bytes += len(value)
                positioned = cursor.next()
        if not chunk:
            return
        yield chunk
        after = chunk[-1][0]


def _migrated_op(dkey: bytes, value: bytes, fingerprints: NamespaceFingerprints,
                 on_done: Callable[[bool], None]) -> PutPage | DropIfUnchanged | None:
    """The op that migrates one value: ``None`` if already format 2, a ``DropIfUnchanged`` if
    it does not verify as version 1 (or its namespace is unknown)."""
    if decode_header(value) is not None:
        return None
    drop = DropIfUnchanged(dkey, value[:HEADER_BYTES], len(value), on_done)
    try:
        ns_id, key = split_disk_key(dkey)
    except InvalidArgument:
        return drop
    header = decode_header(value, V1_FORMAT_VERSION)
    fingerprint = fingerprints.get(ns_id)
    if header is None or fingerprint is None \
            or verify_v1(value, ns_id, header.payload_bytes) is None:
        return drop
    payload = memoryview(value)[HEADER_BYTES:]
    new_header = encode_header(ns_id, key, fingerprint, payload.nbytes, header.seq, payload)
    return PutPage(dkey, ns_id, payload, header.seq, on_done, new_header)


def migrate_v1(env: lmdb.Environment, pages_db: lmdb._Database, writer: DiskWriter,
               fingerprints: NamespaceFingerprints, path: Path) -> MigrationResult:
    """Re-checksum a version-1 data dir in format 2 and record it (see the module docstring)."""
    migrated = dropped = 0
    for chunk in _chunks(env, pages_db):
        outcomes = _Outcomes()
        ops = [op for op in (_migrated_op(dkey, value, fingerprints, outcomes.on_done)
                             for dkey, value in chunk) if op is not None]
        puts = [op for op in ops if isinstance(op, PutPage)]
        drops = [op for op in ops if isinstance(op, DropIfUnchanged)]
        for op in drops:
            log.error("disk tier %s: migrating to page format %d, the value under disk key %s "
                      "failed its version-%d check; dropping it", path, FORMAT_VERSION,
                      op.dkey.hex(), V1_FORMAT_VERSION)
        queued = writer.submit_pages(puts) + sum(writer.try_submit(op) for op in drops)
        if not outcomes.all_stored(writer, queued, len(ops)):
            raise ConfigError(f"migrating the disk tier at {path} to page format "
                              f"{FORMAT_VERSION} failed after {migrated} pages (disk full or "
                              f"I/O error, see the log): free space and start again; the "
                              f"migration resumes where it stopped")
        migrated += len(puts)
        dropped += len(drops)
    record_format(writer, path)
    return MigrationResult(migrated, dropped)
