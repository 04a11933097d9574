"""The daemon as a process: refusals with exit codes, sd_notify, SIGHUP, SIGTERM, warm restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from data_dir_damage import DAMAGES
from server_harness import PAGE_SPEC, keys_for, pages_for, put_stream

from tierd.daemon.checks import EXIT_CONFIG
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
SMALL = ["--hbm", "8MiB", "--dram", "16MiB", "--disk", "64MiB", "--device", "auto"]


def tierd_cmd(tmp: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tierd", "--socket", str(tmp / "t.sock"),
            "--data-dir", str(tmp / "data"), *SMALL, *args]


def run_refused(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, check=False)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--dram", "100000TiB"], "of memory but only"),
    (["--disk", "100000TiB"], "lower --disk"),
    (["--device", "cuda:64"], "device cuda:64 is not there"),
])
def test_start_up_refuses_what_it_cannot_honour(short_tmp: Path, args: list[str], fragment: str) -> None:
    done = run_refused(tierd_cmd(short_tmp, *args))
    assert done.returncode == EXIT_CONFIG, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tierd: refusing to start:") and fragment in lines[0]


def test_an_unreadable_remote_password_file_is_refused_in_one_line(short_tmp: Path) -> None:
    config = short_tmp / "remote.toml"
    config.write_text(f'[remote]\nnodes = ["127.0.0.1:1"]\npassword_file = "{short_tmp / "absent"}"\n')
    done = run_refused(tierd_cmd(short_tmp, "--config", str(config)))
    assert done.returncode == EXIT_CONFIG, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tierd: refusing to start:"), done.stderr
    assert "remote.password_file" in lines[0] and "Traceback" not in done.stderr


def test_refusals_for_socket_config_and_environment(short_tmp: Path) -> None:
    blocker = short_tmp / "file"
    blocker.write_text("")
    cmd = tierd_cmd(short_tmp) + ["--socket", str(blocker / "t.sock")]
    done = run_refused(cmd)
    assert done.returncode == EXIT_CONFIG and "cannot create socket directory" in done.stderr
    bad_file = short_tmp / "bad.toml"
    bad_file.write_text('[dram]\ncapacty = "1GiB"\n')
    done = run_refused(tierd_cmd(short_tmp, "--config", str(bad_file)))
    assert done.returncode == EXIT_CONFIG and "unknown setting 'dram.capacty'" in done.stderr
    done = run_refused([sys.executable, "-m", "tierd", "--socket", str(short_tmp / "t.sock")],
                       env={"TIERD_HBM": "lots"})
    assert done.returncode == EXIT_CONFIG and "$TIERD_HBM" in done.stderr
    done = run_refused(tierd_cmd(short_tmp, "--hbm", "lots"))
    assert done.returncode == 2 and "argument --hbm" in done.stderr


@pytest.mark.parametrize("setting", ["region_socket", "page_socket"])
def test_a_region_or_page_socket_another_process_serves_is_refused(short_tmp: Path, setting: str) -> None:
    served = short_tmp / "taken.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as taken:
        taken.bind(str(served))
        taken.listen(1)
        done = run_refused(tierd_cmd(short_tmp), env={f"TIERD_SERVER__{setting.upper()}": str(served)})
    assert done.returncode == EXIT_CONFIG, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"another process is serving on {served}" in lines[0]
    assert f"server.{setting}" in lines[0]


def test_a_metrics_port_in_use_stops_the_start_with_a_message(short_tmp: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_refused(tierd_cmd(short_tmp), env={"TIERD_SERVER__METRICS": f"127.0.0.1:{port}"})
    assert done.returncode == 1, done.stderr
    assert f"cannot listen for metrics on 127.0.0.1:{port} (server.metrics)" in done.stderr
    assert not (short_tmp / "t.sock").exists()  # nothing half-started is left behind


class NotifyListener:
    """A fake systemd: collects sd_notify datagrams."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, timeout_s: float = START_TIMEOUT_S) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(message)
            if key in message:
                return message
        raise AssertionError(f"no {key} from the daemon; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


class Daemon:
    def __init__(self, tmp: Path, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.stderr_path = tmp / f"{name}.stderr"
        self.notify = NotifyListener(tmp / f"{name}.notify")
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 (closed in kill(), after the process)
        full_env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), **(env or {})}
        self.proc = subprocess.Popen(tierd_cmd(tmp, *args), cwd=REPO, env=full_env,
                                     stdout=subprocess.DEVNULL, stderr=self._stderr)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(STOP_TIMEOUT_S)
        self._stderr.close()
        self.notify.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)
        self._stderr.close()
        self.notify.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


