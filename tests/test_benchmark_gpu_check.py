"""``benchmarks/gpu_check.py``'s own logic on CPU, so a bug in it cannot waste GPU minutes.

The driver runs on scripted clocks; the stages that touch CUDA run for real on tiny sizes over the
strict ``FakeCudaRuntime`` (stage 5 through ``PageStore`` on ``cuda:0`` with that runtime injected),
with a timer that runs each measured call and reports a scripted duration, so every figure and
ratio is computed from known timings. The subprocess stages get a scripted command runner.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cuda_fake_runtime import FakeCudaRuntime

from tierd.errors import InvalidArgument

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@pytest.fixture
def gc(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """benchmarks/gpu_check.py; its helper modules import as gpu_check_* (and machine_info)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("gpu_check")


def _mod(name: str) -> Any:
    return importlib.import_module(name)


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


class ScriptedTimer:
    """Runs every measured call and answers the seconds of the first label prefix that matches."""

    def __init__(self, seconds_by_prefix: dict[str, float], default_s: float = 0.001) -> None:
        self.seconds_by_prefix = seconds_by_prefix
        self.default_s = default_s
        self.labels: list[str] = []

    def __call__(self, label: str, fn: Callable[[], object]) -> float:
        fn()
        self.labels.append(label)
        return next((s for p, s in self.seconds_by_prefix.items() if label.startswith(p)), self.default_s)


def _settings(gc: ModuleType, out: Path, budget_s: float = 100.0, clock: Callable[[], float] | None = None,
              **kw: Any) -> Any:
    driver = _mod("gpu_check_driver")
    return driver.RunSettings(budget_s, out, clock or Clock(), **kw)


def _stage(name: str, weight_s: float, fn: Callable[[Any], None]) -> Any:
    return _mod("gpu_check_driver").Stage(name, weight_s, fn)


# -- the driver --------------------------------------------------------------------------------------

def test_each_slice_is_its_weights_share_of_what_is_left(gc: ModuleType, tmp_path: Path) -> None:
    driver = _mod("gpu_check_driver")
    assert driver.slice_s(480, [15, 90, 60, 60, 150, 105]) == pytest.approx(15)
    assert driver.slice_s(0, [1, 1]) == 0
    clock, seen = Clock(), {}

    def spend(seconds: float) -> Callable[[Any], None]:
        def fn(ctx: Any) -> None:
            seen[ctx.name] = ctx.remaining_s()
            clock.now_s += seconds
        return fn

    stages = [_stage("a", 10, spend(2)), _stage("b", 30, spend(30)), _stage("c", 60, spend(0))]
    records = driver.run_stages(stages, _settings(gc, tmp_path, 100, clock))
    # a: 10 of 100; b: 30/90 of the 98 left (a's unused 8 s spread over b and c); c: what is left.
    assert [r.slice_s for r in records] == pytest.approx([10, 98 * 30 / 90, 68])
    assert seen == pytest.approx({"a": 10, "b": 98 * 30 / 90, "c": 68})
    assert [r.status for r in records] == ["ok", "ok", "ok"]


def test_a_stage_that_raises_is_recorded_and_the_next_one_runs(gc: ModuleType, tmp_path: Path) -> None:
    driver = _mod("gpu_check_driver")

    def broken(ctx: Any) -> None:
        ctx.add("before the failure", 1.5, "GB/s")
        raise ValueError("copy went wrong")

    stages = [_stage("broken", 1, broken), _stage("next", 1, lambda ctx: ctx.add("after", 2.0, "x"))]
    broken_rec, next_rec = driver.run_stages(stages, _settings(gc, tmp_path))
    assert (broken_rec.status, broken_rec.error) == ("error", "ValueError: copy went wrong")
    assert [f.name for f in broken_rec.figures] == ["before the failure"]
    assert "in broken" in broken_rec.info["traceback"]
    assert next_rec.status == "ok" and [f.value for f in next_rec.figures] == [2.0]
    assert not driver.overall_ok([broken_rec, next_rec])
    saved = json.loads((tmp_path / "gpu_check_1_broken.json").read_text())
    assert saved["status"] == "error" and saved["figures"][0]["value"] == 1.5


