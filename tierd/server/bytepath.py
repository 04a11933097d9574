"""The byte path's framing and wire codec: pages as GetPagesResponse / PutPagesRequest messages.

GetPages: pages travel whole, one per message when they are at least
``ONE_PAGE_PER_MESSAGE_BYTES`` (a client can then take a message's data as the page, with no
copy), smaller ones packed up to ``chunk_bytes``; only a page larger than ``chunk_bytes`` is cut.
Each message is serialized by hand (data first, then ``num_pages`` and ``page_bytes`` in the first
message) into a buffer the store copies the pages into, so a page is copied once out of its slot,
straight into the bytes gRPC sends, instead of into a bytearray, a chunk, a protobuf message and
its serialization.

PutPages: a chunk boundary may fall anywhere, inside a page too (the wire contract allows it).
``decode_put_request`` finds the data field without protobuf's two copies of it (parse, then
``.data``); a page that arrives within one message stays a view of the received bytes, and only
a page cut across messages is assembled.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

from tierd.errors import InvalidArgument
from tierd.keys import KEY_BYTES, PageKey, check_keys
from tierd.protowire import WireError, WireType, encode_tag, encode_varint, read_varint
from tierd.v1 import tierd_pb2 as pb

# Pages this big or bigger travel one per GetPages message: the per-message cost is small next
# to the page, and the client keeps each message's bytes as the page instead of copying it out.
ONE_PAGE_PER_MESSAGE_BYTES = 64 << 10
# A GetPages answer for fewer keys than this carries num_pages in its first data message: the
# varint of any count below 128 is one byte, so that message's size is known before the copy.
INLINE_HEADER_MAX_KEYS = 128
# decode_put_request looks this many top-level fields for the data field; a message with more
# (thousands of keys) is left to protobuf whole (its data is copied, the keys dominate anyway).
MAX_SCANNED_FIELDS = 64

_GET_FIELDS = pb.GetPagesResponse.DESCRIPTOR.fields_by_name
_PUT_DATA_FIELD: int = pb.PutPagesRequest.DESCRIPTOR.fields_by_name["data"].number


_DATA_TAG = encode_tag(_GET_FIELDS["data"].number, WireType.LEN)
_NUM_PAGES_TAG = encode_tag(_GET_FIELDS["num_pages"].number, WireType.VARINT)
_PAGE_BYTES_TAG = encode_tag(_GET_FIELDS["page_bytes"].number, WireType.VARINT)


def pages_per_message(page_bytes: int, chunk_bytes: int) -> int:
    """Whole pages per GetPages message; 0 when a page exceeds ``chunk_bytes`` (then it is cut)."""
    if page_bytes <= 0 or chunk_bytes <= 0:
        raise ValueError(f"page_bytes and chunk_bytes must be positive, got {page_bytes}, {chunk_bytes}")
    if page_bytes > chunk_bytes:
        return 0
    return 1 if page_bytes >= ONE_PAGE_PER_MESSAGE_BYTES else chunk_bytes // page_bytes


def encode_get_response(message: bytes | pb.GetPagesResponse) -> bytes:
    """The GetPages response serializer: messages framed here are bytes already."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def _counts(num_pages: int, page_bytes: int) -> bytes:
    """The first message's ``num_pages`` and ``page_bytes`` fields (``num_pages`` even when 0)."""
    return _NUM_PAGES_TAG + encode_varint(num_pages) + _PAGE_BYTES_TAG + encode_varint(page_bytes)


def _frame(data: memoryview, trailer: bytes = b"") -> bytes:
    """A serialized message of ``data`` (then ``trailer``'s fields): one copy of ``data``."""
    return b"".join((_DATA_TAG, encode_varint(len(data)), data, trailer))


def _release(view: memoryview) -> None:
    # A view the store's copy still holds keeps the buffer exported: getvalue() then copies
    # (correct, only slower), so a failed release is no error.
    with contextlib.suppress(BufferError):
        view.release()


