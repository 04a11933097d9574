"""A real daemon whose data dir fills up: it keeps serving from memory, counts and reports the
failed writes (Stats, tierctl, /metrics, one log line per interval), answers Flush with the OS
error, resumes writing once space is back, and exits 1 naming the pages SIGTERM could not save."""

from __future__ import annotations

import shutil
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest
from disk_full import FillableFs, small_tmpfs
from e2e_daemon import SPEC, TierdProcess, short_work_dir
from test_e2e_daemon import WAIT_S, assert_pages, make_pages, tierctl, token_ids

from tierd.tiers.write_failures import NO_SPACE_TEXT, WRITE_FAILURE_LOG_INTERVAL_S
from tierd_client import ResourceExhaustedError, TierClient

pytestmark = pytest.mark.slow

FS_BYTES = 32 << 20
# Long enough that a flush which waited for it instead of reporting the failure would hang.
FLUSH_TIMEOUT_S = 600.0
FAILURE_LINE = "commit(s) failed"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture()
def daemon_on_small_fs() -> Iterator[tuple[TierdProcess, FillableFs, int]]:
    """A write_through daemon whose data dir is a small tmpfs; and its metrics port."""
    port = free_port()
    daemon = TierdProcess(short_work_dir(), write_policy="write_through", disk_capacity="8MiB",
                          metrics=f"127.0.0.1:{port}")
    try:
        with small_tmpfs(daemon.data_dir, FS_BYTES) as fs:
            try:
                daemon.start()
                yield daemon, fs, port
            finally:
                daemon.stop()
                daemon.cleanup()
    finally:
        shutil.rmtree(daemon.work_dir, ignore_errors=True)


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT_S) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_a_full_disk_is_reported_served_around_and_recovered(
        daemon_on_small_fs: tuple[TierdProcess, FillableFs, int]) -> None:
    daemon, fs, port = daemon_on_small_fs
    started_s = time.monotonic()
    pages = make_pages(13, seed=41)
    with TierClient(daemon.socket_path) as client:
        ns = client.register(SPEC)
        keys = ns.keys(token_ids(13, seed=41))
        assert client.put(ns, keys[:4], pages[:4], wait_durable=True, durable_timeout_s=WAIT_S).durable

        fs.fill()
        late = client.put(ns, keys[4:10], pages[4:10], wait_durable=True, durable_timeout_s=WAIT_S)
        assert late.num_stored == 6 and not late.durable  # stored in memory, not on disk
        assert_pages(client, ns, keys[:10], pages[:10])
        with pytest.raises(ResourceExhaustedError, match=r"6 page\(s\) are in memory only") as failed:
            client.flush(timeout_s=FLUSH_TIMEOUT_S)
        assert NO_SPACE_TEXT in failed.value.details
        stats = client.stats()
        assert stats.disk_write_failures >= 6 and NO_SPACE_TEXT in stats.disk_write_error
        shown = tierctl(daemon, "stats")
        assert shown.returncode == 0 and f"disk write failures {stats.disk_write_failures}" in shown.stdout
        assert f"disk writes are failing: {stats.disk_write_error}" in shown.stdout
        refused = tierctl(daemon, "flush")
        assert refused.returncode == 1 and NO_SPACE_TEXT in refused.stderr
        assert metric(port, "tierd_disk_write_failures_total") >= 6

        fs.drain()  # space is back: the same daemon writes the same pages
        assert client.flush(timeout_s=FLUSH_TIMEOUT_S) == 6
        assert client.stats().disk_write_error == ""

        fs.fill()
        client.put(ns, keys[10:], pages[10:])
    assert daemon.terminate() == 1
    elapsed_s = time.monotonic() - started_s
    log = daemon.log_tail()
    assert "3 page(s) held in memory only were lost" in log
    assert "Traceback" not in daemon.log_path.read_text()
    # Failures are reported at once, then at most once per interval, and what no line counted
    # yet when the writer stops (the second streak, after the space came back); never a line per
    # failed commit.
    failure_lines = daemon.log_path.read_text().count(FAILURE_LINE)
    assert 2 <= failure_lines <= 2 + elapsed_s / WRITE_FAILURE_LOG_INTERVAL_S

    fs.drain()
    daemon.start()
    with TierClient(daemon.socket_path) as client:
        ns = client.register(SPEC)
        assert client.lookup(ns, keys) == 10
        assert_pages(client, ns, keys[:10], pages[:10])
