"""The page index: a region's key -> slot table in shared memory, for reads without an RPC.

A shared value module: the daemon writes it (``PageIndexWriter``, one per host region, called
under the manager's lock whenever a page is published in or removed from the region), local
clients map it read-only and look keys up (``PageIndexReader``). Layout, little-endian::

    header   64 bytes: MAGIC | version u32 | num_buckets u32 | num_slots u32 | state u32 |
             page_bytes u64 | ns_id u64 | zeros
    buckets  num_buckets x 32 bytes: seq u64 | key 16 bytes | slot u32 | used u32

Open addressing with linear probing from ``home(key)`` (the key's first 8 bytes; keys are
already hashes) and backward-shift deletion, so no tombstones ever fill the table; twice as many
buckets as slots keep probes short. Each bucket is a seqlock: the writer makes ``seq`` odd,
writes the fields, makes it even again, so every change to a bucket moves its ``seq``.

**The read rule.** A reader finds the key's bucket with an even ``seq`` that did not move while
it read the fields, copies the slot, and accepts the copy only if the bucket's ``seq`` is still
the same afterwards. The daemon unpublishes a page (which changes its bucket) before it frees the
slot, and only a freed slot is ever written again, so an accepted copy is the page that was
committed under the key. A bucket changed by anything else (a neighbour's deletion shifting
entries) only costs a retry through the lease path: a miss here is never wrong, only slower.
This relies on loads not being reordered with other loads (x86-64); other machines take leases.
"""

from __future__ import annotations

import platform
import struct
from dataclasses import dataclass

from tierd.keys import KEY_BYTES

MAGIC = b"TPX1"
VERSION = 1
HEADER_BYTES = 64
BUCKET_BYTES = 32
_HEADER = struct.Struct("<4sIIIIQQ")
_FIELDS = struct.Struct(f"<{KEY_BYTES}sII")   # the bucket after its seq word
_SEQ_BYTES = 8
_WORDS_PER_BUCKET = BUCKET_BYTES // _SEQ_BYTES
_HOME = struct.Struct("<Q")

STATE_OPEN = 1      # the daemon keeps this index current
STATE_CLOSED = 2    # the daemon closed the region: nothing here may be trusted any more
# A reader gives up (and takes the lease path) after this many buckets: a probe that long means
# the writer is shifting entries around this key right now.
MAX_PROBES = 64
# Load factor 1/2 at most: every slot holds at most one published page.
BUCKETS_PER_SLOT = 2
# Machines whose loads are not reordered with other loads (total store order).
ORDERED_LOADS_MACHINES = frozenset({"x86_64", "amd64", "i686", "i386"})


def loads_are_ordered() -> bool:
    """Whether this machine keeps loads in order, which the read rule needs."""
    return platform.machine().lower() in ORDERED_LOADS_MACHINES


def num_buckets_for(num_slots: int) -> int:
    """The power of two of at least ``BUCKETS_PER_SLOT * num_slots`` buckets."""
    wanted = max(2, BUCKETS_PER_SLOT * num_slots)
    return 1 << (wanted - 1).bit_length()


def index_bytes_for(num_slots: int) -> int:
    """Size of the index of a region of ``num_slots`` slots."""
    return HEADER_BYTES + num_buckets_for(num_slots) * BUCKET_BYTES


@dataclass(frozen=True)
class IndexHeader:
    num_buckets: int
    num_slots: int
    state: int
    page_bytes: int
    ns_id: int


def read_header(buffer: memoryview) -> IndexHeader:
    """The header; ``ValueError`` naming what is wrong for anything but a version-1 index."""
    if len(buffer) < HEADER_BYTES:
        raise ValueError(f"a page index is at least {HEADER_BYTES} bytes, got {len(buffer)}")
    magic, version, num_buckets, num_slots, state, page_bytes, ns_id = _HEADER.unpack_from(buffer)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not a version-{VERSION} page index (magic {magic!r}, version {version})")
    if num_buckets != num_buckets_for(num_slots) or len(buffer) < index_bytes_for(num_slots):
        raise ValueError(f"page index of {len(buffer)} bytes with {num_buckets} buckets does not "
                         f"fit {num_slots} slots")
    return IndexHeader(num_buckets, num_slots, state, page_bytes, ns_id)


def _home(key: bytes, mask: int) -> int:
    home: int = _HOME.unpack_from(key)[0]
    return home & mask


@dataclass(frozen=True)
class Found:
    """Where a key's page is: ``slot``, and the bucket ``seq`` to check after copying it."""

    slot: int
    bucket: int
    seq: int


