"""The byte path: splitting puts into PutPages calls and messages, reassembling GetPages streams.

A put of ``n`` pages becomes calls of at most ``max_keys_per_request`` pages and
``max_put_bytes`` bytes; each call is a header message with its keys, then data messages of at
most ``chunk_bytes`` (a page may straddle two messages, as the wire contract allows).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd_client.convert import tier_to_wire
from tierd_client.errors import InvalidArgumentError, TierdRpcError
from tierd_client.options import MESSAGE_OVERHEAD_BYTES
from tierd_client.types import ServerLimits


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


async def put_messages(ns_id: int, tier: Tier, keys: Sequence[bytes], pages: Sequence[memoryview],
                       chunk_bytes: int, wait_durable: bool,
                       durable_timeout_s: float | None) -> AsyncIterator[pb.PutPagesRequest]:
    """The messages of one PutPages call: header + keys, then data in ``chunk_bytes`` pieces."""
    header = pb.PutPagesHeader(ns_id=ns_id, tier=tier_to_wire(tier), wait_durable=wait_durable)
    if durable_timeout_s is not None:
        header.durable_timeout_s = durable_timeout_s
    yield pb.PutPagesRequest(header=header, keys=list(keys))
    pending: list[memoryview] = []
    pending_bytes = 0
    for page in pages:
        offset = 0
        while offset < page.nbytes:
            take = min(page.nbytes - offset, chunk_bytes - pending_bytes)
            pending.append(page[offset:offset + take])
            pending_bytes += take
            offset += take
            if pending_bytes == chunk_bytes:
                yield pb.PutPagesRequest(data=b"".join(pending))
                pending, pending_bytes = [], 0
    if pending:
        yield pb.PutPagesRequest(data=b"".join(pending))


class PageAssembler:
    """Collects a GetPages stream into whole pages (bytes), checking the daemon's framing."""

    def __init__(self, page_bytes: int, max_pages: int) -> None:
        self._page_bytes = page_bytes
        self._max_pages = max_pages
        self._buffer: bytearray | None = None
        self._filled = 0

    def add(self, msg: pb.GetPagesResponse) -> None:
        if self._buffer is None:
            if msg.page_bytes not in (0, self._page_bytes) and msg.num_pages:
                raise TierdRpcError(f"the daemon sent pages of {msg.page_bytes} bytes for a "
                                    f"namespace of {self._page_bytes}-byte pages")
            if msg.num_pages > self._max_pages:
                raise TierdRpcError(f"the daemon announced {msg.num_pages} pages for "
                                    f"{self._max_pages} keys")
            self._buffer = bytearray(msg.num_pages * self._page_bytes)
        data = msg.data
        end = self._filled + len(data)
        if end > len(self._buffer):
            raise TierdRpcError(f"the daemon sent {end} bytes for {len(self._buffer)} announced")
        self._buffer[self._filled:end] = data
        self._filled = end

    def pages(self) -> list[bytes]:
        """The pages, in key order; raises if the stream ended early."""
        if self._buffer is None:
            return []
        if self._filled != len(self._buffer):
            raise TierdRpcError(f"the GetPages stream ended after {self._filled} of "
                                f"{len(self._buffer)} bytes")
        size = self._page_bytes
        view = memoryview(self._buffer)
        return [bytes(view[i:i + size]) for i in range(0, len(self._buffer), size)]
