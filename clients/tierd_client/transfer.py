"""The byte path: splitting puts into PutPages calls and messages, reassembling GetPages streams.

A put of ``n`` pages becomes calls of at most ``max_keys_per_request`` pages and
``max_put_bytes`` bytes. Each call is a header message with its keys, then the pages: whole ones,
one per message when they are at least ``ONE_PAGE_PER_MESSAGE_BYTES`` (a page given as ``bytes``
then goes out as it is, with no copy), smaller ones packed up to ``chunk_bytes``; a page larger
than ``chunk_bytes`` is cut. The first page rides in the header message when the keys are few.

A GetPages stream may cut pages anywhere (the wire contract allows it). Its messages arrive
decoded by ``wire_pages`` (their data a view of the bytes grpc received, where protobuf would
have copied it twice), and each page is copied once, from there into the ``bytes`` ``get``
returns: a message's data, a slice of it, or the parts of a page cut across messages joined. No
stream is copied into one reassembly buffer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd_client.convert import tier_to_wire
from tierd_client.errors import InvalidArgumentError, TierdRpcError
from tierd_client.options import MESSAGE_OVERHEAD_BYTES
from tierd_client.types import ServerLimits
from tierd_client.wire_pages import MalformedPagesError, PagesMessage

# The daemon's own threshold (tierd.server.bytepath): pages this big travel one per message.
ONE_PAGE_PER_MESSAGE_BYTES = 64 << 10
# Bytes a key may take in a message (tag, length, 16 bytes; rounded up) and the most key bytes
# the header message carries next to a page: within the room every message keeps for framing.
KEY_WIRE_BYTES = 20
MAX_KEY_BYTES_WITH_DATA = MESSAGE_OVERHEAD_BYTES // 2


@dataclass(frozen=True)
class TransferPlan:
    """Per-call and per-message limits the client uses (the daemon's, capped by the client's)."""

    chunk_bytes: int
    max_put_bytes: int
    max_get_bytes: int
    max_keys: int

    @classmethod
    def from_limits(cls, limits: ServerLimits, client_max_message_bytes: int,
                    page_bytes: int) -> TransferPlan:
        room = client_max_message_bytes - MESSAGE_OVERHEAD_BYTES
        chunk_bytes = min(limits.chunk_bytes or room, room)
        max_put_bytes = limits.max_put_bytes or page_bytes * max(1, limits.max_keys_per_request)
        max_get_bytes = limits.max_get_bytes or max_put_bytes
        for name, limit in (("max_put_size", max_put_bytes), ("max_get_size", max_get_bytes)):
            if limit < page_bytes:
                raise InvalidArgumentError(
                    f"pages of {page_bytes} bytes exceed the daemon's server.{name} ({limit} "
                    "bytes); raise it in the daemon's config or use the zero-copy path "
                    "(allocate/commit, acquire)")
        # 0 means the daemon sets no key limit; the message limit still bounds the header.
        max_keys = limits.max_keys_per_request or max(1, room // 32)
        return cls(chunk_bytes=max(1, chunk_bytes), max_put_bytes=max_put_bytes,
                   max_get_bytes=max_get_bytes, max_keys=max_keys)

    def put_batches(self, num_pages: int, page_bytes: int) -> list[range]:
        """Consecutive page ranges, one per PutPages call."""
        return _batches(num_pages, min(self.max_keys, self.max_put_bytes // page_bytes))

    def get_batches(self, num_pages: int, page_bytes: int) -> list[range]:
        """Consecutive key ranges, one per GetPages call."""
        return _batches(num_pages, min(self.max_keys, self.max_get_bytes // page_bytes))

    def key_batches(self, num_keys: int) -> list[range]:
        """Consecutive key ranges, one per Lookup / GetPages / Delete call."""
        return _batches(num_keys, self.max_keys) or [range(0)]


def _batches(count: int, per_batch: int) -> list[range]:
    per_batch = max(1, per_batch)
    return [range(start, min(count, start + per_batch)) for start in range(0, count, per_batch)]


def _page_bytes_of(view: memoryview) -> bytes:
    """The page as ``bytes``: the caller's own object when the view covers all of a ``bytes``."""
    obj = view.obj
    if isinstance(obj, bytes) and view.nbytes == len(obj) and view.contiguous:
        return obj
    return view.tobytes()


