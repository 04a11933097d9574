"""A throwaway Redis Cluster of ``redis-server`` processes on loopback, for the remote-tier tests.

``RedisClusterFixture(masters=3).start()`` starts each master in its own temp dir on free ports
(client port and cluster-bus port both picked, so nothing depends on port + 10000 being free),
joins them with ``redis-cli --cluster create`` and waits until every node reports
``cluster_state:ok`` with all 16384 slots assigned. Settings follow the remote tier's advice
(allkeys-lru, no persistence, reads allowed while part of the cluster is down) with a short
node timeout so failure detection fits in a test.

Every server gets PR_SET_PDEATHSIG and every fixture is closed at exit, so a crashed or
interrupted test run leaves no redis-server behind. Import ``redis`` lazily: this module is
imported by the shared conftest, which must load where redis-py is missing.

``tls=True`` serves TLS only (``--port 0``; ``ports`` are then the TLS ports), with TLS on the
cluster bus and replication too, and requires a client certificate. A throwaway CA, a server
certificate for 127.0.0.1 (also the nodes' client certificate on the bus) and a client
certificate are made with the ``openssl`` CLI in the fixture's temp dir: ``ca_file``,
``client_cert_file`` and ``client_key_file`` are what a client needs; every helper here uses them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster

HOST = "127.0.0.1"
SLOTS = 16384
# Bounded polling: attempts times the pause is the most any wait may take (generous: 2 shared cores).
POLL_PAUSE_S = 0.05
READY_ATTEMPTS = 600          # 30 s for a server to answer PING or the cluster to settle
# A master restarted right after a SIGKILL has (rarely, in CI) aborted at start-up; a fresh
# process on the same dir then starts fine, so a restart tries again a few times.
RESTART_ATTEMPTS = 3
CLI_TIMEOUT_S = 120.0         # redis-cli --cluster create / reshard
OPENSSL_TIMEOUT_S = 60.0
SPAWN_ATTEMPTS = 3            # fresh ports each time a server dies while starting
_PR_SET_PDEATHSIG = 1
_LIVE: set[RedisClusterFixture] = set()


def missing_reason(tls: bool = False) -> str | None:
    """Why a cluster cannot be started here (for ``pytest.skip``), or ``None``."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            return f"{tool} not on PATH (apt-get install redis-server)"
    if tls and shutil.which("openssl") is None:
        return "openssl not on PATH (apt-get install openssl), needed for the test certificates"
    try:
        import redis.cluster  # noqa: F401
    except ImportError:
        return "redis-py not installed (pip install 'redis[hiredis]')"
    return None


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


try:   # loaded here, not in the forked child, where other threads may hold locks
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    # Runs in the child before exec: a SIGKILLed test run takes its servers with it.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _close_all() -> None:
    for fixture in list(_LIVE):
        fixture.close()


atexit.register(_close_all)

