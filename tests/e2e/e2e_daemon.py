"""A real ``tierd`` process for end-to-end tests: started with ``python -m tierd``, on a short temp
socket path and data dir, with a small CPU config; waited on until health says SERVING.

The caller always ends it (``stop``); its regions are memfds, gone with the process, so
``cleanup`` only checks that nothing of it was left in ``/dev/shm``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tierd_client import PageSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
HEALTH_POLL_S = 0.1
# 2 layers x 2 x 16 tokens x 2 heads x 32 dims x 2 bytes = 8 KiB pages.
SPEC = PageSpec(model="e2e-model@rev1", dtype="float16", num_layers=2, num_kv_heads=2,
                head_dim=32, page_tokens=16)
LOG_TAIL_CHARS = 4000
SHM_DIR = Path("/dev/shm")


def config_text(shm_prefix: str, write_policy: str, fsync: bool, metrics: str | None = None,
                disk_capacity: str = "256MiB") -> str:
    """Small tiers: the first namespace gets 128 hbm and 256 dram slots (region_share 0.5)."""
    metrics_line = "" if metrics is None else f'metrics = "{metrics}"'
    return f"""
device = "cpu"
log_level = "debug"
[server]
session_heartbeat_s = 0.5
shutdown_grace_s = 5.0
{metrics_line}
[hbm]
capacity = "2MiB"
[dram]
capacity = "4MiB"
[disk]
capacity = "{disk_capacity}"
fsync = {str(fsync).lower()}
[store]
write_policy = "{write_policy}"
prefault = false
shm_prefix = "{shm_prefix}"
acquire_timeout_s = 10.0
flush_timeout_s = 30.0
"""


@dataclass
class TierdProcess:
    """One daemon's paths and process. ``start`` may be called again after it stopped (restart).

    ``extra_config``: TOML appended to the config file (e.g. ``[tenants.NAME]`` tables);
    ``extra_args``: command-line flags after the config's (they win, e.g. ``--device``).
    """

    work_dir: Path
    write_policy: str = "write_back"
    fsync: bool = False
    extra_config: str = ""
    extra_args: tuple[str, ...] = ()
    metrics: str | None = None  # server.metrics (HOST:PORT of the Prometheus endpoint)
    disk_capacity: str = "256MiB"  # disk.capacity (a data dir on a small file system needs less)
    shm_prefix: str = field(default_factory=lambda: f"tde2e{secrets.token_hex(3)}")
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def socket_path(self) -> Path:
        return self.work_dir / "tierd.sock"

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def config_path(self) -> Path:
        return self.work_dir / "tierd.toml"

    @property
    def log_path(self) -> Path:
        return self.work_dir / f"tierd-{self.starts}.log"

    def start(self) -> None:
        """Start the daemon and wait until it serves; fails with its log if it does not."""
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self.config_path.write_text(config_text(self.shm_prefix, self.write_policy, self.fsync, self.metrics,
                                                self.disk_capacity) + self.extra_config)
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIERD_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tierd", "--config", str(self.config_path),
                 "--socket", str(self.socket_path), "--data-dir", str(self.data_dir),
                 *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.work_dir)
        self._wait_serving()

    def _wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        with grpc.insecure_channel(f"unix:{self.socket_path}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"tierd exited with {self.proc.returncode} while starting:"
                                         f"\n{self.log_tail()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service="tierd.v1.Tierd"),
                                       timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass  # not listening yet
                time.sleep(HEALTH_POLL_S)
        raise AssertionError(f"tierd did not serve within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return "(no log)"

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """End the daemon however it can be ended (SIGTERM, then SIGKILL); idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.terminate(timeout_s=STOP_TIMEOUT_S / 2)
        except subprocess.TimeoutExpired:
            self.kill()

    def cleanup(self) -> None:
        """Fail if the daemon left anything in /dev/shm, even after a kill -9 (it must not)."""
        left = sorted(p.name for p in SHM_DIR.glob(f"{self.shm_prefix}*"))
        for name in left:
            (SHM_DIR / name).unlink(missing_ok=True)
        assert not left, f"tierd left {left} in {SHM_DIR}"


def short_work_dir() -> Path:
    """A directory under /tmp: unix socket paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="tierd-e2e-", dir="/tmp"))


@contextmanager
def daemon_starter() -> Iterator[Callable[..., TierdProcess]]:
    """``start(**options)`` -> a serving daemon (``TierdProcess`` options); every daemon it
    started is ended, checked for leftovers and removed when the ``with`` ends."""
    daemons: list[TierdProcess] = []

    def start(**options: object) -> TierdProcess:
        daemon = TierdProcess(short_work_dir(), **options)  # type: ignore[arg-type]
        daemons.append(daemon)
        daemon.start()
        return daemon

    try:
        yield start
    finally:
        for daemon in daemons:
            daemon.stop()
            daemon.cleanup()
            shutil.rmtree(daemon.work_dir, ignore_errors=True)
