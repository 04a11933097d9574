"""Fixtures shared by the page-store tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from store_helpers import SPEC, small_config  # noqa: E402

from tierd.spec import Namespace  # noqa: E402
from tierd.store import PageStore  # noqa: E402


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PageStore]:
    with PageStore(small_config(tmp_path / "data")) as s:
        yield s


@pytest.fixture
def ns(store: PageStore) -> Namespace:
    return store.register(SPEC)
