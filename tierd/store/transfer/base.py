"""What a transfer engine is: batches of copies on lanes, tickets, handlers per medium pair.

The engine never decides anything: the manager has already chosen every source and destination
and pinned them. ``submit(lane, copies)`` returns a ``TransferTicket`` at once; the copies run
now (CPU) or later (a device stream, the fake device's delayed completion). A handler is chosen
per (source medium, destination medium), the way vLLM's ``kv_offload`` picks one per medium pair.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from tierd.errors import TierdError
from tierd.tiers.base import HostRegion, Medium, Region

log = logging.getLogger(__name__)


class Lane(enum.Enum):
    """A queue of copies (a CUDA stream on a GPU): promotions never wait behind demotions."""

    PROMOTE = "promote"
    DEMOTE = "demote"
    BYTES = "bytes"  # between a tier and a caller's buffer


class TransferError(TierdError):
    """A copy the engine cannot do (no handler for the medium pair): a bug, not bad input."""

    status_name = "INTERNAL"


@dataclass(frozen=True)
class SlotRef:
    """Slot ``slot`` of ``region``."""

    region: Region
    slot: int


@dataclass(frozen=True)
class DiskRef:
    """Page ``key`` of namespace ``ns_id`` on disk; ``seq`` is written into its header;
    ``parent`` (a write's): its parent's page key, stored with it so chains survive a restart."""

    ns_id: int
    key: bytes
    seq: int = 0
    parent: bytes | None = None


Endpoint = SlotRef | DiskRef | memoryview


@dataclass(frozen=True)
class Copy:
    """One page's bytes from ``src`` to ``dst`` (a memoryview is a caller's host buffer)."""

    src: Endpoint
    dst: Endpoint


def medium_of(endpoint: Endpoint) -> Medium:
    if isinstance(endpoint, DiskRef):
        return Medium.DISK
    if isinstance(endpoint, SlotRef):
        return endpoint.region.medium
    return Medium.HOST


def host_view(endpoint: Endpoint) -> memoryview:
    """The bytes of a host endpoint (a caller's buffer or a host region's slot)."""
    if isinstance(endpoint, memoryview):
        return endpoint
    if isinstance(endpoint, SlotRef) and endpoint.region.medium is Medium.HOST:
        return cast(HostRegion, endpoint.region).slot_view(endpoint.slot)
    raise TransferError(f"{endpoint!r} is not host memory")


class TransferTicket:
    """Completion of one submitted batch. ``outcomes[i]`` says whether copy ``i`` arrived.

    Thread-safe. Callbacks run once, on whichever thread settles the last copy (or at once when
    added to a done ticket), with ``ok`` = every copy arrived.
    """

    def __init__(self, num_copies: int) -> None:
        self._cond = threading.Condition()
        self._outcomes: list[bool | None] = [None] * num_copies
        self._left = num_copies
        self._callbacks: list[Callable[[bool], None]] = []

    def settle(self, index: int, ok: bool) -> None:
        """Copy ``index`` arrived (``ok``) or failed; a second settle of one copy is ignored."""
        with self._cond:
            if self._outcomes[index] is not None:
                return
            self._outcomes[index] = ok
            self._left -= 1
            if self._left:
                return
            callbacks, self._callbacks = self._callbacks, []
            self._cond.notify_all()
        self._run(callbacks)

    def done(self) -> bool:
        with self._cond:
            return self._left == 0

    def wait(self, timeout_s: float | None = None) -> bool:
        """True once every copy settled; False when ``timeout_s`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._left == 0, timeout_s)

    def add_done_callback(self, fn: Callable[[bool], None]) -> None:
        with self._cond:
            if self._left:
                self._callbacks.append(fn)
                return
        self._run([fn])

    @property
    def outcomes(self) -> tuple[bool, ...]:
        with self._cond:
            if self._left:
                raise TransferError("the ticket's copies are still in flight: wait() first")
            return tuple(bool(ok) for ok in self._outcomes)

    @property
    def ok(self) -> bool:
        return all(self.outcomes)

    def _run(self, callbacks: list[Callable[[bool], None]]) -> None:
        ok = all(bool(o) for o in self._outcomes)
        for fn in callbacks:
            try:
                fn(ok)
            except Exception:  # a callback's bug must not stop the others or the engine
                log.exception("a transfer ticket callback raised")


Indexed = list[tuple[int, Copy]]


class Handler(Protocol):
    """Moves bytes between one pair of media; settles each given ticket index exactly once."""

    def run(self, lane: Lane, copies: Indexed, ticket: TransferTicket) -> None: ...

    def close(self) -> None: ...


class TransferEngine(Protocol):
    """What the store needs of an engine."""

    @property
    def name(self) -> str: ...

    def submit(self, lane: Lane, copies: Sequence[Copy]) -> TransferTicket: ...

    def close(self) -> None: ...


class DispatchEngine:
    """An engine made of handlers per (source medium, destination medium)."""

    def __init__(self, name: str, handlers: dict[tuple[Medium, Medium], Handler]) -> None:
        self._name = name
        self._handlers = handlers

    @property
    def name(self) -> str:
        return self._name

    def submit(self, lane: Lane, copies: Sequence[Copy]) -> TransferTicket:
        """Start every copy; ``TransferError`` (nothing started) for a pair no handler moves."""
        groups: dict[tuple[Medium, Medium], Indexed] = {}
        for index, copy in enumerate(copies):
            pair = (medium_of(copy.src), medium_of(copy.dst))
            if pair not in self._handlers:
                raise TransferError(f"the {self._name} engine cannot copy {pair[0].value} -> "
                                    f"{pair[1].value}")
            groups.setdefault(pair, []).append((index, copy))
        ticket = TransferTicket(len(copies))
        for pair, group in groups.items():
            try:
                self._handlers[pair].run(lane, group, ticket)
            except Exception:  # the handler broke as a whole: what it did not settle failed
                log.exception("the %s engine's %s -> %s handler failed", self._name,
                              pair[0].value, pair[1].value)
                for index, _ in group:
                    ticket.settle(index, False)
        return ticket

    def close(self) -> None:
        """Close every handler once (handlers may serve several pairs); idempotent."""
        seen: set[int] = set()
        for handler in self._handlers.values():
            if id(handler) not in seen:
                seen.add(id(handler))
                handler.close()
