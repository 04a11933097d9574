"""Fixtures shared by every test folder: the tests/ helpers on the path, short temp dirs."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="td-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