class PageIndexReader:
    """A client's read-only view of one region's index. Lock-free; the daemon owns the memory."""

    def __init__(self, buffer: memoryview) -> None:
        header = read_header(buffer)
        self._buffer = buffer
        self._words = buffer[:index_bytes_for(header.num_slots)].cast("Q")
        self._mask = header.num_buckets - 1
        self.num_slots = header.num_slots
        self.page_bytes = header.page_bytes
        self.ns_id = header.ns_id  # whose pages these are: a handle of another namespace is refused

    @property
    def is_open(self) -> bool:
        """False once the daemon closed the region (it stopped): trust nothing in it then."""
        state: int = _HEADER.unpack_from(self._buffer)[4]
        return state == STATE_OPEN

    def find(self, key: bytes) -> Found | None:
        """The slot holding ``key``'s page, or ``None`` (not there, or being changed: take a lease)."""
        words, buffer, mask = self._words, self._buffer, self._mask
        bucket = _home(key, mask)
        for _ in range(MAX_PROBES):
            word = (HEADER_BYTES // _SEQ_BYTES) + bucket * _WORDS_PER_BUCKET
            seq = words[word]
            if seq & 1:
                return None
            found_key, slot, used = _FIELDS.unpack_from(buffer, word * _SEQ_BYTES + _SEQ_BYTES)
            if words[word] != seq or not used:
                return None
            if found_key == key:
                return Found(slot, bucket, seq) if slot < self.num_slots else None
            bucket = (bucket + 1) & mask
        return None

    def unchanged(self, found: Found) -> bool:
        """Whether ``found``'s bucket is as it was: then the slot still held the page throughout."""
        return bool(self._words[(HEADER_BYTES // _SEQ_BYTES) + found.bucket * _WORDS_PER_BUCKET]
                    == found.seq)

    def release(self) -> None:
        """Drop the views of the mapping (so its owner can unmap it)."""
        self._words.release()
        self._buffer.release()


class PageIndexWriter:
    """The daemon's side of one region's index, over a writable buffer of ``index_bytes_for``.

    Not thread-safe: called under the manager's lock (as its residency's page directory). Keeps
    a private map of which bucket holds which key, so it never reads the shared memory back.
    """

    def __init__(self, buffer: memoryview, num_slots: int, page_bytes: int, ns_id: int) -> None:
        if len(buffer) < index_bytes_for(num_slots):
            raise ValueError(f"a page index of {num_slots} slots needs {index_bytes_for(num_slots)} "
                             f"bytes, got {len(buffer)}")
        self._buffer = buffer
        self._words = buffer[:index_bytes_for(num_slots)].cast("Q")
        self._num_buckets = num_buckets_for(num_slots)
        self._mask = self._num_buckets - 1
        self._num_slots = num_slots
        self._keys: list[bytes | None] = [None] * self._num_buckets
        self._slots: list[int] = [0] * self._num_buckets
        self._where: dict[bytes, int] = {}
        self._closed = False
        self._ns_id = ns_id
        _HEADER.pack_into(buffer, 0, MAGIC, VERSION, self._num_buckets, num_slots, STATE_OPEN,
                          page_bytes, ns_id)

    def __len__(self) -> int:
        return len(self._where)

    def published(self, key: bytes, slot: int) -> None:
        """``key``'s page is now readable in ``slot``."""
        if self._closed:
            return
        bucket = self._where.get(key)
        if bucket is None:
            bucket = _home(key, self._mask)
            while self._keys[bucket] is not None:
                bucket = (bucket + 1) & self._mask
        self._write(bucket, key, slot)

    def unpublished(self, key: bytes) -> None:
        """``key``'s page leaves its slot (call before the slot can be written again)."""
        bucket = self._where.pop(key, None)
        if bucket is None or self._closed:
            return
        self._clear(bucket)
        self._shift_back(bucket)

    def close(self) -> None:
        """Tell readers the region is closing and release the buffer given (so its owner can
        unmap it); later calls do nothing. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _HEADER.pack_into(self._buffer, 0, MAGIC, VERSION, self._num_buckets, self._num_slots,
                          STATE_CLOSED, 0, self._ns_id)
        self._words.release()
        self._buffer.release()

    def _shift_back(self, hole: int) -> None:
        """Backward-shift deletion: pull later entries of the probe run into the hole."""
        mask = self._mask
        bucket = hole
        while True:
            bucket = (bucket + 1) & mask
            key = self._keys[bucket]
            if key is None:
                return
            home = _home(key, mask)
            # The entry may fill the hole unless its home lies cyclically in (hole, bucket].
            if (bucket - home) & mask >= (bucket - hole) & mask:
                self._write(hole, key, self._slots[bucket])   # the new place first: a reader rarely misses it
                self._clear(bucket)
                hole = bucket

    def _offset(self, bucket: int) -> int:
        return HEADER_BYTES + bucket * BUCKET_BYTES

    def _write(self, bucket: int, key: bytes, slot: int) -> None:
        word = (HEADER_BYTES // _SEQ_BYTES) + bucket * _WORDS_PER_BUCKET
        seq = self._words[word]
        self._words[word] = seq + 1
        _FIELDS.pack_into(self._buffer, self._offset(bucket) + _SEQ_BYTES, key, slot, 1)
        self._words[word] = seq + 2
        self._keys[bucket] = key
        self._slots[bucket] = slot
        self._where[key] = bucket

    def _clear(self, bucket: int) -> None:
        word = (HEADER_BYTES // _SEQ_BYTES) + bucket * _WORDS_PER_BUCKET
        seq = self._words[word]
        self._words[word] = seq + 1
        _FIELDS.pack_into(self._buffer, self._offset(bucket) + _SEQ_BYTES, bytes(KEY_BYTES), 0, 0)
        self._words[word] = seq + 2
        self._keys[bucket] = None
