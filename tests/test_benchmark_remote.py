"""``benchmarks/remote.py --quick``: every row measured against a real local cluster, its reads
checked, the ratios and the fleet rows reported (the figures themselves mean nothing here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from redis_cluster import missing_reason

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "remote.py"


def test_remote_benchmark_quick_run_reports_every_row(tmp_path: Path) -> None:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path / "remote.json"
    proc = subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    measured = {(r["page_bytes"], r["pages_per_call"], r["client"], r["op"]) for r in data["rows"]}
    assert len(measured) == 2 * 2 * 2 * 2  # sizes x (1, batch) pages per call x clients x ops
    assert all(r["gbps"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in data["rows"])
    assert len(data["ratios"]) == 8
    fleet = data["fleet"]
    assert fleet["remote_fraction_first"] == 1.0  # B finds A's whole shared prefix remotely
    assert "tierd/redis-py" in proc.stdout and "fleet:" in proc.stdout
