"""Fixtures of the servicer tests: a served store on a temp unix socket and raw stubs to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import TENANT_TOKENS, ServerThread, make_server, open_channel, serving_settings

from tierd.config import WritePolicy
from tierd.v1 import tierd_pb2_grpc as pb_grpc


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
def tenant_server(short_tmp: Path) -> Iterator[ServerThread]:
    """Tenants alpha and bravo (``server_harness.ALPHA_TOKEN``, ``BRAVO_TOKEN``), no quotas."""
    srv = make_server(short_tmp, serving_settings(tenant_tokens=TENANT_TOKENS))
    yield srv
    srv.stop()


@pytest.fixture
def stub(server: ServerThread) -> Iterator[pb_grpc.TierdStub]:
    with open_channel(server) as channel:
        yield pb_grpc.TierdStub(channel)
