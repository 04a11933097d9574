"""Fixtures of the daemon tests: a served store on a temp unix socket and raw stubs to it."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from daemon_harness import ServerThread, make_server, open_channel  # noqa: E402

from tierd.config import WritePolicy  # noqa: E402
from tierd.v1 import tierd_pb2_grpc as pb_grpc  # noqa: E402


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="td-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(short_tmp: Path) -> Iterator[ServerThread]:
    srv = make_server(short_tmp)
    yield srv
    srv.stop()


@pytest.fixture
def write_through_server(short_tmp: Path) -> Iterator[ServerThread]:
    srv = make_server(short_tmp, write_policy=WritePolicy.WRITE_THROUGH)
    yield srv
    srv.stop()


@pytest.fixture
def stub(server: ServerThread) -> Iterator[pb_grpc.TierdStub]:
    with open_channel(server) as channel:
        yield pb_grpc.TierdStub(channel)
