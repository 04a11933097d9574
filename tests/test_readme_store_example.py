"""The README's page-store example runs as written."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_store_example_runs(tmp_path: Path) -> None:
    section = README.read_text().split("## The page store as a library", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(code)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        os.chdir(cwd)
    assert (tmp_path / "var" / "store").is_dir()
