"""The byte path's framing: pages as one byte stream cut into chunks under the message limit.

A chunk boundary may fall anywhere, inside a page too; only the concatenation has meaning
(``num_pages * page_bytes`` bytes, pages in key order).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from tierd.errors import InvalidArgument
from tierd.keys import KEY_BYTES, PageKey, check_keys


def iter_chunks(pages: Sequence[bytes | memoryview], chunk_bytes: int) -> Iterator[bytes]:
    """The pages' bytes, concatenated, in pieces of ``chunk_bytes`` (the last may be shorter)."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    parts: list[memoryview] = []
    filled = 0
    for page in pages:
        view = memoryview(page).cast("B")
        offset = 0
        while offset < len(view):
            take = min(chunk_bytes - filled, len(view) - offset)
            parts.append(view[offset:offset + take])
            filled += take
            offset += take
            if filled == chunk_bytes:
                yield b"".join(parts)
                parts, filled = [], 0
    if parts:
        yield b"".join(parts)


class PutAssembler:
    """Collects a PutPages stream: keys and data bytes, with its limits checked as they arrive.

    ``finish`` returns the keys and one zero-copy view per page; nothing reaches the store before.
    """

    def __init__(self, page_bytes: int, max_keys: int, max_bytes: int) -> None:
        self.page_bytes = page_bytes
        self._max_keys = max_keys
        self._max_bytes = max_bytes
        self._keys: list[bytes] = []
        self._parts: list[bytes] = []
        self._num_bytes = 0

    def add(self, keys: Sequence[bytes], data: bytes) -> None:
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
        if data:
            self._parts.append(data)
            self._num_bytes += len(data)

    def finish(self) -> tuple[list[PageKey], list[memoryview]]:
        """Keys and pages; ``InvalidArgument`` unless the data is exactly one page per key."""
        expected = len(self._keys) * self.page_bytes
        if self._num_bytes != expected:
            raise InvalidArgument(f"PutPages carried {self._num_bytes} bytes for {len(self._keys)} "
                                  f"keys of {self.page_bytes}-byte pages; expected {expected} bytes")
        data = memoryview(b"".join(self._parts))
        self._parts = []
        pages = [data[i * self.page_bytes:(i + 1) * self.page_bytes] for i in range(len(self._keys))]
        return check_keys(self._keys), pages
