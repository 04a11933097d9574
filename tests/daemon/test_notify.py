"""sd_notify over a fake NOTIFY_SOCKET: path and abstract addresses, watchdog interval."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tierd.daemon.notify import SdNotifier, notify_address, watchdog_interval_s


@pytest.fixture
def listener(short_tmp: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(short_tmp / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


def test_messages_reach_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = SdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("serving on unix:/x")
    got = fields(sock.recv(4096))
    assert got["READY"] == "1" and got["STATUS"] == "serving on unix:/x"
    assert got["MAINPID"] == str(os.getpid())
    notifier.watchdog()
    assert fields(sock.recv(4096)) == {"WATCHDOG": "1"}
    notifier.extend_timeout(2.5)
    assert fields(sock.recv(4096)) == {"EXTEND_TIMEOUT_USEC": "2500000"}
    notifier.stopping("bye")
    assert fields(sock.recv(4096)) == {"STOPPING": "1", "STATUS": "bye"}
    notifier.close()
    notifier.close()


def test_messages_reach_an_abstract_socket() -> None:
    name = f"tierd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        notifier = SdNotifier({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.status("warming up")
        assert fields(sock.recv(4096)) == {"STATUS": "warming up"}
        notifier.close()


def test_without_systemd_nothing_is_sent() -> None:
    notifier = SdNotifier({})
    assert not notifier.enabled and not notifier.ready("x") and notifier.watchdog_interval_s is None
    assert notify_address({"NOTIFY_SOCKET": "relative/path"}) is None


def test_a_vanished_socket_is_reported_not_raised(short_tmp: Path) -> None:
    notifier = SdNotifier({"NOTIFY_SOCKET": str(short_tmp / "gone")})
    assert notifier.enabled and not notifier.ready("x") and not notifier.watchdog()


@pytest.mark.parametrize(("env", "expected"), [
    ({"WATCHDOG_USEC": "4000000"}, 2.0),
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1234"}, 2.0),   # pid 1234 is "us" below
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "999"}, None),   # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(env, pid=1234) == expected