def test_a_stage_over_its_slice_is_stopped_at_its_next_check(gc: ModuleType, tmp_path: Path) -> None:
    driver = _mod("gpu_check_driver")
    clock, rounds = Clock(), []

    def endless(ctx: Any) -> None:
        while True:
            ctx.check()
            rounds.append(1)
            ctx.add(f"round {len(rounds)}", float(len(rounds)), "s")
            clock.now_s += 10

    stages = [_stage("endless", 50, endless), _stage("next", 50, lambda ctx: None)]
    endless_rec, next_rec = driver.run_stages(stages, _settings(gc, tmp_path, 100, clock))
    assert endless_rec.status == "timeout" and "slice" in endless_rec.error
    assert len(rounds) == 5 and len(endless_rec.figures) == 5  # 50 s slice, 10 s rounds
    assert next_rec.status == "ok" and next_rec.slice_s == pytest.approx(50)


def test_a_stuck_stage_is_abandoned_and_what_it_adds_later_is_ignored(gc: ModuleType, tmp_path: Path) -> None:
    driver = _mod("gpu_check_driver")
    release, finished = threading.Event(), threading.Event()

    def stuck(ctx: Any) -> None:
        ctx.add("before", 1.0, "s")
        release.wait()
        ctx.add("late", 2.0, "s")
        finished.set()

    stages = [_stage("stuck", 1, stuck), _stage("next", 99, lambda ctx: ctx.add("ran", 1.0, "x"))]
    # The real clock: "stuck" gets 0.1 s and never ends by itself; "next" has the ~9.9 s left.
    settings = driver.RunSettings(10.0, tmp_path, grace_s=0.0, min_slice_s=0.0)
    stuck_rec, next_rec = driver.run_stages(stages, settings)
    release.set()
    assert finished.wait(10)
    assert stuck_rec.status == "timeout" and "abandoned" in stuck_rec.error
    assert [f.name for f in stuck_rec.figures] == ["before"] and next_rec.status == "ok"
    saved = json.loads((tmp_path / "gpu_check_1_stuck.json").read_text())
    assert saved["status"] == "timeout" and [f["name"] for f in saved["figures"]] == ["before"]


def test_stages_with_no_budget_left_are_skipped(gc: ModuleType, tmp_path: Path) -> None:
    driver = _mod("gpu_check_driver")
    clock = Clock()

    def hog(ctx: Any) -> None:
        clock.now_s += 100

    records = driver.run_stages([_stage("hog", 1, hog), _stage("late", 1, lambda ctx: None)],
                                _settings(gc, tmp_path, 100, clock))
    assert [r.status for r in records] == ["ok", "skipped"] and "no budget left" in records[1].error


def test_each_stage_file_is_written_while_the_stage_runs(gc: ModuleType, tmp_path: Path) -> None:
    driver = _mod("gpu_check_driver")
    seen: list[dict[str, Any]] = []

    def stage(ctx: Any) -> None:
        ctx.add("first", 1.0, "GB/s", driver.Target(">=", 2.0))
        seen.append(json.loads((tmp_path / "gpu_check_1_partial.json").read_text()))

    (record,) = driver.run_stages([_stage("partial", 1, stage)], _settings(gc, tmp_path))
    assert seen[0]["status"] == "running" and seen[0]["figures"][0]["name"] == "first"
    final = json.loads((tmp_path / "gpu_check_1_partial.json").read_text())
    assert final["status"] == "ok" and final["figures"][0] == {
        "stage": "partial", "name": "first", "value": 1.0, "unit": "GB/s", "target": ">= 2", "ok": False}
    assert not driver.overall_ok([record])  # finished, but a target missed


