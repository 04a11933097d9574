"""The servers ``benchmarks/local.py`` measures: a real tierd daemon and a redis-server, both
subprocesses in a temp dir, plus what the report needs about them and the machine (CPU seconds
from ``/proc``, versions, CPU model).

Nothing here installs anything: a missing redis-server or redis-py is reported with the command
that gets it.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from machine_info import cpu_model, kernel

START_TIMEOUT_S = 120.0  # prefaulting a few GiB of arena takes seconds on these machines
STOP_TIMEOUT_S = 60.0
POLL_S = 0.05
LOG_TAIL_CHARS = 3000
REDIS_HELP = ("Redis rows need redis-server (Debian: apt-get install redis-server) and redis-py with "
              "hiredis (pip install 'redis[hiredis]', or the project's bench extra: pip install -e '.[bench]')")


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads) from ``/proc/PID/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, object]:
    model = cpu_model()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": model, "cores": os.cpu_count(), "kernel": kernel(),
            "memory_gib": round(mem_gib, 1), "python": platform.python_version(),
            "description": f"{model}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, {kernel()}"}


def redis_missing() -> str | None:
    """Why the Redis rows cannot run here (with how to fix it), or None when they can."""
    missing = [what for what, ok in (
        ("redis-server is not on PATH", shutil.which("redis-server") is not None),
        ("the redis Python package is not installed", importlib.util.find_spec("redis") is not None),
        ("hiredis is not installed", importlib.util.find_spec("hiredis") is not None)) if not ok]
    return f"{'; '.join(missing)}. {REDIS_HELP}" if missing else None


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return "(no log)"


@dataclass
class Server:
    """A server subprocess; ``stop`` ends it (SIGTERM, then SIGKILL) and is idempotent."""

    name: str
    proc: subprocess.Popen[bytes]
    socket_path: Path
    log_path: Path
    version: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fail_if_exited(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{_log_tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _wait_until(server: Server, ready: object) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        server.fail_if_exited()
        if callable(ready) and ready():
            return
        time.sleep(POLL_S)
    server.stop()
    raise RuntimeError(f"{server.name} did not serve within {START_TIMEOUT_S} s:\n{_log_tail(server.log_path)}")


def tierd_command() -> list[str]:
    """The venv's ``tierd`` entry point (next to this Python), else ``python -m tierd``."""
    entry = Path(sys.executable).with_name("tierd")
    return [str(entry)] if entry.exists() else [sys.executable, "-m", "tierd"]


def tierd_config(work_dir: Path, tier_bytes: int, region_share: float = 1.0) -> str:
    """One namespace gets every byte (region_share 1.0) of hbm and dram, both ``tier_bytes``,
    prefaulted at register time so no timed loop writes fresh shm pages. device = cpu: the
    zero-copy put writes the hbm arena from the host, which a CUDA hbm would not allow. A lower
    ``region_share`` leaves room for more namespaces (each takes that share of what is left)."""
    return f"""
device = "cpu"
data_dir = "{work_dir / 'data'}"
log_level = "warning"
[server]
socket = "{work_dir / 'tierd.sock'}"
[hbm]
capacity = {tier_bytes}
region_share = {region_share}
[dram]
capacity = {tier_bytes}
region_share = {region_share}
[disk]
capacity = {tier_bytes + (256 << 20)}
fsync = false
[store]
write_policy = "write_back"
prefault = true
shm_prefix = "tdbench{os.getpid()}"
flush_timeout_s = 30.0
"""


def start_tierd(work_dir: Path, tier_bytes: int, region_share: float = 1.0) -> Server:
    work_dir.mkdir(parents=True, exist_ok=True)
    config = work_dir / "tierd.toml"
    config.write_text(tierd_config(work_dir, tier_bytes, region_share))
    log_path = work_dir / "tierd.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERD_")}
    version = subprocess.run([*tierd_command(), "--version"], capture_output=True, text=True,
                             env=env).stdout.strip()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*tierd_command(), "--config", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=work_dir)
    server = Server("tierd", proc, work_dir / "tierd.sock", log_path, version)
    _wait_until(server, lambda: _tierd_serving(server.socket_path))
    return server


def _tierd_serving(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="tierd.v1.Tierd"), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def start_redis(work_dir: Path) -> Server:
    """redis-server on a unix socket only (``--port 0``), persistence off, files in ``work_dir``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    sock, log_path = work_dir / "redis.sock", work_dir / "redis.log"
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(sock),
                             "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                             "--dir", str(work_dir), "--logfile", str(log_path), "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=work_dir)
    server = Server("redis-server", proc, sock, log_path, version)
    _wait_until(server, lambda: _redis_pong(sock))
    return server


def _redis_pong(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(1.0)
            conn.connect(str(sock))
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False
