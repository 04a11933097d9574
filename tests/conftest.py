"""Fixtures shared by every test folder: the tests/ helpers on the path, short temp dirs."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="td-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


import typing  # noqa: E402  (the Redis Cluster fixtures below are appended to this module)

if typing.TYPE_CHECKING:
    from redis_cluster import RedisClusterFixture


def _redis_cluster_or_skip(**options: typing.Any) -> RedisClusterFixture:
    """A started ``redis_cluster.RedisClusterFixture``, or a skip saying what is missing."""
    import redis_cluster as helpers

    reason = helpers.missing_reason(tls=bool(options.get("tls", False)))
    if reason is not None:
        pytest.skip(f"Redis Cluster tests need redis-server, redis-cli and redis-py: {reason}")
    return helpers.RedisClusterFixture(**options).start()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterFixture]:
    """One 3-master Redis Cluster shared by the session's non-destructive tests."""
    cluster = _redis_cluster_or_skip()
    yield cluster
    cluster.close()


@pytest.fixture
def clean_redis_cluster(redis_cluster: RedisClusterFixture) -> RedisClusterFixture:
    """The shared cluster, emptied (FLUSHALL on every master)."""
    redis_cluster.flushall()
    return redis_cluster


@pytest.fixture
def private_redis_cluster(request: pytest.FixtureRequest) -> Iterator[RedisClusterFixture]:
    """A fresh cluster of this test alone, for kills, hangs and reshards. Options (a password,
    ``tls``) by indirect parametrization: ``parametrize("private_redis_cluster",
    [{"password": "pw"}], indirect=True)``."""
    cluster = _redis_cluster_or_skip(**getattr(request, "param", {}))
    yield cluster
    cluster.close()
