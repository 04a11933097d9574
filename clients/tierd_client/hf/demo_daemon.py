"""The daemon the demo talks to: the one ``make run`` (or systemd, or ``$TIERD_SOCKET``) serves
when it answers, else a private one in a temp dir, stopped when the demo ends."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tierd_client.errors import TierdRpcError
from tierd_client.options import ClientOptions, RetryPolicy
from tierd_client.sync import TierClient
from tierd_client.tierctl import choose_socket

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
POLL_S = 0.1
LOG_TAIL_CHARS = 3000
# One try: a daemon that is not there should cost the demo no retries.
_PROBE = ClientOptions(retry=RetryPolicy(max_attempts=1), client_name="tierd-demo")

# `make run`'s systemd/tierd.dev.toml, but everything under the temp dir (this file is not
# installed with the package). memfd regions (no shm_prefix) go with the process.
_CONFIG = """\
device = "cpu"
data_dir = "{root}/data"
log_level = "warning"
[server]
socket = "{root}/tierd.sock"
[hbm]
capacity = "256MiB"
[dram]
capacity = "512MiB"
[disk]
capacity = "1GiB"
fsync = false
[store]
write_policy = "write_back"
prefault = false
flush_timeout_s = 30.0
"""


@dataclass(frozen=True)
class DemoDaemon:
    """Where the daemon is and whose it is (``private``: started by the demo, gone after it)."""

    socket: str
    private: bool


def serving(address: str) -> bool:
    """True when a daemon answers SERVING at ``address`` (one try, no retries)."""
    try:
        with TierClient(address, _PROBE) as client:
            return client.health(timeout_s=2.0)
    except TierdRpcError:
        return False


def _clean_env() -> dict[str, str]:
    # The private daemon's config is the file alone, not the caller's TIERD_* settings.
    return {k: v for k, v in os.environ.items() if not k.startswith("TIERD_")}


@contextmanager
def private_daemon() -> Iterator[DemoDaemon]:
    """``python -m tierd`` on a dev-sized config in a new temp dir; SIGTERM and the dir removed
    at the end."""
    # /tmp keeps the socket path far below the 108 bytes a unix socket allows.
    root = Path(tempfile.mkdtemp(prefix="tierd-demo-", dir="/tmp" if Path("/tmp").is_dir() else None))
    config = root / "tierd.toml"
    config.write_text(_CONFIG.format(root=root))
    log_path = root / "tierd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tierd", "--config", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, env=_clean_env(), cwd=root)
    try:
        socket = str(root / "tierd.sock")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not serving(socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
                raise RuntimeError(f"the demo's tierd did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(POLL_S)
        yield DemoDaemon(socket, private=True)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def demo_daemon(socket: str | None = None, own: bool = False) -> Iterator[DemoDaemon]:
    """``socket`` if given; else, unless ``own``, the daemon tierctl would talk to
    (``$TIERD_SOCKET``, ``/run/tierd/tierd.sock``, ``./var/tierd.sock``) if it serves; else a
    private one."""
    if socket:
        yield DemoDaemon(socket, private=False)
        return
    if not own:
        address = choose_socket(None, os.environ, Path.cwd()).address
        if serving(address):
            yield DemoDaemon(address, private=False)
            return
    with private_daemon() as daemon:
        yield daemon
