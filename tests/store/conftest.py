"""Fixtures of the page-store tests: every store test runs on the CPU engine and on the strict
fake device engine (hbm without a host view, copies that land after a delay)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from store_helpers import DEVICES, SPEC, small_config

from tierd.spec import Namespace
from tierd.store import PageStore


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(tmp_path: Path, device: str) -> Iterator[PageStore]:
    with PageStore(small_config(tmp_path / "data", device=device)) as s:
        yield s


@pytest.fixture
def ns(store: PageStore) -> Namespace:
    return store.register(SPEC)
