"""Sizes and durations with units, as written in config files and flags (``64GiB``, ``512MiB``)."""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes from ``"64GiB"``, ``"1.5 GB"``, ``"4096"`` or an int; ``ValueError`` says the forms."""
    if isinstance(text, bool):
        raise ValueError(f"size must be a number of bytes or a string like '64GiB', got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative, got {text}")
        return text
    match = _SIZE_RE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"cannot read size {text!r}: write a number with an optional unit "
                         "(B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), e.g. '512MiB'")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_size(num_bytes: int | float) -> str:
    """``1536`` -> ``"1.5 KiB"``; for messages and tables."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
