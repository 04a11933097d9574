"""The benchmark scripts' own logic, run on CPU so a mistake in them cannot waste GPU time.

``benchmarks/kernels.py`` needs a GPU to time anything; here its timer and memory probe are
replaced and the kernel calls fall through to the torch references on CPU tensors, so the shapes,
the SDPA baseline, the result rows and the table are all exercised. Its figures mean nothing here.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def kernels_bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = _load("kernels")

    def run_once(fn: Callable[[], object], iterations: int = 1) -> float:
        fn()
        return 1.0  # milliseconds: a fixed stand-in for CUDA event timing

    monkeypatch.setattr(module, "time_ms", run_once)
    monkeypatch.setattr(module, "free_bytes", lambda device: 1 << 34)
    return module


def test_decode_row_compares_the_kernel_with_gathered_sdpa(kernels_bench: ModuleType) -> None:
    row = kernels_bench.bench_decode(2, 100, 1000.0, torch.device("cpu"))
    assert row is not None and (row.batch, row.context) == (2, 100)
    kv_bytes = 2 * 100 * 2 * kernels_bench.NUM_KV_HEADS * kernels_bench.HEAD_DIM * 2
    assert row.kv_gb_per_s == pytest.approx(kv_bytes / 1e-3 / 1e9)
    assert row.ratio_to_copy == pytest.approx(row.kv_gb_per_s / 1000.0)
    assert row.speedup == pytest.approx(1.0)
    assert row.max_abs_diff is not None and row.max_abs_diff < 0.05  # reference vs SDPA, bf16


def test_prefill_row_checks_the_causal_output(kernels_bench: ModuleType) -> None:
    row = kernels_bench.bench_prefill(2, 40, torch.device("cpu"))
    assert row is not None and row.max_abs_diff is not None and row.max_abs_diff < 0.05
    flops = 4 * 2 * kernels_bench.NUM_HEADS * kernels_bench.HEAD_DIM * 40 * 40 / 2
    assert row.kernel_tflops == pytest.approx(flops / 1e-3 / 1e12)


def test_sizes_that_do_not_fit_are_skipped(kernels_bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels_bench, "free_bytes", lambda device: 1 << 20)
    assert kernels_bench.bench_decode(64, 131072, 1000.0, torch.device("cpu")) is None
    assert kernels_bench.bench_prefill(1, 16384, torch.device("cpu")) is None


def test_tables_print_every_row(kernels_bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    decode = [kernels_bench.bench_decode(1, 50, 1000.0, torch.device("cpu"))]
    prefill = [kernels_bench.bench_prefill(1, 32, torch.device("cpu"))]
    kernels_bench.print_tables("cpu", 1000.0, decode, prefill)
    out = capsys.readouterr().out
    assert "decode, Llama-3-8B" in out and "prefill (causal" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["1"]]
    assert [row[1] for row in rows] == ["50", "32"]  # one decode row, one prefill row


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_kernels_benchmark_says_it_needs_a_gpu(kernels_bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert kernels_bench.main(["--quick", "--json"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
