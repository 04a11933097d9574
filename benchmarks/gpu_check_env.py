"""GPU check stages 1, 2 and 6: the environment, ``pytest -m cuda`` and ``benchmarks/kernels.py``.

The two subprocess stages run through ``Hooks.run_command`` with the slice left as their timeout;
their output parsers are pure functions (tested on sample outputs).
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import platform
import re
import resource
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gpu_check_driver import StageContext, StageTimeout, Target
from gpu_check_resources import GiB, Resources
from machine_info import cpu_model, describe, kernel

OUTPUT_TAIL_CHARS = 3000
LONG_CONTEXT_TOKENS = 32768  # decode at this context and above must reach 0.7 of the copy bandwidth
DECODE_RATIO_TARGET = 0.7
# cuMemcpyBatchAsync entry points a driver may export (CUDA 12.8 and 13 names).
BATCH_COPY_SYMBOLS = ("cuMemcpyBatchAsync", "cuMemcpyBatchAsync_v2")
CUDA_BATCH_VERSION = 12080


def _probe(fn: Callable[[], Any]) -> Any:
    """``fn()``, or a one-line note of why it could not answer (an environment report never fails)."""
    try:
        return fn()
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"


def _module_version(name: str) -> str | None:
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:
        return None


def _libcuda() -> ctypes.CDLL:
    return ctypes.CDLL("libcuda.so.1")


def driver_version() -> int:
    """``cuDriverGetVersion`` (e.g. 12080 for CUDA 12.8) from libcuda itself."""
    version = ctypes.c_int(0)
    status = _libcuda().cuDriverGetVersion(ctypes.byref(version))
    if status != 0:
        raise OSError(f"cuDriverGetVersion returned CUresult {status}")
    return version.value


def batch_copy_support() -> dict[str, Any]:
    """Whether ``cuMemcpyBatchAsync`` can be called: libcuda's exported names, and the versioned
    entry point as cuda-bindings resolves it (the way tierd and vLLM look it up)."""
    lib = _probe(_libcuda)
    symbols = [s for s in BATCH_COPY_SYMBOLS if not isinstance(lib, str) and hasattr(lib, s)]
    bindings = _probe(_bindings_batch_copy)
    return {"libcuda_symbols": symbols, "libcuda": lib if isinstance(lib, str) else "loaded",
            "cuda_bindings": bindings, "available": bool(symbols) or bindings is True}


def _bindings_batch_copy() -> bool:
    try:
        driver: Any = importlib.import_module("cuda.bindings.driver")
    except ImportError:
        driver = importlib.import_module("cuda.cuda")  # cuda-python before 12.6
    driver.cuInit(0)
    result = driver.cuGetProcAddress(b"cuMemcpyBatchAsync", CUDA_BATCH_VERSION, 0)
    status, pfn = result[0], result[1]
    return bool(status == driver.CUresult.CUDA_SUCCESS and int(pfn) != 0)


def _limit(value: int) -> int | str:
    return "unlimited" if value == resource.RLIM_INFINITY else value


def _meminfo_bytes(field_name: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field_name} in /proc/meminfo")


def _shm_bytes() -> dict[str, int]:
    st = os.statvfs("/dev/shm")
    return {"total": st.f_blocks * st.f_frsize, "free": st.f_bavail * st.f_frsize}


def _cupy_versions() -> dict[str, int]:
    runtime: Any = importlib.import_module("cupy.cuda.runtime")  # no CuPy, no stubs: probed
    return {"runtime": int(runtime.runtimeGetVersion()), "driver": int(runtime.driverGetVersion())}


def _device_name(index: int) -> str:
    import torch

    if torch.cuda.is_available():
        return str(torch.cuda.get_device_name(index))
    runtime: Any = importlib.import_module("cupy.cuda.runtime")
    name = runtime.getDeviceProperties(index)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def host_facts() -> dict[str, Any]:
    """Everything about the machine that needs no GPU."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    import torch

    return {"machine": describe(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "kernel": kernel(),
            "python": platform.python_version(), "executable": sys.executable,
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "torch_cuda_available": bool(torch.cuda.is_available()), "cupy": _module_version("cupy"),
            "cuda_bindings": _module_version("cuda.bindings"),
            "rlimit_memlock": {"soft": _limit(soft), "hard": _limit(hard)},
            "dev_shm_bytes": _probe(_shm_bytes), "mem_total_bytes": _probe(lambda: _meminfo_bytes("MemTotal")),
            "mem_available_bytes": _probe(lambda: _meminfo_bytes("MemAvailable"))}


def environment_stage(ctx: StageContext) -> None:
    """Stage 1: versions, the device and its memory, batch copy support, memlock, /dev/shm."""
    res: Resources = ctx.resources
    facts = host_facts()
    for key, value in facts.items():
        ctx.note(key, value)
    ctx.note("cuda_driver_version", _probe(driver_version))
    if facts["cupy"] is not None:
        ctx.note("cupy_cuda_versions", _probe(_cupy_versions))
    ctx.note("batch_copy", batch_copy_support())
    ctx.add("cpu cores", float(facts["cpu_count"] or 0), "cores")
    shm = facts["dev_shm_bytes"]
    if isinstance(shm, dict):
        ctx.add("/dev/shm size", shm["total"] / GiB, "GiB")
    ctx.add("cuMemcpyBatchAsync available", float(ctx.info["batch_copy"]["available"]), "bool")
    ctx.note("device_index", res.device_index)
    if facts["torch_cuda_available"] or facts["cupy"] is not None:
        ctx.note("device_name", _probe(lambda: _device_name(res.device_index)))
    runtime = res.runtime()  # raises when there is no device: the stage fails
    ctx.note("runtime", repr(runtime))  # CupyRuntime's says whether it batches copies
    free_bytes, total_bytes = runtime.mem_info()
    ctx.note("device_total_bytes", total_bytes)
    ctx.note("device_free_bytes", free_bytes)
    ctx.add("device memory total", total_bytes / GiB, "GiB")
    ctx.add("device memory free", free_bytes / GiB, "GiB")


# -- stage 2: pytest -m cuda ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PytestSummary:
    """Counts from pytest's last summary line; ``first_failure`` its first FAILED/ERROR line."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    deselected: int = 0
    xfailed: int = 0
    xpassed: int = 0
    summary_line: str | None = None
    first_failure: str | None = None


_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)\b")
_FIELD = {"error": "errors", "errors": "errors"}
_PROGRESS = re.compile(r"^([.sFExX]+)(\s+\[\s*\d+%\])?$")
_PROGRESS_FIELD = {".": "passed", "s": "skipped", "F": "failed", "E": "errors", "x": "xfailed", "X": "xpassed"}


def parse_pytest_summary(output: str) -> PytestSummary:
    """What a ``pytest -q`` run printed, read back: the counts of its final line (``3 passed,
    1 skipped in 2.0s``, with or without ``=`` rules) and its first ``FAILED``/``ERROR`` line."""
    lines = [line.strip() for line in output.splitlines()]
    summary = next((line for line in reversed(lines) if re.search(r"\bin [\d.]+s\b", line)
                    and (_COUNT.search(line) or "no tests ran" in line)), None)
    counts: dict[str, int] = {}
    for number, word in _COUNT.findall(summary or ""):
        counts[_FIELD.get(word, word)] = counts.get(_FIELD.get(word, word), 0) + int(number)
    if summary is None:  # killed before the end: count its progress characters instead
        for line in lines:
            if (match := _PROGRESS.match(line)) is not None:
                for char in match.group(1):
                    counts[_PROGRESS_FIELD[char]] = counts.get(_PROGRESS_FIELD[char], 0) + 1
    first = next((line for line in lines if line.startswith(("FAILED ", "ERROR "))), None)
    return PytestSummary(summary_line=summary.strip("= ") if summary else None, first_failure=first, **counts)


def pytest_stage(ctx: StageContext) -> None:
    """Stage 2: ``pytest -m cuda -x -q tests`` in a subprocess, within the slice."""
    res: Resources = ctx.resources
    argv = [sys.executable, "-m", "pytest", "-m", "cuda", "-x", "-q", "-p", "no:cacheprovider", "tests"]
    ctx.note("command", " ".join(argv[1:]))
    result = res.hooks.run_command(argv, ctx.remaining_s(), res.repo_root)
    summary = parse_pytest_summary(result.stdout)
    ctx.note("returncode", result.returncode)
    ctx.note("summary", asdict(summary))
    ctx.note("output_tail", (result.stdout + result.stderr)[-OUTPUT_TAIL_CHARS:])
    ctx.add("passed", float(summary.passed), "tests", Target(">=", 1))
    ctx.add("failed + errors", float(summary.failed + summary.errors), "tests", Target("<=", 0))
    ctx.add("skipped", float(summary.skipped), "tests")
    if result.timed_out:
        raise StageTimeout(f"pytest was still running at the end of the slice ({ctx.name}); killed")
    if summary.summary_line is None:
        raise RuntimeError(f"pytest printed no summary (exit status {result.returncode}): "
                           f"{(result.stderr or result.stdout)[-300:]}")


# -- stage 6: benchmarks/kernels.py ---------------------------------------------------------------------

def parse_kernels_json(stdout: str) -> dict[str, Any]:
    """The one JSON object ``kernels.py --json`` prints (anything printed around it ignored)."""
    start, end = stdout.find("{"), stdout.rfind("}")
    if start < 0 or end < start:
        raise ValueError(f"kernels.py printed no JSON object: {stdout[-300:]!r}")
    report = json.loads(stdout[start:end + 1])
    if not isinstance(report, dict) or not {"copy_gb_per_s", "decode", "prefill"} <= report.keys():
        raise ValueError("kernels.py JSON lacks copy_gb_per_s, decode or prefill")
    return report


def add_kernel_figures(ctx: StageContext, report: dict[str, Any]) -> None:
    """Decode: KV GB/s as a share of the D2D copy (>= 0.7 at long contexts) and the speedup over
    gather + SDPA (faster: >= 1); prefill: TFLOP/s and the speedup over gather + SDPA."""
    ctx.add("D2D copy", float(report["copy_gb_per_s"]), "GB/s")
    for row in report["decode"]:
        shape = f"decode b{row['batch']} ctx{row['context'] // 1024}K"
        long_context = row["context"] >= LONG_CONTEXT_TOKENS
        ctx.add(f"{shape} KV GB/s / copy", float(row["ratio_to_copy"]), "x",
                Target(">=", DECODE_RATIO_TARGET) if long_context else None)
        speedup = row.get("speedup")
        ctx.add(f"{shape} vs gather+SDPA", None if speedup is None else float(speedup), "x",
                None if speedup is None else Target(">=", 1.0))
    for row in report["prefill"]:
        shape = f"prefill s{row['sequences']} t{row['tokens']}"
        ctx.add(f"{shape} kernel", float(row["kernel_tflops"]), "TFLOP/s")
        sdpa_ms = row.get("sdpa_ms")
        ctx.add(f"{shape} vs gather+SDPA", None if sdpa_ms is None else float(sdpa_ms) / float(row["kernel_ms"]), "x")


def kernels_stage(ctx: StageContext) -> None:
    """Stage 6: ``benchmarks/kernels.py --quick --json`` in a subprocess, its figures in the table."""
    res: Resources = ctx.resources
    argv = [sys.executable, "benchmarks/kernels.py", "--quick", "--json"]
    result = res.hooks.run_command(argv, ctx.remaining_s(), res.repo_root)
    ctx.note("returncode", result.returncode)
    ctx.note("stderr_tail", result.stderr[-OUTPUT_TAIL_CHARS:])
    if result.timed_out:
        raise StageTimeout("kernels.py was still running at the end of the slice; killed")
    if result.returncode != 0:
        raise RuntimeError(f"kernels.py exited {result.returncode}: {result.stderr.strip()[-300:]}")
    report = parse_kernels_json(result.stdout)
    ctx.note("report", report)
    add_kernel_figures(ctx, report)
