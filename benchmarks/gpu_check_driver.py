"""The GPU check's driver: stages run one after another, each in its slice of the budget.

A stage is a function of a ``StageContext``: it adds ``Figure`` rows and free-form ``info`` as it
goes, calls ``ctx.check()`` between measurements (``StageTimeout`` once its slice is spent) and may
raise anything: the driver records the error and runs the next stage. Each stage runs on its own
thread; one still running a little after its slice is abandoned (recorded as a timeout) so a stuck
CUDA call cannot eat the other stages' time. Every change to a stage's record is written to
``out_dir/gpu_check_<n>_<stage>.json`` at once, so a run killed by ``timeout`` still leaves results.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

# Seconds a stage thread may run past its slice (finishing a measurement) before it is abandoned.
GRACE_S = 5.0
# Below this much budget left a stage is skipped rather than started.
MIN_SLICE_S = 1.0
TRACEBACK_CHARS = 3000
ERROR_CHARS = 70  # of a failed stage's error in its table row (the JSON has all of it)


class StageTimeout(Exception):
    """The stage's slice of the budget is spent (raised by ``StageContext.check``)."""


@dataclass(frozen=True)
class Target:
    """A figure's goal: ``value >= bound`` or ``value <= bound``."""

    op: Literal[">=", "<="]
    bound: float

    def met(self, value: float) -> bool:
        return value >= self.bound if self.op == ">=" else value <= self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@dataclass(frozen=True)
class Figure:
    """One table row. ``ok`` is None without a target, False when a targeted value is missing."""

    stage: str
    name: str
    value: float | None
    unit: str
    target: str | None
    ok: bool | None


Timer = Callable[[str, Callable[[], object]], float]


