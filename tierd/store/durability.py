"""Durability tickets: lets a writer wait until the pages of one put or commit are on disk.

A ticket is a group of disk keys issued to one namespace (``None``: the store's own, e.g. flush).
``watch(ticket, dkey)`` adds a page whose write is queued (by this call or an earlier one);
``page_done(dkey, ok)`` is called when that write's transaction commits or fails. ``wait(ticket)``
returns True once every page of the group is on disk, False when one failed (``wait_outcome`` tells
a failure from a timeout). ``owner(ticket)`` says
which namespace a recent ticket was issued to, so the RPC layer can keep tenants to their own.
Thread-safe; its condition variable is independent of the store lock.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections import OrderedDict

from tierd.errors import InvalidArgument

# Failed tickets are remembered so a late ``wait`` still sees the failure, and the owners of the
# most recent tickets so a late ``wait`` can still be checked; both bounded so a client that never
# waits cannot grow them forever.
MAX_REMEMBERED_FAILURES = 65536
MAX_REMEMBERED_OWNERS = 65536


class Durability(enum.Enum):
    """How a ticket stands when ``wait_outcome`` returns."""

    DURABLE = "durable"   # every page of it is on disk
    FAILED = "failed"     # a page's write failed (or was never queued): it never will be
    PENDING = "pending"   # the timeout passed with writes still queued


class DurabilityTracker:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._issued = 0
        self._remaining: dict[int, int] = {}          # ticket -> pages not yet committed
        self._failed: dict[int, None] = {}            # insertion-ordered, bounded
        self._watchers: dict[bytes, list[int]] = {}   # disk key -> tickets waiting on it
        self._owners: OrderedDict[int, int | None] = OrderedDict()  # ticket -> ns_id, bounded

    def new_ticket(self, ns_id: int | None = None) -> int:
        """A fresh, open ticket for pages of namespace ``ns_id``."""
        with self._cond:
            ticket = next(self._ids)
            self._issued = ticket
            self._remaining[ticket] = 0
            self._owners[ticket] = ns_id
            while len(self._owners) > MAX_REMEMBERED_OWNERS:
                self._owners.popitem(last=False)
            return ticket

    def owner(self, ticket: int) -> tuple[bool, int | None]:
        """``(known, ns_id)``: whether ``ticket`` is among the recent tickets whose owner is
        remembered, and the namespace it was issued to."""
        with self._cond:
            if ticket in self._owners:
                return True, self._owners[ticket]
            return False, None

    def watch(self, ticket: int, dkey: bytes) -> None:
        with self._cond:
            if ticket not in self._remaining:
                return  # failed already: nothing can make it durable again
            self._remaining[ticket] += 1
            self._watchers.setdefault(dkey, []).append(ticket)

    def fail(self, ticket: int) -> None:
        """A page of ``ticket`` cannot be made durable (not queued for disk)."""
        with self._cond:
            if ticket in self._remaining:
                self._fail(ticket)
                self._cond.notify_all()

    def page_done(self, dkey: bytes, ok: bool) -> None:
        with self._cond:
            tickets = self._watchers.pop(dkey, ())
            for ticket in tickets:
                if ticket not in self._remaining:
                    continue
                if not ok:
                    self._fail(ticket)
                    continue
                self._remaining[ticket] -= 1
                if self._remaining[ticket] == 0:
                    del self._remaining[ticket]
            if tickets:
                self._cond.notify_all()

    def seal(self, ticket: int) -> None:
        """No more pages join ``ticket``; an empty ticket is complete at once."""
        with self._cond:
            if self._remaining.get(ticket) == 0:
                del self._remaining[ticket]
                self._cond.notify_all()

    def fail_all(self) -> None:
        """Closing: every open ticket fails (its pages may still be committed later)."""
        with self._cond:
            for ticket in list(self._remaining):
                self._fail(ticket)
            self._watchers.clear()
            self._cond.notify_all()

    def check_issued(self, ticket: object) -> int:
        """``ticket`` as an int, or ``InvalidArgument`` when this tracker never issued it."""
        with self._cond:
            if isinstance(ticket, bool) or not isinstance(ticket, int) or not 0 < ticket <= self._issued:
                raise InvalidArgument(f"durability ticket {ticket!r} was never issued by this daemon "
                                      "(tickets do not survive a restart): put the pages again")
            return ticket

    def wait(self, ticket: int, timeout_s: float | None = None) -> bool:
        """True when every page of ``ticket`` is on disk; False on failure or timeout."""
        return self.wait_outcome(ticket, timeout_s) is Durability.DURABLE

    def wait_outcome(self, ticket: int, timeout_s: float | None = None) -> Durability:
        """Wait until ``ticket`` is durable or failed, or ``timeout_s`` passed (PENDING)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        ticket = self.check_issued(ticket)
        with self._cond:
            while ticket in self._remaining:
                remaining_s = None if deadline is None else deadline - time.monotonic()
                if remaining_s is not None and remaining_s <= 0:
                    return Durability.PENDING
                self._cond.wait(remaining_s)
            return Durability.FAILED if ticket in self._failed else Durability.DURABLE

    def _fail(self, ticket: int) -> None:
        self._remaining.pop(ticket, None)
        self._failed[ticket] = None
        while len(self._failed) > MAX_REMEMBERED_FAILURES:
            del self._failed[next(iter(self._failed))]