# openssl config sections: the CA, the servers' certificate (also their client certificate on
# the cluster bus, hence clientAuth) and the client's.
_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = tierd-test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
"""


def make_certificates(directory: Path) -> None:
    """``ca.crt``/``ca.key``, ``server.crt``/``server.key`` (IP:127.0.0.1) and
    ``client.crt``/``client.key`` in ``directory``, valid for two days (EC P-256: fast)."""
    directory.mkdir(parents=True, exist_ok=True)
    cnf = directory / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF)

    def openssl(*args: str) -> None:
        done = subprocess.run(["openssl", *args], cwd=directory, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=OPENSSL_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed ({done.returncode}): "
                               f"{(done.stdout + done.stderr).decode(errors='replace')[-2000:]}")

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-config", str(cnf), "-extensions", "ca", "-subj", "/CN=tierd-test-ca")
    for name in ("server", "client"):
        openssl("req", "-new", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-config", str(cnf), "-subj", f"/CN=tierd-test-{name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
                "-extfile", str(cnf), "-extensions", name)


class NodeExited(RuntimeError):
    """A redis-server exited before it answered PING (the message has its log's tail)."""


class RedisClusterFixture:
    """``masters`` cluster-mode redis-servers joined into one cluster; see the module docstring."""

    def __init__(self, masters: int = 3, password: str | None = None,
                 maxmemory: str = "128mb", extra_args: tuple[str, ...] = (), tls: bool = False) -> None:
        self.masters = masters
        self.password = password
        self.maxmemory = maxmemory
        self.extra_args = extra_args
        self.tls = tls
        self.root = Path(tempfile.mkdtemp(prefix="td-redis-"))
        tls_dir = self.root / "tls"
        # Where the certificates are (made by start() when ``tls``; nothing there otherwise).
        self.ca_file = tls_dir / "ca.crt"
        self.server_cert_file = tls_dir / "server.crt"
        self.server_key_file = tls_dir / "server.key"
        self.client_cert_file = tls_dir / "client.crt"
        self.client_key_file = tls_dir / "client.key"
        ports = free_ports(2 * masters)
        self.ports = ports[:masters]
        self.bus_ports = ports[masters:]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * masters

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> RedisClusterFixture:
        """Start every server, create the cluster, wait until it is ok; returns self."""
        _LIVE.add(self)
        try:
            if self.tls:
                make_certificates(self.ca_file.parent)
            self._spawn_all()
            self._cli("--cluster", "create", *self.nodes, "--cluster-replicas", "0", "--cluster-yes")
            self.wait_ok()
        except BaseException:
            self.close()
            raise
        return self

    def _spawn_all(self) -> None:
        """Every server answering PING. A port picked free can be taken by another process before
        the server binds it (tests run beside other suites): then all start again on new ports."""
        for attempt in range(SPAWN_ATTEMPTS):
            try:
                for i in range(self.masters):
                    self._spawn(i)
                for i in range(self.masters):
                    self._wait_ping(i)
                return
            except RuntimeError:
                for i in range(self.masters):
                    self._reap(i)
                    shutil.rmtree(self.root / f"node-{i}", ignore_errors=True)
                if attempt == SPAWN_ATTEMPTS - 1:
                    raise
                ports = free_ports(2 * self.masters)
                self.ports, self.bus_ports = ports[:self.masters], ports[self.masters:]

    def close(self) -> None:
        """Kill every server (stopped ones too) and remove the temp dirs; idempotent."""
        for i in range(self.masters):
            self._reap(i)
        shutil.rmtree(self.root, ignore_errors=True)
        _LIVE.discard(self)

    def __enter__(self) -> RedisClusterFixture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- addresses and clients ---------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        """``HOST:PORT`` of every master, in index order."""
        return [f"{HOST}:{port}" for port in self.ports]

    @property
    def tls_kwargs(self) -> dict[str, Any]:
        """redis-py's TLS arguments for a client of this cluster (with the client certificate);
        ``{}`` without ``tls``."""
        if not self.tls:
            return {}
        return {"ssl": True, "ssl_ca_certs": str(self.ca_file),
                "ssl_certfile": str(self.client_cert_file), "ssl_keyfile": str(self.client_key_file)}

    def client(self, **kwargs: Any) -> RedisCluster:
        """A redis-py cluster client for the test's own raw reads and writes."""
        from redis.cluster import ClusterNode, RedisCluster

        kwargs.setdefault("password", self.password)
        kwargs.setdefault("socket_timeout", 10.0)
        for name, value in self.tls_kwargs.items():
            kwargs.setdefault(name, value)
        return RedisCluster(startup_nodes=[ClusterNode(HOST, p) for p in self.ports],
                            require_full_coverage=False, **kwargs)

    def node_client(self, i: int) -> Redis:
        """A plain client of master ``i`` (cluster commands, FLUSHALL, INFO)."""
        from redis import Redis

        return Redis(host=HOST, port=self.ports[i], password=self.password, socket_timeout=10.0,
                     **self.tls_kwargs)

    def owners(self, via: int = 0) -> list[int]:
        """For each of the 16384 slots, the index of the master serving it, as master ``via``
        sees the slot map (-1 where none does)."""
        owner = [-1] * SLOTS
        with self.node_client(via) as r:
            for start, end, primary, *_ in r.execute_command("CLUSTER SLOTS"):
                index = self.ports.index(int(primary[1]))
                owner[start:end + 1] = [index] * (end + 1 - start)
        return owner

    def index_of_slot(self, slot: int) -> int:
        """Index of the master serving ``slot`` (as master 0 sees the slot map)."""
        return self.owners()[slot]

    def node_id(self, i: int) -> str:
        with self.node_client(i) as r:
            raw = r.execute_command("CLUSTER MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def flushall(self) -> None:
        """FLUSHALL on every master (all of them must be up)."""
        for i in range(self.masters):
            with self.node_client(i) as r:
                r.flushall()

    # -- faults ------------------------------------------------------------------------------

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to master ``i``: SIGKILL (reaped here), SIGSTOP (hang) or SIGCONT."""
        proc = self.procs[i]
        if proc is None:
            raise RuntimeError(f"master {i} is not running")
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait()
            self.procs[i] = None

    def restart(self, i: int, wait: bool = True) -> None:
        """Start master ``i`` again on its port and dir (its nodes.conf keeps its id and slots,
        its data is gone); with ``wait``, until the whole cluster is ok again (restarting every
        master of a cluster: ``wait=False`` for all but the last)."""
        self._reap(i)
        for attempt in range(1, RESTART_ATTEMPTS + 1):
            self._spawn(i)
            try:
                self._wait_ping(i)
                break
            except NodeExited:
                if attempt == RESTART_ATTEMPTS:
                    raise
                self.procs[i] = None
        if wait:
            self.wait_ok()

    def reshard(self, num_slots: int, src: int, dst: int) -> None:
        """Move ``num_slots`` slots (with their keys, by MIGRATE) from master ``src`` to ``dst``:
        clients see ASK while a slot migrates and MOVED after."""
        self._cli("--cluster", "reshard", self.nodes[src], "--cluster-from", self.node_id(src),
                  "--cluster-to", self.node_id(dst), "--cluster-slots", str(num_slots),
                  "--cluster-yes")

    def wait_ok(self) -> None:
        """Wait until every running master says ``cluster_state:ok``, sees all masters and has
        all 16384 slots assigned."""
        info: dict[str, str] = {}
        for _ in range(READY_ATTEMPTS):
            if all(self._cluster_ok(i, info) for i in range(self.masters) if self.procs[i]):
                return
            time.sleep(POLL_PAUSE_S)
        raise TimeoutError(f"cluster on {self.nodes} did not settle: last CLUSTER INFO {info}")

    # -- internals ---------------------------------------------------------------------------

    def _spawn(self, i: int) -> None:
        node_dir = self.root / f"node-{i}"
        node_dir.mkdir(exist_ok=True)
        port = ["--port", "0", "--tls-port", str(self.ports[i])] if self.tls else ["--port", str(self.ports[i])]
        args = ["redis-server", *port, "--cluster-port", str(self.bus_ports[i]),
                "--bind", HOST, "--dir", str(node_dir), "--logfile", str(node_dir / "redis.log"),
                "--daemonize", "no", "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                "--cluster-require-full-coverage", "no", "--cluster-allow-reads-when-down", "yes",
                "--save", "", "--appendonly", "no", "--maxmemory", self.maxmemory,
                "--maxmemory-policy", "allkeys-lru", *self.extra_args]
        if self.password is not None:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.tls:
            args += ["--tls-cluster", "yes", "--tls-replication", "yes", "--tls-auth-clients", "yes",
                     "--tls-cert-file", str(self.server_cert_file),
                     "--tls-key-file", str(self.server_key_file),
                     "--tls-ca-cert-file", str(self.ca_file)]
        # stderr says why a server aborted before it could write its log file.
        with open(node_dir / "stderr.log", "ab") as stderr:
            self.procs[i] = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=stderr, preexec_fn=_die_with_parent)

    def _reap(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()   # SIGKILL ends a SIGSTOPped process too
            proc.wait()
            self.procs[i] = None

    def _wait_ping(self, i: int) -> None:
        from redis.exceptions import RedisError

        with self.node_client(i) as r:
            for _ in range(READY_ATTEMPTS):
                proc = self.procs[i]
                if proc is not None and proc.poll() is not None:
                    raise NodeExited(f"redis-server {self.nodes[i]} exited with {proc.returncode}: "
                                     f"{self._log_tail(i)}")
                with contextlib.suppress(RedisError):
                    if r.ping():
                        return
                time.sleep(POLL_PAUSE_S)
        raise TimeoutError(f"redis-server {self.nodes[i]} did not answer PING: {self._log_tail(i)}")

    def _cluster_ok(self, i: int, info: dict[str, str]) -> bool:
        from redis.exceptions import RedisError

        try:
            with self.node_client(i) as r:
                raw = r.execute_command("CLUSTER INFO")
        except RedisError as e:
            info.update(error=f"{self.nodes[i]}: {e}")
            return False
        info.clear()
        if isinstance(raw, dict):   # redis-py parses CLUSTER INFO into a dict
            info.update((str(k), str(v)) for k, v in raw.items())
        else:
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            info.update(line.split(":", 1) for line in text.split() if ":" in line)
        return (info.get("cluster_state") == "ok"
                and info.get("cluster_slots_assigned") == str(SLOTS)
                and info.get("cluster_known_nodes") == str(self.masters))

    def _cli(self, *args: str) -> None:
        env = dict(os.environ)
        if self.password is not None:
            env["REDISCLI_AUTH"] = self.password   # not on the command line (ps) and no warning
        tls = (["--tls", "--cacert", str(self.ca_file), "--cert", str(self.client_cert_file),
                "--key", str(self.client_key_file)] if self.tls else [])
        done = subprocess.run(["redis-cli", *tls, *args], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=CLI_TIMEOUT_S, check=False)
        output = (done.stdout + done.stderr).decode(errors="replace")
        # redis-cli --cluster exits 0 on some refusals: its [ERR] lines are the verdict.
        if done.returncode != 0 or "[ERR]" in output:
            raise RuntimeError(f"redis-cli {' '.join(args[:2])} failed ({done.returncode}): "
                               f"{output[-2000:]}")

    def _log_tail(self, i: int) -> str:
        tails = []
        for name in ("redis.log", "stderr.log"):
            try:
                text = (self.root / f"node-{i}" / name).read_text(errors="replace")[-1500:]
            except OSError:
                text = "(none)"
            tails.append(f"{name}: {text}")
        return "; ".join(tails)
