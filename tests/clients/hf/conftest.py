"""Fixtures of the transformers tests: real tierd daemons (``tests/e2e/e2e_daemon.py``), always ended."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e.e2e_daemon import TierdProcess, daemon_starter
from server_harness import ServerThread


@pytest.fixture()
def start_daemon() -> Iterator[Callable[[], TierdProcess]]:
    """``start_daemon()`` -> a serving daemon (write_back, a namespace gets 2 MiB of dram)."""
    with daemon_starter() as start:
        yield start


@pytest.fixture()
def daemon(start_daemon: Callable[[], TierdProcess]) -> TierdProcess:
    return start_daemon()


@pytest.fixture()
def server(short_tmp: Path) -> Iterator[ServerThread]:
    """The paged tests' in-process daemon (fp32 pages, ``hf_paged_helpers.start_server``)."""
    from hf_paged_helpers import start_server  # imports transformers: only for the tests using it

    srv = start_server(short_tmp)
    yield srv
    srv.stop()
