"""The region socket's life cycle and limits: idempotent start/close, the file removed on close,
a path another process serves refused, a stale socket file replaced, and connections past
``max_connections`` answered "unavailable" at once rather than queued behind idle ones."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tierd.errors import ConfigError
from tierd.region_wire import GRANT_BYTES, MAX_REPLY_BYTES, RegionOp, RegionReply, RegionRequest, RegionStatus
from tierd.server.region_socket import RegionSocket, RegionSocketSettings

GRANT = bytes(range(GRANT_BYTES))


@contextlib.contextmanager
def one_fd_for_grant(grant: bytes) -> Iterator[int | None]:
    yield None if grant != GRANT else 0  # fd 0 stands in for a region's descriptor


def ask(path: Path, op: RegionOp, grant: bytes = GRANT) -> RegionReply:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30.0)
        conn.connect(str(path))
        with contextlib.suppress(BrokenPipeError):  # a busy socket answers before reading
            conn.sendall(RegionRequest(op, grant).encode())
        data, fds, _flags, _addr = socket.recv_fds(conn, MAX_REPLY_BYTES, 1)
    for fd in fds:
        os.close(fd)
    return RegionReply.decode(data)


def test_start_close_are_idempotent_and_close_removes_the_socket(short_tmp: Path) -> None:
    path = short_tmp / "r.sock"
    regions = RegionSocket(RegionSocketSettings(path, mode=0o600), one_fd_for_grant)
    regions.start()
    regions.start()
    assert path.is_socket() and (path.stat().st_mode & 0o777) == 0o600
    assert ask(path, RegionOp.CHECK).status is RegionStatus.OK
    assert ask(path, RegionOp.CHECK, bytes(GRANT_BYTES)).status is RegionStatus.NOT_FOUND
    regions.close()
    regions.close()
    assert not path.exists()


def test_a_served_path_is_refused_and_a_stale_one_replaced(short_tmp: Path) -> None:
    path = short_tmp / "r.sock"
    with RegionSocket(RegionSocketSettings(path), one_fd_for_grant):
        with pytest.raises(ConfigError, match="another process serves the socket .*server.region_socket"):
            RegionSocket(RegionSocketSettings(path), one_fd_for_grant).start()
        assert ask(path, RegionOp.OPEN).status is RegionStatus.OK  # the first still serves
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on: what a killed daemon leaves
    with RegionSocket(RegionSocketSettings(path), one_fd_for_grant):
        assert ask(path, RegionOp.CHECK).status is RegionStatus.OK
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="is not a socket"):
        RegionSocket(RegionSocketSettings(path), one_fd_for_grant).start()
    assert path.read_text() == "not a socket"


def test_connections_past_the_limit_are_turned_away_at_once(short_tmp: Path) -> None:
    path = short_tmp / "r.sock"
    settings = RegionSocketSettings(path, timeout_s=60.0, max_connections=1, threads=1)
    with RegionSocket(settings, one_fd_for_grant), \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(path))  # holds the one exchange: it sends nothing
        busy = ask(path, RegionOp.CHECK)
        assert busy.status is RegionStatus.UNAVAILABLE and "busy" in busy.message
        idle.close()
        for _ in range(1000):  # the idle exchange ends when its peer closes; then it serves again
            if ask(path, RegionOp.CHECK).status is RegionStatus.OK:
                break
        else:
            pytest.fail("the region socket never served again after the idle peer left")