def test_the_run_prints_one_table_then_one_json_object(gc: ModuleType, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    driver = _mod("gpu_check_driver")

    def env(ctx: Any) -> None:
        ctx.note("device_name", "Fake H200")
        ctx.add("device memory free", 130.0, "GiB")

    def measured(ctx: Any) -> None:
        ctx.add("copy", 50.0, "GB/s", driver.Target(">=", 40))
        ctx.add("ratio", 0.5, "x", driver.Target(">=", 0.9))
        ctx.add("missing", None, "x", driver.Target("<=", 1.2))

    def failing(ctx: Any) -> None:
        raise RuntimeError("no device")

    stages = [_stage("environment", 1, env), _stage("measured", 1, measured), _stage("failing", 1, failing)]
    code, _ = gc.run_gpu_check(["--budget-s", "30", "--out", str(tmp_path)], stages=stages)
    out = capsys.readouterr().out
    table, brace, rest = out.partition("\n{\n")
    report = json.loads(brace + rest)
    lines = table.splitlines()
    assert "Fake H200" in lines[0] and lines[1].split() == ["stage", "name", "value", "unit", "target", "ok"]
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[2:]]
    assert rows == [["environment", "device memory free", "130", "GiB"],
                    ["measured", "copy", "50", "GB/s", ">= 40", "pass"],
                    ["measured", "ratio", "0.5", "x", ">= 0.9", "FAIL"],
                    ["measured", "missing", "n/a", "x", "<= 1.2", "FAIL"],
                    ["failing", "error: RuntimeError: no device", "FAIL"]]
    assert code == 1 and set(report) == {"environment", "stages", "ok", "elapsed_s"} and report["ok"] is False
    assert report["environment"] == {"device_name": "Fake H200"}
    assert list(report["stages"]) == ["environment", "measured", "failing"]
    assert report["stages"]["failing"]["status"] == "error"
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == report
    for index, name in enumerate(report["stages"], start=1):
        assert json.loads((tmp_path / f"gpu_check_{index}_{name}.json").read_text()) == report["stages"][name]


def test_the_check_has_six_stages_and_their_weights_fill_the_default_budget(gc: ModuleType) -> None:
    stages = gc.build_stages()
    assert [s.name for s in stages] == ["environment", "pytest_cuda", "host_register", "raw_copy", "tierd_moves",
                                        "kernels"]
    assert sum(s.weight_s for s in stages) == gc.DEFAULT_BUDGET_S == 480
    with pytest.raises(SystemExit):
        gc.parse_args(["--budget-s", "0"])
    sizes = _mod("gpu_check_resources").Sizes
    assert sizes.quick().copy_bytes < sizes().copy_bytes
    with pytest.raises(InvalidArgument, match="one count per size"):
        sizes(register_reps=(1,))


def test_make_gpu_check_runs_the_script_under_timeout() -> None:
    makefile = (REPO / "Makefile").read_text()
    phony = [line.split()[1:] for line in makefile.splitlines() if line.startswith(".PHONY:")]
    assert any("gpu-check" in targets for targets in phony)
    recipe = makefile.split("\ngpu-check:")[1].splitlines()[1]
    assert recipe.strip() == "timeout 540 $(PY) benchmarks/gpu_check.py --budget-s 480"


# -- stages 2 and 6: the subprocess stages and their parsers ------------------------------------------

PYTEST_FAILED = """\
..F
=================================== FAILURES ===================================
____________________________ test_ipc_roundtrip ________________________________
E       AssertionError: bytes differ
=========================== short test summary info ============================
FAILED tests/e2e/test_cuda_e2e.py::test_ipc_roundtrip - AssertionError: bytes differ
!!!!!!!!!!!!!!!!!!!!!!!!!! stopping after 1 failures !!!!!!!!!!!!!!!!!!!!!!!!!!!
1 failed, 2 passed, 3 skipped, 1450 deselected in 41.20s
"""


@pytest.mark.parametrize(("output", "expected"), [
    ("....s\n4 passed, 1 skipped, 1200 deselected in 12.34s\n",
     {"passed": 4, "skipped": 1, "deselected": 1200, "failed": 0, "first_failure": None}),
    (PYTEST_FAILED, {"passed": 2, "failed": 1, "skipped": 3, "first_failure":
                     "FAILED tests/e2e/test_cuda_e2e.py::test_ipc_roundtrip - AssertionError: bytes differ"}),
    ("ERROR tests/cuda/test_x.py - ImportError: cupy\n!!! Interrupted: 1 error during collection !!!\n"
     "==== 1 error in 0.52s ====\n",
     {"errors": 1, "passed": 0, "first_failure": "ERROR tests/cuda/test_x.py - ImportError: cupy"}),
    ("\n1455 deselected in 2.10s\n", {"passed": 0, "deselected": 1455}),
    ("no tests ran in 0.01s\n", {"passed": 0, "summary_line": "no tests ran in 0.01s"}),
    # killed before its summary: the progress characters say how far it got
    ("....s.F [ 40%]\n...\n", {"passed": 8, "skipped": 1, "failed": 1, "summary_line": None}),
])
def test_pytest_summary_parser(gc: ModuleType, output: str, expected: dict[str, Any]) -> None:
    summary = asdict(_mod("gpu_check_env").parse_pytest_summary(output))
    assert {key: summary[key] for key in expected} == expected


