"""Fixtures of the transformers tests: real tierd daemons (``tests/e2e/e2e_daemon.py``), always ended."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import pytest
from e2e.e2e_daemon import TierdProcess, short_work_dir


@pytest.fixture()
def start_daemon() -> Iterator[Callable[[], TierdProcess]]:
    """``start_daemon()`` -> a serving daemon (write_back, a namespace gets 2 MiB of dram)."""
    daemons: list[TierdProcess] = []

    def start() -> TierdProcess:
        daemon = TierdProcess(short_work_dir())
        daemons.append(daemon)
        daemon.start()
        return daemon

    try:
        yield start
    finally:
        for daemon in daemons:
            daemon.stop()
            daemon.cleanup()
            shutil.rmtree(daemon.work_dir, ignore_errors=True)


@pytest.fixture()
def daemon(start_daemon: Callable[[], TierdProcess]) -> TierdProcess:
    return start_daemon()