class _Frame:
    """One message of ``count`` whole pages from page ``first`` on: a bytes object of its final
    size (a BytesIO's, which ``getvalue`` hands over without a copy) the store copies into."""

    def __init__(self, first: int, count: int, page_bytes: int, trailer_bytes: int) -> None:
        self.first = first
        self.count = count
        self._page_bytes = page_bytes
        self._trailer_bytes = trailer_bytes
        head = _DATA_TAG + encode_varint(count * page_bytes)
        self._data_at = len(head)
        self._buffer = io.BytesIO()
        self._buffer.seek(len(head) + count * page_bytes + trailer_bytes - 1)
        self._buffer.write(b"\0")
        self._view = self._buffer.getbuffer()
        self._view[:len(head)] = head

    def page(self, index: int) -> memoryview:
        start = self._data_at + index * self._page_bytes
        return self._view[start:start + self._page_bytes]

    def finish(self, filled: int, trailer: bytes) -> bytes:
        """The message of its first ``filled`` pages (the others did not arrive), then
        ``trailer``'s fields."""
        end = self._data_at + filled * self._page_bytes
        if filled < self.count:  # the prefix ends inside this message (small pages): copy it
            data = self._view[self._data_at:end]
            message = _frame(data, trailer)
            _release(data)
            _release(self._view)
            return message
        if len(trailer) != self._trailer_bytes:
            raise ValueError(f"a GetPages message has room for {self._trailer_bytes} trailing "
                             f"bytes, not {len(trailer)}")
        self._view[end:end + len(trailer)] = trailer
        _release(self._view)
        return self._buffer.getvalue()


class GetFrames:
    """The messages of one GetPages answer, filled in place by the store's ``get_into``.

    ``outs`` holds one writable ``page_bytes`` view per key, inside the messages themselves;
    ``messages(n)`` is what to send once the first ``n`` pages were copied (the cached prefix).
    Call ``messages`` once.
    """

    def __init__(self, num_keys: int, page_bytes: int, chunk_bytes: int) -> None:
        self._page_bytes = page_bytes
        self._chunk_bytes = chunk_bytes
        self._inline_counts = num_keys < INLINE_HEADER_MAX_KEYS
        per = pages_per_message(page_bytes, chunk_bytes)
        self._frames: list[_Frame] = []
        self._pages: list[bytearray] = []  # pages larger than a chunk: cut after the copy
        if per:
            room = len(_counts(1, page_bytes)) if self._inline_counts else 0
            self._frames = [_Frame(first, min(per, num_keys - first), page_bytes,
                                   room if first == 0 else 0) for first in range(0, num_keys, per)]
            self.outs = [frame.page(i) for frame in self._frames for i in range(frame.count)]
        else:
            self._pages = [bytearray(page_bytes) for _ in range(num_keys)]
            self.outs = [memoryview(page) for page in self._pages]

    def messages(self, num_pages: int) -> list[bytes]:
        counts = _counts(num_pages, self._page_bytes)
        for view in self.outs:
            _release(view)
        self.outs = []
        if num_pages == 0:
            return [counts]
        # The first data message carries the counts, or a message of its own goes first.
        out: list[bytes] = [] if self._inline_counts else [counts]
        trailer = counts if self._inline_counts else b""
        for frame in self._frames:
            filled = min(frame.count, num_pages - frame.first)
            if filled > 0:
                out.append(frame.finish(filled, trailer if frame.first == 0 else b""))
        for page in self._pages[:num_pages]:
            view = memoryview(page)
            for start in range(0, len(view), self._chunk_bytes):
                out.append(_frame(view[start:start + self._chunk_bytes], trailer if not out else b""))
        self._frames, self._pages = [], []
        return out


@dataclass(frozen=True)
class PutMessage:
    """One PutPagesRequest: ``request`` for its header and keys, ``data`` a view of its bytes."""

    request: pb.PutPagesRequest
    data: memoryview


