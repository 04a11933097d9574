"""tierctl against the scripted daemon: stats (table, JSON, watch and Ctrl-C), health, flush,
check-config, the default socket and the hint when no daemon answers."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from fake_tierd import FakeDaemon, start_fake_daemon
from grpc_health.v1 import health_pb2

from tierd.tier import Tier
from tierd_client import DaemonStats, PageSpec, RemoteTierStats, TierClient, TierStats
from tierd_client.options import DEFAULT_SOCKET_PATH
from tierd_client.tierctl import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNREACHABLE, format_stats, main

SPEC = PageSpec(model="m@1", dtype="float16", num_layers=1, num_kv_heads=1, head_dim=4,
                page_tokens=2)
PROCESS_TIMEOUT_S = 60.0
POLL_S = 0.01
# How long a tierctl that dies of the SIGINT gets to do so before the held call is released.
INTERRUPT_SETTLE_S = 2.0
TIER_FIELDS = {"capacity_bytes", "used_bytes", "pages", "hits", "misses", "evictions", "bytes_in",
               "bytes_out"}


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def test_stats_json_has_every_field_with_the_daemons_numbers(fake_daemon: FakeDaemon) -> None:
    with TierClient(fake_daemon.socket_path) as client:
        ns = client.register(SPEC)
        client.put(ns, ns.keys(range(6)), [bytes(SPEC.page_bytes)] * 3)
    code, text = _run("--socket", str(fake_daemon.socket_path), "stats", "--json")
    assert code == EXIT_OK
    data = json.loads(text)
    assert set(data["tiers"]) == {"hbm", "dram", "disk"}
    for index, label in enumerate(("hbm", "dram", "disk"), start=1):
        tier = data["tiers"][label]
        assert set(tier) >= TIER_FIELDS
        # The fake reports capacity 1000 * wire tier and the page count it holds.
        assert tier["capacity_bytes"] == 1000 * index and tier["pages"] == 3
        assert tier["evictions"] == 3 * index and tier["bytes_out"] == 5 * index
    assert (data["namespaces"], data["leases"], data["checksum_failures"]) == (1, 0, 0)
    assert data["uptime_s"] == pytest.approx(12.5)
    assert data["write_policy"] == "write_through"


def test_stats_table_names_each_tier(fake_daemon: FakeDaemon) -> None:
    code, text = _run("--socket", str(fake_daemon.socket_path), "stats")
    assert code == EXIT_OK
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["tier", "capacity", "used"]
    assert [line.split()[0] for line in lines[1:4]] == ["hbm", "dram", "disk"]
    assert "namespaces 1" in text and "write policy write_through" in text


INTERACTIVE_TIERCTL = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                       "sys.argv[0] = 'tierctl'; runpy.run_module('tierd_client.tierctl', run_name='__main__')")


def _tierctl(*argv: str) -> subprocess.Popen[str]:
    """tierctl as its own process, as a user's shell runs it (signals go to it alone)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TIERD_SOCKET", "TIERD_TOKEN")}
    # A shell gives a foreground command the default SIGINT even when this test runs where it is
    # ignored (a CI job started in the background): restore it before tierctl starts.
    return subprocess.Popen([sys.executable, "-c", INTERACTIVE_TIERCTL, *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(POLL_S)


@pytest.mark.parametrize("samples", [0, 3], ids=["during-the-first-call", "during-a-later-call"])
def test_ctrl_c_ends_stats_watch_quietly_even_inside_a_call(fake_daemon: FakeDaemon, samples: int) -> None:
    """Ctrl-C while a Stats call is in flight (in the first one, KeyboardInterrupt printed a
    traceback): the watch ends after that call, exit 0, nothing on stderr."""
    fake_daemon.state.stats_held_after = samples  # the call after these waits until released
    proc = _tierctl("--socket", str(fake_daemon.socket_path), "stats", "--json", "--watch", "0.01")
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(samples)]
        assert [json.loads(line)["namespaces"] for line in lines] == [1] * samples
        _wait_until(lambda: fake_daemon.state.calls.get("Stats", 0) > samples)
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=INTERRUPT_SETTLE_S)  # a tierctl that dies on the signal does so now
        fake_daemon.state.stats_release.set()
        out, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_OK, err
    assert err == ""
    assert len(out.splitlines()) == 1  # the sample in flight, then no further call
    assert fake_daemon.state.calls["Stats"] == samples + 1


