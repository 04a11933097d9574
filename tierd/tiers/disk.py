"""The ``disk`` tier: page bytes in one LMDB environment (``data_dir/pages.lmdb``).

The tier stores and returns bytes; it never decides what to evict (the store's index does, and
calls ``delete``). Three named databases: ``pages`` (disk key -> header + payload, see
``page_format``), ``meta`` (the persisted namespace registry and the page format version) and
``parents`` (disk key -> its parent's page key, ``disk_parents``; absent in older data dirs).
``open`` first takes the data dir's lock (``data_dir_lock``: one tierd per data dir), checks
``data.mdb`` before LMDB maps it (``lmdb_file``), then refuses a foreign environment and
migrates a version-1 one (``disk_format``). A durable (fsync) environment writes pages in place
through LMDB's map where the file system allows it (``lmdb_file.open_environment``). All writes
go through the one writer thread of ``disk_writer``; reads run on the caller's thread in short
read-only transactions over zero-copy views of the map, and never take a lock the writer holds.
"""

from __future__ import annotations

import enum
import logging
import mmap
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import lmdb

from tierd.buffers import byte_view
from tierd.config import DiskConfig, StoreConfig
from tierd.errors import ConfigError, FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from tierd.keys import check_keys
from tierd.spec import Namespace
from tierd.tiers.cold_pages import ColdForms, quantized_put
from tierd.tiers.data_dir_lock import DataDirLock
from tierd.tiers.disk_format import (
    FormatState,
    NamespaceFingerprints,
    check_databases,
    format_state,
    migrate_v1,
    record_format,
)
from tierd.tiers.disk_parents import PARENTS_DB, ParentRecords
from tierd.tiers.disk_reads import ReadCounters, ReaderGate, copy_out
from tierd.tiers.disk_scan import DiskEntry, measure, scan_chunk
from tierd.tiers.disk_writer import (
    Barrier,
    DeletePages,
    DiskWriter,
    DropIfUnchanged,
    PutMeta,
    PutPage,
    WriterStats,
)
from tierd.tiers.lmdb_file import DATA_FILE_NAME, OpenedEnvironment, check_data_file, open_environment
from tierd.tiers.namespace_records import encode_namespace, namespace_key, read_namespaces
from tierd.tiers.page_format import (
    EXACT_ENCODING,
    FORMAT_VERSION,
    HEADER_BYTES,
    MAX_SEQ,
    NS_ID_BYTES,
    check_fingerprint,
    decode_header,
    disk_key,
    encode_header,
    split_disk_key,
    verify,
)

log = logging.getLogger(__name__)

ENV_DIR_NAME = "pages.lmdb"
PAGES_DB = b"pages"
META_DB = b"meta"
MAX_DBS = 3
TIERD_DBS = frozenset({PAGES_DB, META_DB, PARENTS_DB})
# Reader slots beyond ``reader_threads``: the store's movers, scan/contains from other threads
# and py-lmdb's cached spare transaction; LMDB's own default (126) costs 8 KiB of lock file.
EXTRA_READER_SLOTS = 126
# scan() closes its read transaction after this many entries: a long-lived read transaction
# stops LMDB from reusing freed pages and the file grows.
SCAN_CHUNK_ENTRIES = 1024


class ReadStatus(enum.Enum):
    """Outcome of ``DiskTier.read_into``."""

    OK = "ok"
    MISSING = "missing"
    CORRUPT = "corrupt"  # header or checksum mismatch: the page was dropped, nothing returned


@dataclass(frozen=True)
class PageWrite:
    """One page for ``submit_writes``: ``payload`` stays unchanged until ``on_done`` fires;
    ``parent``: the page key of its parent in its chain, if known (stored with the page)."""

    ns_id: int
    key: bytes
    payload: memoryview
    seq: int
    on_done: Callable[[bool], None]
    parent: bytes | None = None


@dataclass(frozen=True)
class DiskStats:
    """Counters of the tier; ``stored_bytes`` counts LMDB values (headers included)."""

    stored_pages: int
    stored_bytes: int
    bytes_written: int
    bytes_read: int
    checksum_failures: int
    map_full_events: int
    queue_depth: int
    commits: int
    map_size_bytes: int
    write_failures: int = 0  # page writes not stored: an I/O error (disk full) or the map full
    failed_commits: int = 0
    write_error: str = ""    # why the latest commit failed, while commits fail ("" once they work)
    quantized_pages: int = 0        # stored in a cold format (fp8)
    quantized_bytes_saved: int = 0  # payload bytes those take less than exact pages would