def _find_data(raw: bytes) -> tuple[int, int, int] | None:
    """``(field_start, data_start, data_end)`` of the single data field; ``None`` when there is
    none or protobuf should decide (a repeated data field, groups, too many fields)."""
    pos, found = 0, None
    for _ in range(MAX_SCANNED_FIELDS):
        if pos == len(raw):
            return found
        start = pos
        tag, pos = read_varint(raw, pos)
        wire_type = tag & 7
        if wire_type == WireType.VARINT:
            _, pos = read_varint(raw, pos)
        elif wire_type == WireType.I64:
            pos += 8
        elif wire_type == WireType.I32:
            pos += 4
        elif wire_type == WireType.LEN:
            length, data_at = read_varint(raw, pos)
            pos = data_at + length
            if tag >> 3 == _PUT_DATA_FIELD:
                if found is not None:
                    return None  # protobuf keeps the last one: leave it to protobuf
                found = (start, data_at, pos)
        else:
            return None
        if pos > len(raw):
            raise WireError("a field runs past the end of a PutPages message")
    return None if pos != len(raw) else found


def decode_put_request(raw: bytes) -> PutMessage:
    """The PutPages request deserializer: protobuf parses everything but the data field, which
    stays a view of ``raw`` (no copy)."""
    try:
        span = _find_data(raw)
    except WireError:
        span = None  # protobuf's parse below reports it
    if span is None:
        request = pb.PutPagesRequest.FromString(raw)
        return PutMessage(request, memoryview(request.data))
    start, data_at, end = span
    rest = raw[:start] + raw[end:] if start or end != len(raw) else b""
    return PutMessage(pb.PutPagesRequest.FromString(rest), memoryview(raw)[data_at:end])


class PutAssembler:
    """Collects a PutPages stream: keys and pages, with its limits checked as they arrive.

    A page within one message is a view of that message's data; only a page cut across messages
    is copied together. ``finish`` returns the keys and pages; nothing reaches the store before.
    """

    def __init__(self, page_bytes: int, max_keys: int, max_bytes: int) -> None:
        self.page_bytes = page_bytes
        self._max_keys = max_keys
        self._max_bytes = max_bytes
        self._keys: list[bytes] = []
        self._pages: list[memoryview] = []
        self._partial = bytearray()  # the start of a page cut across messages
        self._num_bytes = 0

    def add(self, keys: Sequence[bytes], data: bytes | memoryview) -> None:
        if len(self._keys) + len(keys) > self._max_keys:
            raise InvalidArgument(f"PutPages carries more than {self._max_keys} keys; split it into "
                                  "several calls")
        if self._num_bytes + len(data) > self._max_bytes:
            raise InvalidArgument(f"PutPages carries more than {self._max_bytes} bytes of pages "
                                  f"(limits.max_put_bytes); split it into several calls")
        bad = next((i for i, key in enumerate(keys) if len(key) != KEY_BYTES), None)
        if bad is not None:
            raise InvalidArgument(f"keys[{len(self._keys) + bad}]: a page key must be {KEY_BYTES} "
                                  f"bytes, got {len(keys[bad])} bytes")
        self._keys.extend(keys)
        self._num_bytes += len(data)
        view, size, pos = memoryview(data), self.page_bytes, 0
        if self._partial:
            pos = min(size - len(self._partial), len(view))
            self._partial += view[:pos]
            if len(self._partial) == size:
                self._pages.append(memoryview(self._partial))
                self._partial = bytearray()
        while len(view) - pos >= size:
            self._pages.append(view[pos:pos + size])
            pos += size
        if pos < len(view):
            self._partial = bytearray(view[pos:])

    def finish(self) -> tuple[list[PageKey], list[memoryview]]:
        """Keys and pages; ``InvalidArgument`` unless the data is exactly one page per key."""
        expected = len(self._keys) * self.page_bytes
        if self._num_bytes != expected:
            raise InvalidArgument(f"PutPages carried {self._num_bytes} bytes for {len(self._keys)} "
                                  f"keys of {self.page_bytes}-byte pages; expected {expected} bytes")
        pages, self._pages = self._pages, []
        return check_keys(self._keys), pages
