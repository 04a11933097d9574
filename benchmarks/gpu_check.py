#!/usr/bin/env python3
"""One check of tierd on a CUDA GPU within a fixed budget: environment, ``pytest -m cuda``,
hostRegister cost, the raw copy ceiling, tierd's page moves against it, the attention kernels.

Each stage gets its slice of ``--budget-s`` (its weight's share of what is left), writes its JSON
to ``--out`` (default ``$OUT``) as it goes, and a stage that fails or overruns is recorded while
the next one runs. Prints one table (stage, name, value, unit, target, ok), then one JSON object
``{"environment", "stages", "ok", "elapsed_s"}``; exits 0 when every stage finished and met its
targets, else 1. Progress goes to stderr.

    timeout 540 python benchmarks/gpu_check.py --budget-s 480      # make gpu-check
    python benchmarks/gpu_check.py --quick --budget-s 240 --out /tmp/check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gpu_check_copies import host_register_stage, raw_copy_stage
from gpu_check_driver import (
    GRACE_S,
    RunSettings,
    Stage,
    StageRecord,
    Timer,
    final_json,
    format_table,
    overall_ok,
    perf_timer,
    run_stages,
    write_json,
)
from gpu_check_env import environment_stage, kernels_stage, pytest_stage
from gpu_check_resources import Hooks, Resources, Sizes
from gpu_check_store import tierd_stage

DEFAULT_BUDGET_S = 480.0
FINAL_FILE = "gpu_check.json"


def build_stages() -> list[Stage]:
    """The six stages in order; weights are seconds of a 480 s budget."""
    return [Stage("environment", 15, environment_stage), Stage("pytest_cuda", 90, pytest_stage),
            Stage("host_register", 60, host_register_stage), Stage("raw_copy", 60, raw_copy_stage),
            Stage("tierd_moves", 150, tierd_stage), Stage("kernels", 105, kernels_stage)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds for all stages together (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for each stage's JSON (default: $OUT, else a new temp folder)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be above 0, got {args.budget_s}")
    return args


def _out_dir(given: Path | None) -> Path:
    if given is not None:
        return given
    env = os.environ.get("OUT")
    return Path(env) if env else Path(tempfile.mkdtemp(prefix="gpu-check-"))


def _title(records: Sequence[StageRecord], budget_s: float, quick: bool) -> str:
    env = records[0].info if records else {}
    device = env.get("device_name") or f"cuda:{env.get('device_index', '?')}"
    return (f"gpu_check on {device} | {env.get('machine', 'unknown machine')} | driver "
            f"{env.get('cuda_driver_version', '?')} | budget {budget_s:g} s{' (quick)' if quick else ''}")


def run_gpu_check(argv: Sequence[str] | None = None, *, hooks: Hooks | None = None, sizes: Sizes | None = None,
                  stages: Sequence[Stage] | None = None, clock: Callable[[], float] = time.monotonic,
                  timer: Timer = perf_timer, grace_s: float = GRACE_S) -> tuple[int, list[StageRecord]]:
    """Run the check; the exit status and the stage records. Tests inject ``hooks`` (the fake
    runtime, a command runner, a store factory), ``sizes``, ``stages`` and the clocks."""
    args = parse_args(argv)
    out_dir = _out_dir(args.out)
    print(f"gpu_check: writing each stage's JSON to {out_dir}", file=sys.stderr)
    resources = Resources(sizes or (Sizes.quick() if args.quick else Sizes()), hooks or Hooks(), args.device)
    settings = RunSettings(args.budget_s, out_dir, clock, timer, grace_s)
    started_s = clock()
    records = run_stages(list(stages) if stages is not None else build_stages(), settings, resources)
    environment = records[0].info if records and records[0].name == "environment" else {}
    report = final_json(records, environment, clock() - started_s)
    write_json(out_dir / FINAL_FILE, report)
    print(format_table(records, _title(records, args.budget_s, args.quick)))
    print(json.dumps(report, indent=2, default=str))
    return (0 if overall_ok(records) else 1), records


def main(argv: Sequence[str] | None = None) -> int:
    return run_gpu_check(argv)[0]


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if any(t.name.startswith("gpu-check-") for t in threading.enumerate()):
        os._exit(code)  # an abandoned stage may hold threads (a store's movers) that exit would wait for
    sys.exit(code)