def _resources(sizes: Any = None, **hooks: Any) -> Any:
    res = _mod("gpu_check_resources")
    return res.Resources(sizes or res.Sizes(), res.Hooks(**hooks))


def _run(gc: ModuleType, tmp_path: Path, stages: Sequence[Any], resources: Any, budget_s: float = 100.0,
         timer: Any = None) -> list[Any]:
    driver = _mod("gpu_check_driver")
    settings = driver.RunSettings(budget_s, tmp_path, Clock(), timer or ScriptedTimer({}))
    return list(driver.run_stages(stages, settings, resources))


class Commands:
    """Answers each command with the next scripted result; remembers what was asked."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.calls: list[tuple[list[str], float, Path]] = []

    def __call__(self, argv: Sequence[str], timeout_s: float, cwd: Path) -> Any:
        self.calls.append((list(argv), timeout_s, cwd))
        return self.results.pop(0)


def _result(returncode: int | None, stdout: str, stderr: str = "", timed_out: bool = False) -> Any:
    return _mod("gpu_check_resources").CommandResult(returncode, stdout, stderr, timed_out)


def test_the_pytest_stage_runs_the_cuda_tests_within_its_slice(gc: ModuleType, tmp_path: Path) -> None:
    env = _mod("gpu_check_env")
    commands = Commands(_result(1, PYTEST_FAILED))
    (record,) = _run(gc, tmp_path, [_stage("pytest_cuda", 90, env.pytest_stage)], _resources(run_command=commands), 90)
    argv, timeout_s, cwd = commands.calls[0]
    assert argv[:3] == [sys.executable, "-m", "pytest"] and {"-m", "cuda", "-x", "-q", "tests"} <= set(argv)
    assert timeout_s == pytest.approx(90) and cwd == REPO
    assert record.status == "ok" and record.info["summary"]["first_failure"].startswith("FAILED tests/e2e")
    figures = {f.name: (f.value, f.ok) for f in record.figures}
    assert figures == {"passed": (2, True), "failed + errors": (1, False), "skipped": (3, None)}


def test_a_pytest_run_killed_at_the_end_of_its_slice_is_a_timeout(gc: ModuleType, tmp_path: Path) -> None:
    env = _mod("gpu_check_env")
    commands = Commands(_result(-9, "....s", timed_out=True))
    (record,) = _run(gc, tmp_path, [_stage("pytest_cuda", 1, env.pytest_stage)], _resources(run_command=commands))
    assert record.status == "timeout" and record.info["output_tail"] == "....s"
    assert {f.name: f.value for f in record.figures} == {"passed": 4, "failed + errors": 0, "skipped": 1}


def _kernels_report(long_ratio: float = 0.65) -> str:
    """What ``kernels.py --json`` prints, built from its own row types."""
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("bench_kernels_for_gpu_check", BENCHMARKS / "kernels.py")
    assert spec is not None and spec.loader is not None
    kernels = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = kernels  # its dataclasses look their module up while being made
    spec.loader.exec_module(kernels)
    decode = [kernels.DecodeRow(1, 1024, 0.01, 1500.0, 0.4, 0.02, 2.0, 0.001),
              kernels.DecodeRow(16, 32768, 1.0, 3200.0, 0.75, 1.5, 1.5, 0.002),
              kernels.DecodeRow(16, 131072, 4.0, 3000.0, long_ratio, None, None, None)]
    prefill = [kernels.PrefillRow(1, 1024, 0.5, 100.0, 1.0, 50.0, 0.01)]
    body = json.dumps({"device": "H200", "copy_gb_per_s": 4000.0, "decode": [asdict(r) for r in decode],
                       "prefill": [asdict(p) for p in prefill]}, indent=2)
    return "cupy: compiling kernels\n" + body + "\n"


def test_the_kernels_stage_turns_the_report_into_figures(gc: ModuleType, tmp_path: Path) -> None:
    env = _mod("gpu_check_env")
    commands = Commands(_result(0, _kernels_report()))
    (record,) = _run(gc, tmp_path, [_stage("kernels", 1, env.kernels_stage)], _resources(run_command=commands))
    assert commands.calls[0][0][1:] == ["benchmarks/kernels.py", "--quick", "--json"]
    rows = {f.name: (f.value, f.target, f.ok) for f in record.figures}
    assert rows == {
        "D2D copy": (4000.0, None, None),
        "decode b1 ctx1K KV GB/s / copy": (0.4, None, None),        # short context: no target
        "decode b1 ctx1K vs gather+SDPA": (2.0, ">= 1", True),
        "decode b16 ctx32K KV GB/s / copy": (0.75, ">= 0.7", True),
        "decode b16 ctx32K vs gather+SDPA": (1.5, ">= 1", True),
        "decode b16 ctx128K KV GB/s / copy": (0.65, ">= 0.7", False),
        "decode b16 ctx128K vs gather+SDPA": (None, None, None),   # the baseline did not fit
        "prefill s1 t1024 kernel": (100.0, None, None),
        "prefill s1 t1024 vs gather+SDPA": (2.0, None, None),
    }
    assert record.status == "ok" and record.info["report"]["device"] == "H200"


def test_the_kernels_stage_reports_a_failed_run(gc: ModuleType, tmp_path: Path) -> None:
    env = _mod("gpu_check_env")
    with pytest.raises(ValueError, match="no JSON"):
        env.parse_kernels_json("nothing here")
    commands = Commands(_result(2, "", "benchmarks/kernels.py needs a CUDA GPU"))
    (record,) = _run(gc, tmp_path, [_stage("kernels", 1, env.kernels_stage)], _resources(run_command=commands))
    assert record.status == "error" and "exited 2" in record.error and "needs a CUDA GPU" in record.error


# -- stages 1, 3, 4 and 5 over the fake CUDA runtime ---------------------------------------------------

@pytest.fixture
def runtime() -> Any:
    rt = FakeCudaRuntime(total_bytes=256 * MiB, max_register_bytes=1 * MiB, max_delay_s=0.0005)
    yield rt
    rt.close()


def _tiny(**changes: Any) -> Any:
    sizes = _mod("gpu_check_resources").Sizes(register_bytes=(1 * MiB, 2 * MiB), register_reps=(3, 2),
                                              register_chunk_bytes=1 * MiB,
                                              copy_bytes=1 * MiB, page_bytes=(64 * KiB, 128 * KiB),
                                              disk_bytes=256 * KiB, reps=3)
    return sizes if not changes else type(sizes)(**{**asdict(sizes), **changes})


def test_the_environment_stage_reports_the_machine_and_the_device(gc: ModuleType, tmp_path: Path, runtime: Any) -> None:
    env = _mod("gpu_check_env")
    (record,) = _run(gc, tmp_path, [_stage("environment", 1, env.environment_stage)],
                     _resources(runtime_factory=lambda index: runtime))
    assert record.status == "ok", record.error
    assert {"python", "torch", "cupy", "cuda_driver_version", "batch_copy", "rlimit_memlock", "dev_shm_bytes",
            "cpu_count", "machine", "device_total_bytes", "device_free_bytes"} <= set(record.info)
    assert record.info["device_total_bytes"] == 256 * MiB and record.info["runtime"] == "FakeCudaRuntime(cuda:0)"
    assert {"soft", "hard"} == set(record.info["rlimit_memlock"]) and "available" in record.info["batch_copy"]
    figures = {f.name: f.value for f in record.figures}
    assert figures["device memory total"] == pytest.approx(0.25) and figures["cpu cores"] >= 1


def test_without_a_device_every_cuda_stage_fails_with_the_cause(gc: ModuleType, tmp_path: Path) -> None:
    copies, env = _mod("gpu_check_copies"), _mod("gpu_check_env")
    opened = []

    def no_device(index: int) -> Any:
        opened.append(index)
        raise OSError("no CUDA device")

    records = _run(gc, tmp_path, [_stage("environment", 1, env.environment_stage),
                                  _stage("raw_copy", 1, copies.raw_copy_stage)], _resources(runtime_factory=no_device))
    assert [(r.status, r.error) for r in records] == [("error", "OSError: no CUDA device")] * 2
    assert opened == [0] and records[0].info["python"]  # opened once; the host facts still recorded


def test_host_register_is_chunked_timed_per_gib_and_undone(gc: ModuleType, tmp_path: Path, runtime: Any) -> None:
    copies = _mod("gpu_check_copies")
    timer = ScriptedTimer({"register 1MiB fresh": 0.004, "register 1MiB prefaulted": 0.002,
                           "register 2MiB": 0.006})
    (record,) = _run(gc, tmp_path, [_stage("host_register", 1, copies.host_register_stage)],
                     _resources(_tiny(), runtime_factory=lambda index: runtime), timer=timer)
    assert record.status == "ok", record.error
    assert {f.name: f.value for f in record.figures} == pytest.approx({
        "register 1MiB fresh": 0.004 * 1024, "register 1MiB prefaulted": 0.002 * 1024,
        "register 2MiB fresh": 0.006 * 512, "register 2MiB prefaulted": 0.006 * 512})
    # (fresh, prefaulted) x (3 reps of one 1 MiB chunk + 2 reps of two)
    assert runtime.calls("host_register") == 2 * (3 * 1 + 2 * 2)
    assert timer.labels.count("register 1MiB fresh") == 3 and timer.labels.count("register 2MiB fresh") == 2
    assert runtime.registered() == {}


def test_host_register_sizes_shrink_to_the_memory_there_is(gc: ModuleType, tmp_path: Path, runtime: Any) -> None:
    copies = _mod("gpu_check_copies")
    assert copies.fitting_sizes((8 * GiB, 1 * GiB), 3 * GiB) == [(8 * GiB, 2 * GiB), (1 * GiB, 1 * GiB)]
    assert copies.fitting_sizes((4 * MiB,), 512 * KiB) == [(4 * MiB, 0)]
    stage = _stage("host_register", 1, lambda ctx: copies.host_register_stage(ctx, room_bytes=1 * MiB))
    (record,) = _run(gc, tmp_path, [stage], _resources(_tiny(register_reps=(1, 1)),
                                                       runtime_factory=lambda index: runtime))
    assert [f.name for f in record.figures] == ["register 1MiB fresh", "register 1MiB prefaulted"]
    assert record.info["scaled_2MiB"] == "1MiB: not enough memory"


RAW_TIMES = {"h2d 1 copy": 0.0001, "d2h 1 copy": 0.0002, "h2d 64KiB": 0.0004, "d2h 64KiB": 0.0005,
             "h2d 128KiB": 0.0003, "d2h 128KiB": 0.00025, "h2d pageable": 0.001, "both": 0.00015}


def test_the_raw_copy_stage_measures_every_path_and_frees_everything(gc: ModuleType, tmp_path: Path,
                                                                   runtime: Any) -> None:
    copies = _mod("gpu_check_copies")
    timer = ScriptedTimer(RAW_TIMES)
    (record,) = _run(gc, tmp_path, [_stage("raw_copy", 1, copies.raw_copy_stage)],
                     _resources(_tiny(), runtime_factory=lambda index: runtime), timer=timer)
    assert record.status == "ok", record.error
    gb = MiB / 1e9
    assert {f.name: f.value for f in record.figures} == pytest.approx({
        "H2D pinned, 1 copy 1MiB": gb / 0.0001, "D2H pinned, 1 copy 1MiB": gb / 0.0002,
        "H2D then D2H bytes equal": 1.0,
        "H2D pinned, 64KiB pages, 1 batch": gb / 0.0004, "D2H pinned, 64KiB pages, 1 batch": gb / 0.0005,
        "H2D pinned, 128KiB pages, 1 batch": gb / 0.0003, "D2H pinned, 128KiB pages, 1 batch": gb / 0.00025,
        "H2D pageable, 1 copy 1MiB": gb / 0.001, "H2D + D2H at once (sum), 1 copy 1MiB": 2 * gb / 0.00015})
    assert timer.labels.count("h2d 1 copy 1MiB") == 3  # the reps; the warm-up is not timed
    assert runtime.allocations() == {} and runtime.registered() == {} and runtime.pending_copies() == 0


def test_page_copies_shuffle_the_device_side_only(gc: ModuleType) -> None:
    copies = _mod("gpu_check_copies")
    up = copies.page_copies(1 << 40, 4096, 4 * 100, 100, to_device=True)
    down = copies.page_copies(4096, 1 << 40, 4 * 100, 100, to_device=False)
    assert [c.src for c in up] == [4096 + 100 * i for i in range(4)] == [c.dst for c in down]
    assert sorted(c.dst for c in up) == [(1 << 40) + 100 * i for i in range(4)]
    assert [c.dst for c in up] == [c.src for c in down]  # D2H reads back what H2D wrote, in order


def test_tierd_moves_through_the_cuda_store_against_the_raw_ceiling(gc: ModuleType, tmp_path: Path,
                                                                     runtime: Any) -> None:
    copies, store = _mod("gpu_check_copies"), _mod("gpu_check_store")
    promote_s, demote_s = 0.0009, 0.00016
    timer = ScriptedTimer({**RAW_TIMES, "promote": promote_s, "demote": demote_s, "disk warm": 0.002,
                           "disk cold": 0.008})
    stages = [_stage("raw_copy", 1, copies.raw_copy_stage), _stage("tierd_moves", 1, store.tierd_stage)]
    raw, moves = _run(gc, tmp_path, stages, _resources(_tiny(), runtime_factory=lambda index: runtime), timer=timer)
    assert raw.status == "ok" and moves.status == "ok", moves.error
    h2d, d2h = MiB / 0.0001 / 1e9, MiB / 0.0002 / 1e9
    rows = {f.name: (f.value, f.ok) for f in moves.figures}
    promote, demote = MiB / promote_s / 1e9, MiB / demote_s / 1e9
    expected: dict[str, tuple[Any, bool | None]] = {}
    for label in ("16 x 64KiB", "8 x 128KiB"):
        expected[f"promote dram->hbm {label}"] = (pytest.approx(promote), None)
        expected[f"promote dram->hbm {label} / raw H2D"] = (pytest.approx(promote / h2d), False)  # 0.11
        expected[f"demote hbm->dram {label}"] = (pytest.approx(demote), None)
        expected[f"demote hbm->dram {label} / raw D2H"] = (pytest.approx(demote / d2h), True)     # 1.25
    expected["Acquire 16 x 64KiB / raw H2D time"] = (pytest.approx(promote_s / 0.0001), False)
    for label in ("4 x 64KiB", "2 x 128KiB"):
        expected[f"disk->hbm warm page cache, {label}"] = (pytest.approx(256 * KiB / 0.002 / 1e9), None)
        expected[f"disk->hbm cold page cache, {label}"] = (pytest.approx(256 * KiB / 0.008 / 1e9), None)
    assert rows == expected
    assert moves.info["demotion_64KiB_pages_in_dram_before"] == 0  # demotion copied, not dropped
    assert runtime.allocations() == {} and runtime.registered() == {}  # every store closed its memory


def test_tierd_moves_without_a_ceiling_fail_their_targets(gc: ModuleType, tmp_path: Path, runtime: Any) -> None:
    store = _mod("gpu_check_store")
    sizes = _tiny(page_bytes=(64 * KiB,), reps=1)
    (moves,) = _run(gc, tmp_path, [_stage("tierd_moves", 1, store.tierd_stage)],
                    _resources(sizes, runtime_factory=lambda index: runtime))
    targeted = [f for f in moves.figures if f.target is not None]
    assert moves.status == "ok" and len(targeted) == 3
    assert all(f.value is None and f.ok is False for f in targeted)


def test_the_whole_check_over_fakes_passes_when_every_target_is_met(gc: ModuleType, tmp_path: Path,
                                                                   runtime: Any,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    hooks = _mod("gpu_check_resources").Hooks(
        runtime_factory=lambda index: runtime,
        run_command=Commands(_result(0, "....\n4 passed, 9 deselected in 3.00s\n"),
                             _result(0, _kernels_report(long_ratio=0.8))))
    timer = ScriptedTimer({**RAW_TIMES, "promote": 0.0001, "demote": 0.0002})  # at the raw ceiling
    code, records = gc.run_gpu_check(["--budget-s", "480", "--out", str(tmp_path)], hooks=hooks, sizes=_tiny(),
                                     clock=Clock(), timer=timer)
    assert [(r.name, r.status) for r in records] == [(s.name, "ok") for s in gc.build_stages()]
    assert code == 0 and all(r.figures for r in records)
    report = json.loads("{" + capsys.readouterr().out.partition("\n{")[2])
    assert report["ok"] is True and report["environment"]["device_total_bytes"] == 256 * MiB
    assert runtime.allocations() == {} and runtime.registered() == {}
