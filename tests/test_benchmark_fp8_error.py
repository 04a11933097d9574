"""``benchmarks/fp8_error.py`` in its quick configuration: a real daemon, a tiny random Llama, every
restore read from the disk tier, and the figures it reports are well-formed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def fp8_bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # local_servers, machine_info
    spec = importlib.util.spec_from_file_location("bench_fp8_error", BENCHMARKS / "fp8_error.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_restores_every_namespace_from_disk(fp8_bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "fp8.json"
    assert fp8_bench.main(["--quick", "--dtypes", "bfloat16", "float32", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["problems"] == [] and report["steps"] == 8 and report["pages"] == 2
    rows = {(row["dtype"], row["form"]): row for row in report["rows"]}
    assert set(rows) == {(d, f) for d in ("bfloat16", "float32")
                         for f in ("exact", "fp8_e4m3", "fp8_e4m3_kivi", "recompute")}
    for (_, form), row in rows.items():
        assert 0 <= row["greedy_agree"] <= row["greedy_steps"] == 8
        assert row["logits_kl"] >= 0 and row["logits_max_abs_diff"] >= 0
        if form == "exact":  # against itself
            assert row["logits_max_abs_diff"] == 0 and row["first_divergence"] is None
        if form != "recompute":
            assert row["restored_from"] == {"disk": 2} and row["restored_tokens"] == 32
        if form.startswith("fp8"):
            assert 0 < row["logits_max_abs_diff"] < 1.0  # lossy, but close on this model
    disk = report["disk"]
    # 2 dtypes x 2 fp8 namespaces x 2 pages quantized (a page of token 0s may add none: no reconnect)
    assert disk["quantized_pages"] == 8 and disk["quantized_bytes_saved"] > 0


def test_the_comparison_counts_agreement_and_the_first_divergence(fp8_bench: ModuleType) -> None:
    logits = torch.tensor([2.0, 1.0, 0.0])
    exact = fp8_bench.Outcome(logits, [1, 2, 3, 4])
    other = fp8_bench.Outcome(logits + torch.tensor([0.0, 0.5, 0.0]), [1, 2, 9, 4], 32, {"disk": 2})
    row = fp8_bench.compare("float16", "fp8_e4m3", exact, other)
    assert (row.greedy_agree, row.greedy_steps, row.first_divergence) == (3, 4, 2)
    assert row.logits_max_abs_diff == pytest.approx(0.5) and row.logits_kl > 0
    assert fp8_bench.problems([row], 2, 16) == []
    assert fp8_bench.problems([fp8_bench.compare("float16", "fp8_e4m3", exact, exact)], 2, 16)
