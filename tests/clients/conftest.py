"""Fixtures of the client-only tests: a scripted daemon (fake_tierd.py) on a temporary socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_tierd import FakeDaemon, start_fake_daemon


@pytest.fixture()
def fake_daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    server, daemon = start_fake_daemon(tmp_path / "fake.sock")
    try:
        yield daemon
    finally:
        server.stop(grace=None).wait(timeout=10)
