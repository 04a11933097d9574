"""Durability tickets: a put's ticket is durable only once each of its pages committed."""

from __future__ import annotations

import threading

import pytest

from tierd.errors import InvalidArgument
from tierd.store.durability import DurabilityTracker


def test_ticket_waits_for_every_page_and_fails_if_one_fails() -> None:
    tracker = DurabilityTracker()
    ok = tracker.new_ticket()
    tracker.watch(ok, b"a")
    tracker.watch(ok, b"b")
    tracker.seal(ok)
    assert not tracker.wait(ok, timeout_s=0.01)       # nothing committed yet
    tracker.page_done(b"a", True)
    done = threading.Event()
    threading.Thread(target=lambda: done.set() if tracker.wait(ok, 5) else None).start()
    tracker.page_done(b"b", True)
    assert done.wait(5)
    empty = tracker.new_ticket()
    tracker.seal(empty)
    assert tracker.wait(empty, 0)
    third = tracker.new_ticket()
    tracker.watch(third, b"c")
    tracker.seal(third)
    tracker.page_done(b"c", False)
    assert not tracker.wait(third, 1)
    unqueued = tracker.new_ticket()       # a page that could not even be queued
    tracker.watch(unqueued, b"d")
    tracker.fail(unqueued)
    tracker.seal(unqueued)
    tracker.page_done(b"d", True)
    assert not tracker.wait(unqueued, 1)


@pytest.mark.parametrize("ticket", [0, -1, 99, True, "1"])
def test_unknown_tickets_are_rejected(ticket: object) -> None:
    tracker = DurabilityTracker()
    tracker.new_ticket()
    with pytest.raises(InvalidArgument, match="never issued"):
        tracker.wait(ticket, 0)  # type: ignore[arg-type]


def test_owner_names_the_namespace_of_recent_tickets_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tierd.store.durability.MAX_REMEMBERED_OWNERS", 2)
    tracker = DurabilityTracker()
    first, second, third = tracker.new_ticket(7), tracker.new_ticket(8), tracker.new_ticket()
    assert tracker.owner(first) == (False, None)        # forgotten: bounded memory
    assert tracker.owner(second) == (True, 8)
    assert tracker.owner(third) == (True, None)         # the store's own (flush) ticket
    assert tracker.check_issued(first) == first
