"""Fixtures of the end-to-end tests: real tierd processes that are always ended."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from e2e_daemon import TierdProcess, daemon_starter


@pytest.fixture()
def start_tierd() -> Iterator[Callable[..., TierdProcess]]:
    """``start_tierd(write_policy="write_back", fsync=False)`` -> a serving daemon."""
    with daemon_starter() as start:
        yield start


@pytest.fixture()
def tierd(start_tierd: Callable[..., TierdProcess]) -> TierdProcess:
    return start_tierd()