def _data_messages(pages: Sequence[memoryview], chunk_bytes: int) -> Iterator[bytes]:
    """The ``data`` of each message after the header: whole pages, as ``put_messages`` says."""
    if not pages:
        return
    size = pages[0].nbytes
    if size > chunk_bytes:
        for page in pages:
            for start in range(0, size, chunk_bytes):
                yield page[start:start + chunk_bytes].tobytes()
    elif size >= ONE_PAGE_PER_MESSAGE_BYTES:
        for page in pages:
            yield _page_bytes_of(page)
    else:
        per = max(1, chunk_bytes // max(1, size))
        for start in range(0, len(pages), per):
            yield b"".join(pages[start:start + per])


def iter_put_messages(ns_id: int, tier: Tier, keys: Sequence[bytes], pages: Sequence[memoryview],
                      chunk_bytes: int, wait_durable: bool, durable_timeout_s: float | None,
                      parent: bytes | None = None) -> Iterator[pb.PutPagesRequest]:
    """The messages of one PutPages call (pages of one size): the header with the keys (and the
    first data when the keys are few), then the rest of the data. ``parent``: the key before
    ``keys[0]``."""
    header = pb.PutPagesHeader(ns_id=ns_id, tier=tier_to_wire(tier), wait_durable=wait_durable)
    if durable_timeout_s is not None:
        header.durable_timeout_s = durable_timeout_s
    if parent is not None:
        header.parent_key = parent
    data = _data_messages(pages, chunk_bytes)
    first = next(data, b"") if len(keys) * KEY_WIRE_BYTES <= MAX_KEY_BYTES_WITH_DATA else b""
    yield pb.PutPagesRequest(header=header, keys=list(keys), data=first)
    for chunk in data:
        yield pb.PutPagesRequest(data=chunk)


async def put_messages(ns_id: int, tier: Tier, keys: Sequence[bytes], pages: Sequence[memoryview],
                       chunk_bytes: int, wait_durable: bool, durable_timeout_s: float | None,
                       parent: bytes | None = None) -> AsyncIterator[pb.PutPagesRequest]:
    """``iter_put_messages`` for the async stub."""
    for message in iter_put_messages(ns_id, tier, keys, pages, chunk_bytes, wait_durable,
                                     durable_timeout_s, parent):
        yield message


class PageAssembler:
    """Collects a GetPages stream (messages ``wire_pages`` decoded) into whole pages, checking
    the daemon's framing."""

    def __init__(self, page_bytes: int, max_pages: int) -> None:
        self._page_bytes = page_bytes
        self._max_pages = max_pages
        self._expected: int | None = None  # bytes announced by the first message
        self._received = 0
        self._pages: list[bytes] = []
        self._parts: list[memoryview] = []  # the start of a page cut across messages
        self._part_bytes = 0

    def add(self, msg: PagesMessage | MalformedPagesError) -> None:
        if isinstance(msg, MalformedPagesError):
            raise msg
        if self._expected is None:
            if msg.page_bytes not in (0, self._page_bytes) and msg.num_pages:
                raise TierdRpcError(f"the daemon sent pages of {msg.page_bytes} bytes for a "
                                    f"namespace of {self._page_bytes}-byte pages")
            if msg.num_pages > self._max_pages:
                raise TierdRpcError(f"the daemon announced {msg.num_pages} pages for "
                                    f"{self._max_pages} keys")
            self._expected = msg.num_pages * self._page_bytes
        end = self._received + msg.data.nbytes
        if end > self._expected:
            raise TierdRpcError(f"the daemon sent {end} bytes for {self._expected} announced")
        self._received = end
        self._take(msg.data)

    def _take(self, data: memoryview) -> None:
        size, pos = self._page_bytes, 0
        if self._parts:
            pos = min(size - self._part_bytes, data.nbytes)
            self._parts.append(data[:pos])
            self._part_bytes += pos
            if self._part_bytes == size:
                self._pages.append(b"".join(self._parts))
                self._parts, self._part_bytes = [], 0
        while data.nbytes - pos >= size:
            self._pages.append(data[pos:pos + size].tobytes())
            pos += size
        if pos < data.nbytes:
            self._parts.append(data[pos:])
            self._part_bytes += data.nbytes - pos

    def pages(self) -> list[bytes]:
        """The pages, in key order; raises if the stream ended early."""
        if self._expected is None:
            return []
        if self._received != self._expected:
            raise TierdRpcError(f"the GetPages stream ended after {self._received} of "
                                f"{self._expected} bytes")
        return self._pages