def map_size_bytes(disk: DiskConfig) -> int:
    """``capacity * (1 + map_headroom) + map_min_extra_bytes``, rounded up to the OS page size."""
    wanted = int(disk.capacity_bytes * (1.0 + disk.map_headroom)) + disk.map_min_extra_bytes
    return max(mmap.PAGESIZE, -(-wanted // mmap.PAGESIZE) * mmap.PAGESIZE)


@dataclass(frozen=True)
class _Session:
    """Everything that lives from ``open`` to ``close``; swapped as one reference."""

    env: lmdb.Environment
    pages_db: lmdb._Database
    meta_db: lmdb._Database
    writer: DiskWriter
    gate: ReaderGate
    fingerprints: NamespaceFingerprints  # of every namespace with a record: the checksums need them
    forms: ColdForms  # the namespaces whose pages are stored quantized
    pid: int
    parents: ParentRecords
    map_size_bytes: int  # LMDB's, which is larger than configured if the file already was
    opened: OpenedEnvironment  # env, and whether its pages are written in place


class DiskTier:
    """LMDB page storage under ``config.data_dir``; see the module docstring for threading."""

    def __init__(self, config: StoreConfig) -> None:
        self._config = config
        self._path = Path(config.data_dir) / ENV_DIR_NAME
        self._map_size_bytes = map_size_bytes(config.disk)
        self._closed_message = (f"the disk tier at {self._path} is not open (closed or shutting "
                                f"down): call open() first")
        # Called from the writer thread when LMDB reported MapFullError; must not block long.
        self.on_map_full: Callable[[], None] | None = None
        self._state_lock = threading.Lock()
        self._session: _Session | None = None
        self._reads = ReadCounters()
        self._lock = DataDirLock(Path(config.data_dir))
        self._writer_totals = WriterStats()  # counters of writers of earlier open/close cycles

    @property
    def path(self) -> Path:
        """The LMDB environment directory (holds ``data.mdb`` and ``lock.mdb``)."""
        return self._path

    @property
    def writes_in_place(self) -> bool:
        """Whether the open environment writes pages straight into its map (``writemap``)."""
        session = self._session
        return session is not None and session.opened.in_place

    # ---- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the data dir, check and open (creating) the environment, migrate a version-1
        one (``disk_format``), start the writer; idempotent. A data dir it refuses (in use, not
        LMDB, truncated, foreign, unreadable records, a newer format) raises ``ConfigError``
        whose one line says what is wrong and what to do."""
        with self._state_lock:
            if self._session is not None:
                return
            self._lock.acquire()
            try:
                check_data_file(self._path / DATA_FILE_NAME)
                opened = self._open_env()
                try:
                    self._session = self._start_session(opened)
                except BaseException as exc:
                    opened.close(clean=False)
                    if isinstance(exc, lmdb.Error):
                        raise ConfigError(f"the disk tier at {self._path} cannot be read "
                                          f"({exc}); move the data dir aside to start with an "
                                          f"empty disk tier, or restore it from a backup"
                                          ) from exc
                    raise
            except BaseException:
                self._lock.release()
                raise
        log.log(logging.INFO if self._config.disk.fsync and not opened.in_place else logging.DEBUG,
                "disk tier %s: %s", self._path, opened.how)

    def _start_session(self, opened: OpenedEnvironment) -> _Session:
        """Check the environment's databases and records, start the writer, settle the format."""
        env = opened.env
        check_databases(env, TIERD_DBS, self._path)
        pages_db = env.open_db(PAGES_DB)
        meta_db = env.open_db(META_DB)
        parents = ParentRecords(env.open_db(PARENTS_DB))  # created empty in an older data dir
        try:
            namespaces = read_namespaces(env, meta_db, self._path)
            fingerprints = {ns.ns_id: check_fingerprint(ns.fingerprint) for ns in namespaces}
        except (FailedPrecondition, InvalidArgument) as exc:
            raise ConfigError(str(exc)) from exc
        forms = ColdForms.of_specs({ns.ns_id: ns.spec for ns in namespaces})
        stored = measure(env, pages_db, forms)
        stored_pages, stored_bytes = stored.pages, stored.stored_bytes
        state = format_state(env, meta_db, bool(namespaces or stored_pages), self._path)
        initial = WriterStats(stored_pages=stored_pages, stored_bytes=stored_bytes,
                              bytes_written=self._writer_totals.bytes_written,
                              map_full_events=self._writer_totals.map_full_events,
                              commits=self._writer_totals.commits,
                              failed_pages=self._writer_totals.failed_pages,
                              failed_commits=self._writer_totals.failed_commits,
                              quantized_pages=stored.quantized_pages,
                              quantized_bytes_saved=stored.quantized_bytes_saved)
        writer = DiskWriter(env, pages_db, meta_db, self._config.disk, initial,
                            self._notify_map_full, self._closed_message, forms, parents)
        writer.start()
        try:
            if state is FormatState.NEW:
                record_format(writer, self._path)
            elif state is FormatState.V1:
                result = migrate_v1(env, pages_db, writer, NamespaceFingerprints(fingerprints),
                                    self._path)
                self._reads.add_failure(result.dropped_pages)
                log.warning("disk tier %s: migrated to page format %d: %d pages re-checksummed, "
                            "%d dropped (they failed their check)", self._path, FORMAT_VERSION,
                            result.migrated_pages, result.dropped_pages)
        except BaseException:
            writer.close()
            raise
        return _Session(env=env, pages_db=pages_db, meta_db=meta_db, writer=writer,
                        gate=ReaderGate(self._closed_message),
                        fingerprints=NamespaceFingerprints(fingerprints), forms=forms,
                        pid=os.getpid(), parents=parents,
                        map_size_bytes=env.info()["map_size"], opened=opened)

    def _open_env(self) -> OpenedEnvironment:
        disk = self._config.disk
        try:
            self._path.mkdir(parents=True, exist_ok=True)
            return open_environment(self._path, self._map_size_bytes, disk.fsync,
                                    readahead=True, max_dbs=MAX_DBS, sync=disk.fsync,
                                    metasync=disk.fsync, lock=True,
                                    max_readers=disk.reader_threads + EXTRA_READER_SLOTS)
        except (OSError, lmdb.Error) as exc:
            raise ConfigError(f"cannot open the disk tier's LMDB environment at {self._path}: "
                              f"{exc}; check that data_dir exists and is writable by tierd"
                              ) from exc

    def close(self) -> None:
        """Commit everything queued, stop the writer, wait for reads, close the env, release the
        data dir's lock; idempotent."""
        with self._state_lock:
            session = self._session
            if session is None:
                return
            if session.writer.on_writer_thread():
                raise FailedPrecondition("DiskTier.close() was called from an on_done callback "
                                         "(the writer thread); call it from another thread")
            session.writer.close()
            session.gate.close()
            stats = session.writer.stats
            self._writer_totals = WriterStats(bytes_written=stats.bytes_written,
                                              map_full_events=stats.map_full_events,
                                              commits=stats.commits,
                                              failed_pages=stats.failed_pages,
                                              failed_commits=stats.failed_commits)
            self._session = None
            try:
                session.env.sync(True)  # durable on a clean close even when fsync is off
            finally:
                session.opened.close(clean=True)
                self._lock.release()

    def _require(self) -> _Session:
        session = self._session
        if session is None:
            raise Unavailable(self._closed_message)
        if session.pid != os.getpid():
            raise FailedPrecondition(f"the disk tier at {self._path} was opened by process "
                                     f"{session.pid} and cannot be used after fork (this is "
                                     f"process {os.getpid()}): open a new DiskTier here")
        return session

    def _notify_map_full(self) -> None:
        hook = self.on_map_full
        if hook is not None:
            hook()

    # ---- namespaces ------------------------------------------------------------------------

    def load_namespaces(self) -> list[Namespace]:
        """Every persisted namespace, by ascending ``ns_id``."""
        session = self._require()
        with session.gate.reading():
            return read_namespaces(session.env, session.meta_db, self._path)

    def save_namespace(self, ns: Namespace) -> None:
        """Persist ``ns``; durable when this returns (committed by the writer). Its pages can
        be written from then on: their checksums cover its fingerprint."""
        session = self._require()
        fingerprint = check_fingerprint(ns.fingerprint)
        if session.writer.on_writer_thread():
            raise FailedPrecondition("save_namespace() cannot be called from an on_done callback")
        done = threading.Event()
        outcome: list[bool] = []

        def finish(stored: bool) -> None:
            outcome.append(stored)
            done.set()

        session.writer.submit(PutMeta(namespace_key(ns.ns_id), encode_namespace(ns), finish),
                              block=False)
        done.wait()
        if not outcome[0]:
            raise ResourceExhausted(f"the disk tier at {self._path} could not commit namespace "
                                    f"{ns.ns_id} (map full or I/O error, see the log): free disk "
                                    f"pages or raise disk.capacity_bytes")
        session.forms.add(ns.ns_id, ns.spec)
        session.fingerprints.add(ns.ns_id, fingerprint)

    # ---- writes ----------------------------------------------------------------------------

    def submit_write(self, ns_id: int, key: bytes, payload: memoryview, seq: int,
                     on_done: Callable[[bool], None]) -> None:
        """Queue one page; ``on_done(True)`` fires on the writer thread after its commit.

        The caller keeps ``payload`` unchanged until ``on_done`` fires. Blocks while
        ``disk.writer_queue_pages`` pages are queued; ``Unavailable`` once closed.
        """
        if not self.submit_writes([PageWrite(ns_id, key, payload, seq, on_done)]):
            raise Unavailable("the disk tier closed before the page could be queued")

    def submit_writes(self, writes: Sequence[PageWrite]) -> int:
        """Queue several pages as one run, so they share group commits (same contract as
        ``submit_write`` for each). Checksums are computed here, on the caller's thread, before
        anything is queued: the writer then commits the whole run without waiting for hashes.

        Returns how many of ``writes`` (a prefix) were queued: fewer only if the tier closed
        meanwhile; the caller owns the rest (their ``on_done`` will never fire). A page of a
        namespace without a record (``save_namespace``) is refused: its checksum needs the
        namespace's fingerprint."""
        session = self._require()
        ops: list[PutPage] = []
        for write in writes:
            view = byte_view(write.payload, what="payload")
            seq = write.seq
            if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
                raise InvalidArgument(f"seq must be an integer in 0..{MAX_SEQ}, got {seq!r}")
            dkey = disk_key(write.ns_id, write.key)
            fingerprint = session.fingerprints.get(write.ns_id)
            if fingerprint is None:
                raise FailedPrecondition(f"namespace {write.ns_id} has no record in the disk "
                                         f"tier at {self._path}: save_namespace() it first")
            form = session.forms.get(write.ns_id)
            if form is not None:
                put = quantized_put(form, dkey, view, write.seq, write.on_done, fingerprint)
                ops.append(replace(put, parent=write.parent))
                continue
            header = encode_header(write.ns_id, dkey[NS_ID_BYTES:], fingerprint, view.nbytes,
                                   seq, view)
            ops.append(PutPage(dkey, write.ns_id, view, seq, write.on_done, header,
                               parent=write.parent))
        return session.writer.submit_pages(ops)

    def delete(self, ns_id: int, keys: Sequence[bytes],
               on_done: Callable[[bool], None] | None = None) -> None:
        """Queue removal of ``keys`` (absent ones are ignored); never blocks on backpressure."""
        dkeys = tuple(disk_key(ns_id, key) for key in check_keys(keys))
        self._require().writer.submit(DeletePages(dkeys, on_done), block=False)

    def barrier(self, timeout_s: float | None) -> bool:
        """``True`` once everything submitted before the call was committed (or failed)."""
        session = self._session
        if session is None:
            return True  # close() drained the queue
        if session.writer.on_writer_thread():
            raise FailedPrecondition("barrier() cannot be called from an on_done callback")
        done = threading.Event()
        if not session.writer.try_submit(Barrier(lambda _stored: done.set())):
            session.writer.close()  # closing meanwhile: wait until the queue is drained
            return True
        return done.wait(timeout_s)

    # ---- reads -----------------------------------------------------------------------------

    def read_into(self, ns_id: int, key: bytes, dst: memoryview) -> ReadStatus:
        """Copy the payload of one page into ``dst`` (exactly its size), checksum verified
        (over its key and namespace fingerprint too: a page of a namespace without a record
        cannot verify and is dropped). A page stored in a cold format is checked as stored,
        then decoded into ``dst`` in the namespace's dtype."""
        dkey = disk_key(ns_id, key)
        out = byte_view(dst, what="dst", writable=True)
        session = self._require()
        fingerprint = session.fingerprints.get(ns_id)
        form = session.forms.get(ns_id)
        if form is not None and form.page_bytes != out.nbytes:
            raise InvalidArgument(f"dst holds {out.nbytes} bytes but pages of namespace {ns_id} "
                                  f"are {form.page_bytes} bytes: pass a buffer of exactly the "
                                  f"page size")
        encoding = EXACT_ENCODING if form is None else form.encoding
        with session.gate.reading(), session.env.begin(db=session.pages_db, buffers=True) as txn:
            value = txn.get(dkey)
            if value is None:
                return ReadStatus.MISSING
            header = decode_header(value)
            if (form is None and header is not None and header.encoding == encoding
                    and header.payload_bytes != out.nbytes
                    and len(value) == header.header_bytes + header.payload_bytes):
                raise InvalidArgument(f"dst holds {out.nbytes} bytes but page {key.hex()} of "
                                      f"namespace {ns_id} holds {header.payload_bytes} bytes: "
                                      f"pass a buffer of exactly the page size")
            expected_bytes = out.nbytes if form is None else form.payload_bytes
            if header is None or fingerprint is None or verify(
                    value, ns_id, dkey[NS_ID_BYTES:], fingerprint, expected_bytes, encoding) is None:
                seen = (bytes(value[:HEADER_BYTES]), len(value))
            else:
                copy_out(value[header.header_bytes:], out, form)
                seen = None
        if seen is not None:
            self._drop_corrupt(session, dkey, *seen)
            return ReadStatus.CORRUPT
        self._reads.add_read(expected_bytes)
        return ReadStatus.OK

    def contains(self, ns_id: int, key: bytes) -> bool:
        """Whether a page is stored (its checksum is only checked when it is read)."""
        dkey = disk_key(ns_id, key)
        session = self._require()
        with session.gate.reading(), session.env.begin(db=session.pages_db, buffers=True) as txn:
            return txn.get(dkey) is not None

    def scan(self) -> Iterator[DiskEntry]:
        """Every stored page, by disk key, from headers only (warm restart).

        Entries whose header is unreadable or disagrees with their key or size are dropped and
        counted as checksum failures. Each chunk of entries is read in its own short transaction.
        """
        after: bytes | None = None
        while True:
            session = self._require()
            with session.gate.reading():
                entries, bad, last_key, num_seen = scan_chunk(session.env, session.pages_db,
                                                              after, SCAN_CHUNK_ENTRIES,
                                                              session.forms, session.parents)
            for dkey, seen_header, seen_bytes in bad:
                self._drop_corrupt(session, dkey, seen_header, seen_bytes)
            yield from entries
            if num_seen < SCAN_CHUNK_ENTRIES:
                return
            after = last_key

    def _drop_corrupt(self, session: _Session, dkey: bytes, seen_header: bytes,
                      seen_bytes: int) -> None:
        self._reads.add_failure()
        try:
            ns_id, key = split_disk_key(dkey)
            name = f"page {key.hex()} of namespace {ns_id}"
        except InvalidArgument:
            name = f"malformed disk key {dkey.hex()}"
        log.error("disk tier %s: %s failed its header/checksum check (%d bytes stored); dropping "
                  "it", self._path, name, seen_bytes)
        if not session.writer.try_submit(DropIfUnchanged(dkey, seen_header, seen_bytes)):
            log.warning("disk tier %s: closing, %s stays until it is read again", self._path, name)

    # ---- stats -----------------------------------------------------------------------------

    def stats(self) -> DiskStats:
        session = self._session
        writer = session.writer.stats if session is not None else self._writer_totals
        return DiskStats(stored_pages=writer.stored_pages, stored_bytes=writer.stored_bytes,
                         bytes_written=writer.bytes_written, bytes_read=self._reads.bytes_read,
                         checksum_failures=self._reads.checksum_failures,
                         map_full_events=writer.map_full_events,
                         queue_depth=session.writer.queue_depth if session is not None else 0,
                         commits=writer.commits, write_failures=writer.failed_pages,
                         quantized_pages=writer.quantized_pages,
                         quantized_bytes_saved=max(writer.quantized_bytes_saved, 0),
                         failed_commits=writer.failed_commits, write_error=writer.write_error,
                         map_size_bytes=(session.map_size_bytes if session is not None
                                         else self._map_size_bytes))

