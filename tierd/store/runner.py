"""Runs plans: turns the manager's moves into engine copies, and completes each plan once.

The manager decides, the engine copies; the runner is the glue. It resolves places to regions,
submits a plan's copies on its lane, and when the ticket settles calls ``manager.complete`` (on
whichever thread settled it) and starts the PERSIST plan a STORE leaves under write_through.
Disk deletes the manager decided go to the disk tier before the next disk writes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from tierd.store.manager import Manager
from tierd.store.plans import Move, Place, Plan, PlanKind
from tierd.store.regions import RegionTable
from tierd.store.transfer.base import Copy, DiskRef, Endpoint, SlotRef, TransferEngine, host_view, medium_of
from tierd.tiers.base import Medium
from tierd.tiers.disk import DiskTier

log = logging.getLogger(__name__)


class Run:
    """One plan in flight. ``wait`` returns once the manager has completed it."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._done = threading.Event()
        self.outcomes: tuple[bool, ...] = ()

    def settle(self, outcomes: tuple[bool, ...]) -> None:
        self.outcomes = outcomes
        self._done.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._done.wait(timeout_s)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def succeeded(self) -> int:
        return sum(self.outcomes)


class PlanRunner:
    def __init__(self, manager: Manager, engine: TransferEngine, regions: RegionTable,
                 disk: DiskTier, on_disk_progress: Callable[[], None]) -> None:
        self._manager = manager
        self._engine = engine
        self._regions = regions
        self._disk = disk
        self._on_disk_progress = on_disk_progress
        self._persisted = threading.Condition()
        self._persist_count = 0  # PERSIST plans completed: eviction waits on it for clean pages

    def start(self, plan: Plan, buffers: Sequence[memoryview] = ()) -> Run:
        """Submit ``plan``; ``buffers[i]`` is the caller's side of move ``i`` where it has one.

        A plan whose copies cannot even be submitted completes as failed before this raises.
        """
        run = Run(plan)
        if plan.kind is PlanKind.PERSIST:
            self.drain_deletes()  # deletes first: the space they free is reusable by the writes
        try:
            copies = [self._copy(plan.ns_id, move, buffers[i] if i < len(buffers) else None)
                      for i, move in enumerate(plan.moves)]
            ticket = self._engine.submit(plan.lane, copies)
        except BaseException:
            self._finish(run, (False,) * len(plan))
            raise
        ticket.add_done_callback(lambda _ok: self._finish(run, ticket.outcomes))
        return run

    def run(self, plan: Plan, buffers: Sequence[memoryview] = ()) -> tuple[bool, ...]:
        """``start`` and wait until it is complete (callers whose buffers the copies use)."""
        run = self.start(plan, buffers)
        run.wait()
        return run.outcomes

    def host_views(self, plan: Plan) -> list[memoryview] | None:
        """Views of the host-memory slots holding a READ plan's pages (pinned until the plan
        completes); ``None`` when one of them is on disk or in device memory."""
        views: list[memoryview] = []
        for move in plan.moves:
            if move.src is None or move.src.on_disk:
                return None
            ref = self._endpoint(plan.ns_id, move, move.src, None)
            if medium_of(ref) is not Medium.HOST:
                return None
            views.append(host_view(ref))
        return views

    def start_all(self, plans: Sequence[Plan | None]) -> list[Run]:
        return [self.start(plan) for plan in plans if plan is not None]

    def _finish(self, run: Run, outcomes: tuple[bool, ...]) -> None:
        try:
            followup = self._manager.complete(run.plan, outcomes)
        finally:
            run.settle(outcomes)
        if followup is not None:
            self.start(followup)
        if run.plan.kind is PlanKind.PERSIST:
            with self._persisted:
                self._persist_count += 1
                self._persisted.notify_all()
            self._on_disk_progress()

    def disk_progress(self) -> int:
        """How many PERSIST plans have completed so far."""
        with self._persisted:
            return self._persist_count

    def wait_disk_progress(self, seen: int, timeout_s: float) -> bool:
        """Wait until a PERSIST plan completes after ``disk_progress()`` was ``seen``."""
        with self._persisted:
            return self._persisted.wait_for(lambda: self._persist_count != seen, timeout_s)

    def _copy(self, ns_id: int, move: Move, buffer: memoryview | None) -> Copy:
        return Copy(self._endpoint(ns_id, move, move.src, buffer),
                    self._endpoint(ns_id, move, move.dst, buffer))

    def _endpoint(self, ns_id: int, move: Move, where: Place | None,
                  buffer: memoryview | None) -> Endpoint:
        if where is None:
            if buffer is None:
                raise ValueError(f"a move of page {move.key.hex()} needs the caller's buffer")
            return buffer
        if where.on_disk:
            return DiskRef(ns_id, move.key, move.seq, move.parent)
        return SlotRef(self._regions.get(ns_id, where.tier), where.slot)

    def drain_deletes(self) -> None:
        """Hand the disk deletes the manager decided to the disk tier (never blocks)."""
        by_ns: dict[int, list[bytes]] = {}
        for ns_id, key in self._manager.take_disk_deletes():
            by_ns.setdefault(ns_id, []).append(key)
        for ns_id, keys in by_ns.items():
            try:
                self._disk.delete(ns_id, keys)
            except Exception:  # the disk tier is closed (the store closes it after a last drain)
                log.exception("could not queue %d disk delete(s) of namespace %d", len(keys), ns_id)