def wait_until(condition: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_daemon_life_cycle(short_tmp: Path, daemons: list[Daemon]) -> None:
    config = short_tmp / "tierd.toml"
    config.write_text('log_level = "info"\n')
    first = Daemon(short_tmp, "first", "--config", str(config), env={"WATCHDOG_USEC": "400000"})
    daemons.append(first)
    ready = first.notify.wait_for("READY")
    assert "serving on unix:" in ready["STATUS"]
    sock = short_tmp / "t.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    first.notify.wait_for("WATCHDOG", timeout_s=5)

    with grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = pb_grpc.TierdStub(channel)
        reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
        keys, pages = keys_for(reg, 3), pages_for(3, seed=9)
        assert stub.PutPages(put_stream(reg.ns_id, keys, pages)).num_stored == 3

    second = run_refused(tierd_cmd(short_tmp))
    assert second.returncode == EXIT_CONFIG and "another process is serving" in second.stderr

    config.write_text('log_level = "debug"\n')
    first.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "log level is now debug" in first.stderr())

    first.proc.send_signal(signal.SIGTERM)
    assert first.notify.wait_for("STOPPING")["STOPPING"] == "1"
    assert first.stop() == 0
    assert not sock.exists()

    restarted = start_with_journal(short_tmp, daemons)
    restarted.notify.wait_for("READY")
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = pb_grpc.TierdStub(channel)
        again = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
        assert again.ns_id == reg.ns_id
        got = list(stub.GetPages(pb.GetPagesRequest(ns_id=reg.ns_id, keys=keys)))
        assert got[0].num_pages == 3 and b"".join(m.data for m in got) == b"".join(pages)
    assert restarted.stop() == 0
    journal_lines = [line for line in restarted.stderr().splitlines() if line and line[0] != " "]
    assert journal_lines and all(line.startswith("<") and line[2] == ">" for line in journal_lines)


def start_with_journal(tmp: Path, daemons: list[Daemon]) -> Daemon:
    """A daemon whose stderr file is announced as the journal stream: lines get <priority>."""
    stderr_path = tmp / "journal.stderr"
    stderr_path.write_text("")
    info = stderr_path.stat()
    daemon = Daemon(tmp, "journal", env={"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
    daemons.append(daemon)
    return daemon


@pytest.fixture(scope="module")
def written_data_dir() -> Iterator[tuple[Path, int, list[bytes], list[bytes]]]:
    """A data dir a real daemon wrote and flushed: (data dir, ns_id, keys, pages)."""
    tmp = Path(tempfile.mkdtemp(prefix="td-"))
    writer = Daemon(tmp, "writer")
    try:
        writer.notify.wait_for("READY")
        with grpc.insecure_channel(f"unix:{tmp / 't.sock'}") as channel:
            stub = pb_grpc.TierdStub(channel)
            reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
            keys, pages = keys_for(reg, 16), pages_for(16, seed=4)
            assert stub.PutPages(put_stream(reg.ns_id, keys, pages)).num_stored == 16
        assert writer.stop() == 0  # SIGTERM flushes every page to disk
    finally:
        writer.kill()
    yield tmp / "data", reg.ns_id, keys, pages
    shutil.rmtree(tmp, ignore_errors=True)


def get_pages(sock: Path, keys: list[bytes]) -> tuple[int, bytes]:
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = pb_grpc.TierdStub(channel)
        reg = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
        got = list(stub.GetPages(pb.GetPagesRequest(ns_id=reg.ns_id, keys=keys)))
        return reg.ns_id, b"".join(m.data for m in got)


def test_a_second_daemon_on_one_data_dir_exits_78_naming_the_first(
        short_tmp: Path, daemons: list[Daemon], written_data_dir: tuple[Path, int, list[bytes], list[bytes]]) -> None:
    source, ns_id, keys, pages = written_data_dir
    shutil.copytree(source, short_tmp / "data")
    first = Daemon(short_tmp, "first")
    daemons.append(first)
    first.notify.wait_for("READY")
    second = run_refused(tierd_cmd(short_tmp, "--socket", str(short_tmp / "second.sock")))
    assert second.returncode == EXIT_CONFIG, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tierd: refusing to start: data dir")
    assert f"in use by another tierd (pid {first.proc.pid})" in lines[0]
    assert first.proc.poll() is None  # the first keeps serving, its pages intact
    assert get_pages(short_tmp / "t.sock", keys) == (ns_id, b"".join(pages))
    assert first.stop() == 0


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_a_damaged_data_dir_exits_78_with_one_line_saying_what_to_do(
        short_tmp: Path, name: str, written_data_dir: tuple[Path, int, list[bytes], list[bytes]]) -> None:
    source = written_data_dir[0]
    shutil.copytree(source, short_tmp / "data")
    damage, fragment = DAMAGES[name]
    damage(short_tmp / "data" / "pages.lmdb")
    # --device auto on a machine without CUDA has a note to log: it must not come first.
    done = run_refused(tierd_cmd(short_tmp))
    assert done.returncode == EXIT_CONFIG, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tierd: refusing to start:") and fragment in lines[0]
    assert "move" in lines[0] and "Traceback" not in done.stderr
    assert not (short_tmp / "t.sock").exists()


def test_a_healthy_data_dir_still_opens_with_its_pages(
        short_tmp: Path, daemons: list[Daemon], written_data_dir: tuple[Path, int, list[bytes], list[bytes]]) -> None:
    source, ns_id, keys, pages = written_data_dir
    shutil.copytree(source, short_tmp / "data")
    daemon = Daemon(short_tmp, "healthy")
    daemons.append(daemon)
    daemon.notify.wait_for("READY")
    assert get_pages(short_tmp / "t.sock", keys) == (ns_id, b"".join(pages))
    assert daemon.stop() == 0
