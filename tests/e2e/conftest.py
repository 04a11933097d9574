"""Fixtures of the end-to-end tests: real tierd processes that are always ended."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import pytest
from e2e_daemon import TierdProcess, short_work_dir


@pytest.fixture()
def start_tierd() -> Iterator[Callable[..., TierdProcess]]:
    """``start_tierd(write_policy="write_back", fsync=False)`` -> a serving daemon."""
    daemons: list[TierdProcess] = []

    def start(**options: object) -> TierdProcess:
        daemon = TierdProcess(short_work_dir(), **options)  # type: ignore[arg-type]
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
def tierd(start_tierd: Callable[..., TierdProcess]) -> TierdProcess:
    return start_tierd()
