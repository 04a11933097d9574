"""What the benchmarks report about the machine they ran on (their figures mean little without)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``"unknown cpu"`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


def kernel() -> str:
    return f"{platform.system()} {platform.release()}"


def describe() -> str:
    """``model, N cores, kernel``: one line for a report."""
    return f"{cpu_model()}, {os.cpu_count()} cores, {kernel()}"