def test_ctrl_c_in_any_other_command_exits_130_without_a_traceback(fake_daemon: FakeDaemon) -> None:
    fake_daemon.state.stats_held_after = 0
    proc = _tierctl("--socket", str(fake_daemon.socket_path), "stats")
    try:
        _wait_until(lambda: fake_daemon.state.calls.get("Stats", 0) == 1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        fake_daemon.state.stats_release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out, err) == (EXIT_INTERRUPTED, "", "")


def test_without_socket_it_finds_make_runs_daemon_else_says_where_it_looked(
        short_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    if Path(DEFAULT_SOCKET_PATH).exists():
        pytest.skip(f"a daemon serves {DEFAULT_SOCKET_PATH} here; tierctl would rightly pick it")
    monkeypatch.chdir(short_tmp)
    monkeypatch.delenv("TIERD_SOCKET", raising=False)
    assert _run("health")[0] == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert "cannot reach tierd" in err and "$TIERD_SOCKET (unset)" in err
    assert f"{DEFAULT_SOCKET_PATH} (no such file)" in err
    assert f"{short_tmp / 'var' / 'tierd.sock'} (no such file)" in err
    assert "`make run`" in err and "systemctl start tierd" in err
    (short_tmp / "var").mkdir()
    server, daemon = start_fake_daemon(short_tmp / "var" / "tierd.sock")  # what `make run` serves
    try:
        assert _run("stats", "--json")[0] == EXIT_OK
        assert daemon.state.calls["Stats"] == 1
        monkeypatch.setenv("TIERD_SOCKET", str(short_tmp / "elsewhere.sock"))  # it wins
        assert _run("stats", "--json")[0] == EXIT_UNREACHABLE
        assert "$TIERD_SOCKET=" in capsys.readouterr().err and daemon.state.calls["Stats"] == 1
    finally:
        server.stop(grace=None).wait(timeout=10)


def test_health_and_flush(fake_daemon: FakeDaemon) -> None:
    sock = str(fake_daemon.socket_path)
    assert _run("--socket", sock, "health")[0] == EXIT_OK
    fake_daemon.health.set("tierd.v1.Tierd", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert _run("--socket", sock, "health")[0] == EXIT_UNREACHABLE
    code, text = _run("--socket", sock, "flush")
    assert code == EXIT_OK and "flushed 0 dirty pages" in text


def test_unreachable_daemon_exits_non_zero_with_a_message(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["health"], ["stats"], ["flush"]):
        code, _ = _run("--socket", str(tmp_path / "none.sock"), *command)
        assert code == EXIT_UNREACHABLE
        assert "cannot reach tierd" in capsys.readouterr().err


def test_check_config_reports_problems(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[dram]\ncapacity = "64MiB"\n')
    code, text = _run("check-config", str(good))
    assert code == EXIT_OK and "OK" in text
    bad = tmp_path / "bad.toml"
    bad.write_text('[dram]\ncapacity = "lots"\n[server]\nsockett = "/x"\n')
    code, text = _run("check-config", str(bad))
    assert code == EXIT_ERROR
    assert "dram.capacity" in text and "server.sockett" in text


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["stats", "--watch", "0"])
    assert info.value.code == 2


def _sample(uptime_s: float, bytes_in: int, bytes_out: int) -> DaemonStats:
    tier = TierStats(capacity_bytes=1 << 30, used_bytes=0, pages=0, hits=0, misses=0, evictions=0,
                     bytes_in=bytes_in, bytes_out=bytes_out, queue_depth=0)
    return DaemonStats(tiers={t: tier for t in Tier}, namespaces=0, leases=0, checksum_failures=0,
                       uptime_s=uptime_s, write_policy="write_back")


def _rates(text: str) -> list[tuple[str, str]]:
    header = text.splitlines()[0]
    assert header.split()[-5:] == ["in", "GB/s", "out", "GB/s", "queue"]
    return [(row.split()[-3], row.split()[-2]) for row in text.splitlines()[1:4]]


def test_stats_rates_come_from_the_previous_sample() -> None:
    first, second = _sample(10.0, 0, 4_000_000_000), _sample(12.0, 3_000_000_000, 5_000_000_000)
    assert _rates(format_stats(first)) == [("-", "-")] * 3              # one sample: no rate yet
    assert _rates(format_stats(second, first)) == [("1.50", "0.50")] * 3  # 3 GB and 1 GB in 2 s
    restarted = _sample(1.0, 0, 0)                                      # counters went back to 0
    assert _rates(format_stats(restarted, second)) == [("-", "-")] * 3


def test_stats_table_says_when_disk_writes_fail() -> None:
    healthy = _sample(5.0, 0, 0)
    assert "disk write failures 0" in format_stats(healthy)
    assert "disk writes are failing" not in format_stats(healthy)
    failing = replace(healthy, disk_write_failures=7, disk_write_error="mdb_txn_commit: No space left on device")
    text = format_stats(failing)
    assert "disk write failures 7" in text
    assert text.splitlines()[-1] == "disk writes are failing: mdb_txn_commit: No space left on device"
    assert failing.to_json_dict()["disk_write_failures"] == 7


def test_stats_show_the_remote_tier_when_the_daemon_has_one() -> None:
    plain = _sample(10.0, 0, 0)
    assert "remote" not in format_stats(replace(plain, tiers={t: s for t, s in plain.tiers.items()
                                                               if t is not Tier.REMOTE}))
    assert plain.to_json_dict()["remote"] is None
    remote = RemoteTierStats(backend="redis-cluster", available=False, errors=3, checksum_failures=2,
                             dropped=1, pages_written=40)
    text = format_stats(replace(plain, remote=remote))
    assert "remote redis-cluster unavailable (backing off)   errors 3   checksum failures 2" in text
    assert any(line.startswith("remote ") for line in text.splitlines()[1:5])  # its row in the table
    assert replace(plain, remote=remote).to_json_dict()["remote"] == {
        "backend": "redis-cluster", "available": False, "errors": 3, "checksum_failures": 2,
        "dropped": 1, "pages_written": 40}


def test_stats_show_the_dram_bytes_page_locked_for_the_gpu() -> None:
    plain = _sample(5.0, 0, 0)
    assert "page-locked" not in format_stats(plain)  # a daemon without a GPU pins nothing
    assert all(tier["pinned_bytes"] == 0 for tier in plain.to_json_dict()["tiers"].values())  # type: ignore[attr-defined]
    tiers = dict(plain.tiers)
    tiers[Tier.DRAM] = replace(tiers[Tier.DRAM], pinned_bytes=3 << 30)
    pinned = replace(plain, tiers=tiers, device="cuda:1")
    assert "dram page-locked for cuda:1 3.0 GiB (3221225472 bytes)" in format_stats(pinned)
    data = json.loads(json.dumps(pinned.to_json_dict()))
    assert data["tiers"]["dram"]["pinned_bytes"] == 3 << 30 and data["tiers"]["hbm"]["pinned_bytes"] == 0
    assert data["tiers"]["dram"]["quantized_pages"] == 0  # the existing fields stay as they were


def test_stats_show_the_eviction_policy_and_evictions_with_children() -> None:
    stats = replace(_sample(5.0, 0, 0), eviction_policy="prefix_aware", evictions_with_children=3)
    assert "eviction policy prefix_aware   evictions with cached children 3" in format_stats(stats)
    data = stats.to_json_dict()
    assert (data["eviction_policy"], data["evictions_with_children"]) == ("prefix_aware", 3)
    assert "eviction policy ?" in format_stats(_sample(5.0, 0, 0))  # a daemon that does not say
