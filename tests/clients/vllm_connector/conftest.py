"""Fixtures of the vLLM connector tests: a served store on a short temp socket."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from server_harness import ServerThread, make_server


@pytest.fixture
def server(short_tmp: Path) -> Iterator[ServerThread]:
    srv = make_server(short_tmp)
    yield srv
    srv.stop()


@pytest.fixture
def server_at() -> Iterator[Callable[[Path], ServerThread]]:
    """``server_at(dir)`` starts a store served on ``dir/s.sock`` later in the test."""
    started: list[ServerThread] = []

    def start(directory: Path) -> ServerThread:
        started.append(make_server(directory))
        return started[-1]

    yield start
    for srv in started:
        srv.stop()
