"""The storage-backend interface of the remote tier.

A backend moves bytes and never decides: it stores a page as a header (``page_value``, built and
verified by ``tierd.remote.tier``) plus a payload, under a **page id** of 32 bytes (the
namespace fingerprint, then the page key) that it maps to its own names. Every call is batched
and takes an absolute ``deadline_s`` (``time.monotonic()``). A page whose part of the store does
not answer by then (a node down, slow, refusing) is a miss (``False``/``None``) and counts in
``failures``; a call none of whose pages could be answered raises ``RemoteUnavailable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

PAGE_ID_BYTES = 32  # namespace fingerprint (16) + page key (16)


class RemoteUnavailable(Exception):
    """The remote store did not answer within the deadline (down, slow, unreachable, refused)."""


@dataclass(frozen=True)
class Fetched:
    """What a backend found under one page id.

    ``header``: the stored header bytes, ``b""`` when that part is missing (half-evicted or torn).
    ``payload_bytes``: length of the stored payload, ``-1`` when that part is missing. The view
    holds the payload when it equals the view's length; otherwise its bytes are undefined (a
    backend may have received part of a value into it).
    """

    header: bytes
    payload_bytes: int


class RemoteBackend(Protocol):
    """A distributed key-value store holding pages; thread-safe."""

    @property
    def name(self) -> str:
        """For logs and stats, e.g. ``redis-cluster``."""

    @property
    def failures(self) -> int:
        """Parts of calls that got no answer so far (their pages were misses), monotonic."""

    def exists(self, page_ids: Sequence[bytes], deadline_s: float) -> list[bool]:
        """For each page id, whether its header part is stored."""

    def get_into(self, page_ids: Sequence[bytes], views: Sequence[memoryview],
                 deadline_s: float) -> list[Fetched | None]:
        """Read each page's header and, into ``views[i]`` (writable, the page's size), its payload;
        ``None`` where neither part is stored (or its node did not answer). Header and payload are
        read atomically together."""

    def put(self, page_ids: Sequence[bytes], headers: Sequence[bytes],
            payloads: Sequence[memoryview], deadline_s: float) -> list[bool]:
        """Store each page (True where stored). The payload is written before the header, so a
        writer killed part way leaves at most a payload without its header (read as torn)."""

    def delete(self, page_ids: Sequence[bytes], deadline_s: float) -> None:
        """Remove every part of each page id (absent ones are fine)."""

    def close(self) -> None:
        """Close connections; idempotent."""