def perf_timer(label: str, fn: Callable[[], object]) -> float:
    """Seconds ``fn`` took (``label`` names the measurement; fakes in tests script it by label)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class StageContext:
    """What a running stage sees: its deadline, the shared run state, and its record.

    ``shared`` carries figures later stages compare against (stage 4's copy ceilings);
    ``resources`` holds what the run opens once (the CUDA runtime) and the hooks of the run.
    """

    def __init__(self, name: str, deadline_s: float, clock: Callable[[], float], timer: Timer,
                 shared: dict[str, float], resources: Any, on_change: Callable[[], None]) -> None:
        self.name = name
        self.deadline_s = deadline_s
        self.clock = clock
        self.timer = timer
        self.shared = shared
        self.resources = resources
        self.figures: list[Figure] = []
        self.info: dict[str, Any] = {}
        self._on_change = on_change
        self._lock = threading.Lock()
        self._closed = False

    def add(self, name: str, value: float | None, unit: str, target: Target | None = None) -> Figure:
        ok = None if target is None else (value is not None and target.met(value))
        figure = Figure(self.name, name, value, unit, None if target is None else str(target), ok)
        with self._lock:
            if not self._closed:
                self.figures.append(figure)
        self._changed()
        return figure

    def note(self, key: str, value: Any) -> None:
        with self._lock:
            if not self._closed:
                self.info[key] = value
        self._changed()

    def remaining_s(self) -> float:
        return self.deadline_s - self.clock()

    def check(self) -> None:
        """``StageTimeout`` once the slice is spent; stages call it between measurements."""
        if self.remaining_s() <= 0:
            raise StageTimeout(f"stage {self.name} used its slice of the budget")

    def time_s(self, label: str, fn: Callable[[], object]) -> float:
        return self.timer(label, fn)

    def close(self) -> None:
        """Ignore whatever an abandoned stage thread still adds."""
        with self._lock:
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def snapshot(self) -> tuple[list[Figure], dict[str, Any]]:
        with self._lock:
            return list(self.figures), dict(self.info)

    def _changed(self) -> None:
        if not self._closed:
            self._on_change()


StageFn = Callable[[StageContext], None]


@dataclass(frozen=True)
class Stage:
    """A named stage and its weight: its share of the budget left when it starts."""

    name: str
    weight_s: float
    fn: StageFn


@dataclass
class StageRecord:
    name: str
    status: str = "pending"  # pending, running, ok, error, timeout, skipped
    slice_s: float = 0.0
    elapsed_s: float = 0.0
    error: str | None = None
    figures: list[Figure] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "slice_s": self.slice_s,
                "elapsed_s": self.elapsed_s, "error": self.error,
                "figures": [asdict(f) for f in self.figures], "info": self.info}


def slice_s(remaining_s: float, weights_s: Sequence[float]) -> float:
    """The next stage's slice: its weight's share of the budget left among the stages left
    (``weights_s[0]`` is its own), so time one stage leaves unused goes to the later ones."""
    total = sum(weights_s)
    if remaining_s <= 0 or total <= 0:
        return 0.0
    return remaining_s * weights_s[0] / total


def stage_file(out_dir: Path, index: int, name: str) -> Path:
    return out_dir / f"gpu_check_{index}_{name}.json"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Written whole under another name, then renamed: a reader never sees half a file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


@dataclass(frozen=True)
class RunSettings:
    budget_s: float
    out_dir: Path
    clock: Callable[[], float] = time.monotonic
    timer: Timer = perf_timer
    grace_s: float = GRACE_S
    min_slice_s: float = MIN_SLICE_S


def run_stages(stages: Sequence[Stage], settings: RunSettings, resources: Any = None) -> list[StageRecord]:
    """Run every stage in order within ``settings.budget_s``; one record per stage."""
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    started_s = settings.clock()
    shared: dict[str, float] = {}
    records = [StageRecord(stage.name) for stage in stages]
    for index, (stage, record) in enumerate(zip(stages, records), start=1):
        path = stage_file(settings.out_dir, index, stage.name)
        remaining_s = settings.budget_s - (settings.clock() - started_s)
        record.slice_s = slice_s(remaining_s, [s.weight_s for s in stages[index - 1:]])
        if record.slice_s <= 0 or record.slice_s < settings.min_slice_s:
            record.status, record.error = "skipped", f"no budget left ({remaining_s:.1f} s of {settings.budget_s:g} s)"
        else:
            print(f"gpu_check: stage {index} {stage.name} ({record.slice_s:.0f} s)", file=sys.stderr, flush=True)
            _run_one(stage, record, settings, shared, resources, path)
        print(f"gpu_check: stage {index} {stage.name}: {record.status} in {record.elapsed_s:.1f} s"
              + (f": {record.error}" if record.error else ""), file=sys.stderr, flush=True)
        write_json(path, record.as_json())
    return records


def _run_one(stage: Stage, record: StageRecord, settings: RunSettings, shared: dict[str, float],
             resources: Any, path: Path) -> None:
    begin_s = settings.clock()
    write_lock = threading.Lock()

    def on_change() -> None:
        figures, info = ctx.snapshot()
        partial = StageRecord(record.name, "running", record.slice_s, settings.clock() - begin_s,
                              None, figures, info)
        with write_lock:
            if not ctx.closed:  # the driver's final record is never overwritten
                write_json(path, partial.as_json())

    ctx = StageContext(stage.name, begin_s + record.slice_s, settings.clock, settings.timer, shared,
                       resources, on_change)
    outcome: dict[str, str | None] = {}

    def body() -> None:
        try:
            stage.fn(ctx)
            outcome["status"] = "ok"
        except StageTimeout as exc:
            outcome["status"], outcome["error"] = "timeout", str(exc)
        except Exception as exc:  # a stage's failure is its record; the run goes on
            outcome["status"], outcome["error"] = "error", f"{type(exc).__name__}: {exc}"
            outcome["traceback"] = traceback.format_exc()[-TRACEBACK_CHARS:]

    record.status = "running"
    thread = threading.Thread(target=body, name=f"gpu-check-{stage.name}", daemon=True)
    thread.start()
    thread.join(timeout=max(0.0, record.slice_s + settings.grace_s))
    with write_lock:
        ctx.close()
    record.figures, record.info = ctx.snapshot()
    record.elapsed_s = settings.clock() - begin_s
    if thread.is_alive():
        record.status = "timeout"
        record.error = (f"still running {record.slice_s + settings.grace_s:.1f} s after it started "
                        f"(slice {record.slice_s:.1f} s): abandoned")
        return
    record.status = outcome.get("status") or "error"
    record.error = outcome.get("error")
    if "traceback" in outcome:
        record.info["traceback"] = outcome["traceback"]


def overall_ok(records: Sequence[StageRecord]) -> bool:
    """Every stage finished and no targeted figure missed its target."""
    return all(r.status == "ok" and all(f.ok is not False for f in r.figures) for r in records)


def _fmt_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _ok_word(ok: bool | None) -> str:
    return "" if ok is None else ("pass" if ok else "FAIL")


def table_rows(records: Sequence[StageRecord]) -> list[tuple[str, str, str, str, str, str]]:
    """(stage, name, value, unit, target, ok) per figure, plus one row per stage that did not
    finish (its status and error)."""
    rows = []
    for r in records:
        rows += [(f.stage, f.name, _fmt_value(f.value), f.unit, f.target or "", _ok_word(f.ok)) for f in r.figures]
        if r.status != "ok":
            error = r.error.splitlines()[0][:ERROR_CHARS] if r.error else ""
            rows.append((r.name, f"{r.status}: {error}", "", "", "", "FAIL"))
    return rows


def format_table(records: Sequence[StageRecord], title: str) -> str:
    header = ("stage", "name", "value", "unit", "target", "ok")
    rows = [header, *table_rows(records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [title] + ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def final_json(records: Sequence[StageRecord], environment: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
    return {"environment": environment, "stages": {r.name: r.as_json() for r in records},
            "ok": overall_ok(records), "elapsed_s": elapsed_s}
