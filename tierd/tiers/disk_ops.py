"""The write ops of the disk tier's writer queue (``disk_writer``), and what each costs a group."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tierd.tiers.page_format import HEADER_BYTES

OnDone = Callable[[bool], None]


@dataclass(frozen=True)
class PageEncoder:
    """How the writer stores a page in a cold format: ``encode(page, out)`` fills ``out``
    (``payload_bytes``) from the exact page; ``seal(out)`` returns the header whose checksum
    covers those stored bytes."""

    payload_bytes: int
    encode: Callable[[memoryview, memoryview], None]
    seal: Callable[[memoryview], bytes]


@dataclass(frozen=True)
class PutPage:
    """Store ``payload`` (flat bytes, pinned by the caller until ``on_done``) under ``dkey``."""

    dkey: bytes
    ns_id: int
    payload: memoryview
    seq: int
    on_done: OnDone | None
    # encode_header(...), computed by the submitter (it knows key and fingerprint); with an
    # ``encoder`` the writer makes the header instead and this is empty.
    header: bytes
    encoder: PageEncoder | None = None
    parent: bytes | None = None  # the parent's page key, kept in the ``parents`` database

    @property
    def stored_payload_bytes(self) -> int:
        return self.payload.nbytes if self.encoder is None else self.encoder.payload_bytes


@dataclass(frozen=True)
class DeletePages:
    """Remove ``dkeys`` (absent ones are ignored)."""

    dkeys: tuple[bytes, ...]
    on_done: OnDone | None


@dataclass(frozen=True)
class DropIfUnchanged:
    """Remove a value found corrupt, unless it was rewritten since (size or header differ)."""

    dkey: bytes
    seen_header: bytes
    seen_bytes: int
    on_done: OnDone | None = None


@dataclass(frozen=True)
class PutMeta:
    """Store one record of the ``meta`` database."""

    key: bytes
    value: bytes
    on_done: OnDone | None


@dataclass(frozen=True)
class Barrier:
    """Completes once every op queued before it was committed (or failed)."""

    on_done: OnDone


WriteOp = PutPage | DeletePages | DropIfUnchanged | PutMeta | Barrier


def pages_in(ops: list[WriteOp]) -> int:
    return sum(1 for op in ops if isinstance(op, PutPage))


def op_cost(op: WriteOp) -> tuple[int, int]:
    """``(pages, bytes)`` an op adds to a group (the group-commit limits count these)."""
    if isinstance(op, PutPage):
        return 1, HEADER_BYTES + op.stored_payload_bytes
    if isinstance(op, DeletePages):
        return len(op.dkeys), 0
    return 0, 0
