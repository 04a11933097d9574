"""The daemon's one config object, loaded once: flags > ``TIERD_*`` environment > TOML > defaults.

TOML layout (every key optional; see ``systemd/tierd.toml``)::

    device = "auto"             # auto | cpu | cuda | cuda:N
    data_dir = "/var/lib/tierd"
    log_level = "info"
    [server]  socket, socket_mode, tcp, tls_cert, tls_key, tls_client_ca, max_message_size, ...
    [hbm] / [dram]  capacity, high_watermark, low_watermark, region_share
    [disk]  capacity, fsync, writer_batch_pages, writer_batch_size, reader_threads, ...
    [remote]  nodes = ["10.0.0.5:6379", ...], write_on, tls, username, password_file, timeout_s, ...
    [store]  write_policy, lease_ttl_s, flush_timeout_s, prefault, shm_prefix, ...
    [tenants.NAME]  token_sha256 = "<hex>" | token_file = "/path", hbm = "1GiB", dram = "4GiB"

Environment: ``TIERD_SECTION__NAME`` for any key (``TIERD_DISK__FSYNC=false``), plus the short
forms in ``ENV_ALIASES`` (``TIERD_SOCKET``, ``TIERD_DRAM``, ...). ``TIERD_CONFIG`` names the file
when ``--config`` is not given. Tenants come from the file only (``tierd.daemon.tenants``).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

import tierd
from tierd.config import DiskConfig, MemoryTierConfig, RemoteConfig, StoreConfig
from tierd.daemon.schema import ConfigKey, keys_of
from tierd.daemon.tenants import TenantConfig, parse_tenants
from tierd.errors import ConfigError
from tierd.server.auth import TenantToken
from tierd.server.settings import ServingSettings
from tierd.tier import Tier
from tierd.units import format_size

log = logging.getLogger(__name__)

ENV_PREFIX = "TIERD_"
CONFIG_ENV = "TIERD_CONFIG"
ENV_ALIASES = {
    "TIERD_SOCKET": "server.socket", "TIERD_TCP": "server.tcp", "TIERD_DATA_DIR": "data_dir",
    "TIERD_DEVICE": "device", "TIERD_HBM": "hbm.capacity", "TIERD_DRAM": "dram.capacity",
    "TIERD_DISK": "disk.capacity", "TIERD_LOG_LEVEL": "log_level",
    "TIERD_WRITE_POLICY": "store.write_policy", "TIERD_EVICTION_POLICY": "store.eviction_policy",
}
MAX_PORT = 65535
REGION_SOCKET_SUFFIX = "-regions"
PAGE_SOCKET_SUFFIX = "-pages"
DEFAULT_CAPACITY_BYTES = {"hbm": 1 << 30, "dram": 4 << 30, "disk": 64 << 30}


class DeviceKind(enum.Enum):
    AUTO = "auto"   # cuda:0 when a GPU is there, else cpu (and the log says so)
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class DeviceChoice:
    """``--device``: ``auto``, ``cpu`` or ``cuda[:N]``."""

    kind: DeviceKind
    index: int = 0

    @classmethod
    def parse(cls, text: object) -> DeviceChoice:
        if isinstance(text, DeviceChoice):
            return text
        value = str(text).strip().lower()
        name, _, index = value.partition(":")
        if name == "cuda" and (not index or index.isdigit()):
            return cls(DeviceKind.CUDA, int(index or 0))
        if not index and name in ("auto", "cpu"):
            return cls(DeviceKind(name))
        raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.kind is DeviceKind.CUDA else self.kind.value


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def level(self) -> int:
        return logging.getLevelNamesMapping()[self.name]


@dataclass(frozen=True)
class ServerSettings:
    """Where and how the daemon listens; what it serves is the store's business.

    Sizes are bytes, durations seconds. ``socket=None`` turns the unix socket off (then ``tcp``
    must be set). TCP without TLS is refused unless the address is loopback.
    """

    socket: Path | None = Path("/run/tierd/tierd.sock")
    socket_mode: int = 0o660
    region_socket: Path | None = None       # None: next to ``socket`` (see region_socket_path)
    page_socket: Path | None = None         # None: next to ``socket`` (see page_socket_path)
    page_connections: int = 256             # page socket connections at once (one per client thread)
    tcp: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None       # set: clients must present a cert it signed (mTLS)
    shutdown_grace_s: float = 10.0          # in-flight RPCs get this long after SIGTERM
    metrics: str | None = None              # HOST:PORT of a Prometheus GET /metrics; None: off

    @property
    def region_socket_path(self) -> Path | None:
        """Where zero-copy workers fetch region memory: ``region_socket``, else ``STEM-regions``
        next to the gRPC socket (``/run/tierd/tierd-regions.sock``); ``None`` without either."""
        return self.region_socket if self.region_socket is not None else self._beside(REGION_SOCKET_SUFFIX)

    @property
    def page_socket_path(self) -> Path | None:
        """Where byte-path gets and puts skip gRPC (``tierd.server.page_socket``): ``page_socket``,
        else ``STEM-pages`` next to the gRPC socket; ``None`` without either."""
        return self.page_socket if self.page_socket is not None else self._beside(PAGE_SOCKET_SUFFIX)

    def _beside(self, suffix: str) -> Path | None:
        if self.socket is None:
            return None
        return self.socket.with_name(f"{self.socket.stem}{suffix}{self.socket.suffix}")

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first setting that cannot work."""
        if self.socket is None and self.tcp is None:
            raise ConfigError("neither server.socket nor server.tcp is set: nothing to listen on")
        if self.shutdown_grace_s <= 0:
            raise ConfigError(f"server.shutdown_grace_s must be positive, got {self.shutdown_grace_s}")
        if self.page_connections <= 0:
            raise ConfigError(f"server.page_connections must be positive, got {self.page_connections}")
        paths = [p for p in (self.socket, self.region_socket_path, self.page_socket_path) if p is not None]
        if len(set(paths)) != len(paths):
            raise ConfigError("server.socket, server.region_socket and server.page_socket must be "
                              f"three different paths, got {', '.join(map(str, paths))}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("server.tls_cert and server.tls_key go together: set both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("server.tls_client_ca (mTLS) needs server.tls_cert and server.tls_key")
        if self.metrics is not None:
            host_port(self.metrics, "server.metrics")
        if self.tcp is not None:
            host, _ = host_port(self.tcp, "server.tcp")
            if self.tls_cert is None and not is_loopback(host):
                raise ConfigError(f"server.tcp = {self.tcp!r} is not a loopback address: set "
                                  "server.tls_cert and server.tls_key, or listen on 127.0.0.1")


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the daemon runs with. ``config_path`` is the TOML file it came from, if any.

    ``tenant_tokens`` empty: the daemon is open (single tenant); else every RPC but Health must
    carry one of these tenants' tokens. Their quotas are in ``store.tenant_quotas``. ``serving``
    is what the servicer runs with, built from the ``[server]`` limits, the tokens and the store.
    """

    store: StoreConfig
    server: ServerSettings
    serving: ServingSettings = ServingSettings()
    device: DeviceChoice = DeviceChoice(DeviceKind.AUTO)
    log_level: LogLevel = LogLevel.INFO
    config_path: Path | None = None
    tenant_tokens: tuple[TenantToken, ...] = ()


@dataclass(frozen=True)
class _Top:
    """Top-level keys (no section); mirrors the fields of ``DaemonConfig`` that are scalars."""

    device: DeviceChoice = DeviceChoice(DeviceKind.AUTO)
    data_dir: Path = Path("/var/lib/tierd")
    log_level: LogLevel = LogLevel.INFO


# StoreConfig fields that come from elsewhere than the [store] table.
_STORE_SKIP = frozenset({"data_dir", "hbm", "dram", "disk", "tenant_quotas", "device", "remote"})


def all_keys() -> dict[str, ConfigKey]:
    """Every settable key by dotted path (``disk.capacity``)."""
    keys = [ConfigKey("device", "device", DeviceChoice.parse, "auto|cpu|cuda[:N]"),
            *keys_of(_Top, "", skip=frozenset({"device"}))]
    keys += keys_of(ServerSettings, "server")
    keys += keys_of(ServingSettings, "server", skip=ServingSettings.NOT_CONFIGURED)
    keys += keys_of(MemoryTierConfig, "hbm") + keys_of(MemoryTierConfig, "dram")
    keys += keys_of(DiskConfig, "disk")
    keys += keys_of(RemoteConfig, "remote")
    keys += keys_of(StoreConfig, "store", skip=_STORE_SKIP)
    return {key.path: key for key in keys}


def host_port(address: str, key: str) -> tuple[str, int]:
    """``"[::1]:7070"`` -> ``("::1", 7070)``; ``ConfigError`` naming ``key`` when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > MAX_PORT:
        raise ConfigError(f"{key} must be HOST:PORT (e.g. 127.0.0.1:7070), got {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_toml(path: Path) -> dict[str, object]:
    """The file's keys flattened to dotted paths; ``ConfigError`` when unreadable or malformed."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    flat: dict[str, object] = {}
    for name, value in data.items():
        if isinstance(value, dict) and name != "tenants":
            for sub, sub_value in value.items():
                flat[f"{name}.{sub}"] = sub_value
        else:
            flat[name] = value
    return flat


def env_layers(env: Mapping[str, str]) -> list[tuple[str, dict[str, object]]]:
    """One (source, {key: value}) layer per ``TIERD_*`` variable, so errors name the variable.

    Unknown ``TIERD_*`` names are logged and ignored: the environment is shared with clients.
    """
    known = all_keys()
    layers: list[tuple[str, dict[str, object]]] = []
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = ENV_ALIASES.get(name)
        if path is None:
            path = name.removeprefix(ENV_PREFIX).lower().replace("__", ".", 1)
        if path in known:
            layers.append((f"${name}", {path: value}))
        else:
            log.debug("ignoring environment variable %s: not a tierd daemon setting", name)
    # The long form first, so that the short alias of the same key (TIERD_DRAM) wins over it.
    return sorted(layers, key=lambda layer: layer[0].removeprefix("$") in ENV_ALIASES)


def load_config(config_path: Path | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, object] | None = None) -> DaemonConfig:
    """The config from defaults < ``config_path`` < ``env`` < ``overrides`` (dotted keys).

    ``config_path`` None falls back to ``env["TIERD_CONFIG"]``, else no file. ``ConfigError``
    names the key, where its value came from, and what was expected.
    """
    env = dict(os.environ if env is None else env)
    if config_path is None and env.get(CONFIG_ENV):
        config_path = Path(env[CONFIG_ENV])
    layers: list[tuple[str, Mapping[str, object]]] = []
    if config_path is not None:
        layers.append((str(config_path), read_toml(Path(config_path))))
    layers += env_layers(env)
    layers.append(("command line", dict(overrides or {})))
    values, problems = parse_layers(layers)
    if problems:
        raise ConfigError(problems[0])
    return build(values, config_path)


def parse_layers(layers: list[tuple[str, Mapping[str, object]]]) -> tuple[dict[str, object], list[str]]:
    """Parsed values by dotted key (later layers win) and every problem found, one line each."""
    known = all_keys()
    values: dict[str, object] = {}
    problems: list[str] = []
    for source, raw in layers:
        for path, value in raw.items():
            if path == "tenants":
                parsed = parse_tenants(value, source, problems)
                if parsed is not None:
                    values[path] = parsed
                continue
            key = known.get(path)
            if key is None:
                problems.append(f"{source}: unknown setting {path!r}; known settings: "
                                + ", ".join(sorted(known)))
                continue
            try:
                values[path] = key.parse(value)
            except (ValueError, TypeError) as exc:
                problems.append(f"{source}: {path}: {exc}")
    return values, problems


def _section(values: Mapping[str, object], section: str, cls: type) -> dict[str, Any]:
    """Constructor arguments of ``cls`` from the parsed ``section.*`` values that were given."""
    keys = all_keys()
    out: dict[str, object] = {}
    for field in fields(cls):
        for path, key in keys.items():
            if key.field_name == field.name and path.rpartition(".")[0] == section and path in values:
                out[field.name] = values[path]
    return out


def build(values: Mapping[str, object], config_path: Path | None = None) -> DaemonConfig:
    """A validated ``DaemonConfig`` from parsed values; ``ConfigError`` for what cannot work."""
    top = _Top(**_section(values, "", _Top))
    def tier_args(name: str, cls: type) -> dict[str, Any]:
        return {"capacity_bytes": DEFAULT_CAPACITY_BYTES[name], **_section(values, name, cls)}

    tenants = cast(Mapping[str, TenantConfig], values.get("tenants", {}))
    store = StoreConfig(data_dir=top.data_dir, hbm=MemoryTierConfig(**tier_args("hbm", MemoryTierConfig)),
                        dram=MemoryTierConfig(**tier_args("dram", MemoryTierConfig)),
                        disk=DiskConfig(**tier_args("disk", DiskConfig)), tenant_quotas=tenant_quotas(tenants),
                        remote=RemoteConfig(**_section(values, "remote", RemoteConfig)),
                        **_section(values, "store", StoreConfig))
    check_quotas(store)
    server = ServerSettings(**_section(values, "server", ServerSettings))
    server.validate()
    tokens = tuple(TenantToken(name, tenant.token_sha256) for name, tenant in tenants.items())
    serving = ServingSettings(**_section(values, "server", ServingSettings),
                              flush_timeout_s=store.flush_timeout_s, version=tierd.__version__,
                              tenant_tokens=tokens,
                              advertised_region_socket=_advertised(server.region_socket_path),
                              advertised_page_socket=_advertised(server.page_socket_path))
    serving.validate()
    return DaemonConfig(store=store, server=server, serving=serving, device=top.device,
                        log_level=top.log_level, config_path=config_path, tenant_tokens=tokens)


def _advertised(path: Path | None) -> str:
    return "" if path is None else str(path.absolute())


def tenant_quotas(tenants: Mapping[str, TenantConfig]) -> dict[str, dict[Tier, int]]:
    """``StoreConfig.tenant_quotas`` of the tenants that have quotas."""
    return {name: dict(tenant.quotas) for name, tenant in tenants.items() if tenant.quotas}


def check_quotas(store: StoreConfig) -> None:
    """``ConfigError`` for a tenant quota larger than its whole tier (it could never be given)."""
    for name, quotas in store.tenant_quotas.items():
        for tier, quota_bytes in quotas.items():
            capacity_bytes = store.tier_capacity_bytes(tier)
            if quota_bytes > capacity_bytes:
                raise ConfigError(f"tenants.{name}.{tier.label} ({format_size(quota_bytes)}) "
                                  f"exceeds {tier.label}.capacity ({format_size(capacity_bytes)}): "
                                  f"lower the quota or raise the capacity")


def check_config(path: Path | str) -> list[str]:
    """Every problem of the config file ``path`` (defaults filled in, environment ignored).

    Empty when the daemon would accept it; for ``tierctl check-config``. Machine checks
    (free memory, disk, RLIMIT_MEMLOCK, GPU) are in ``tierd.daemon.checks``.
    """
    try:
        raw = read_toml(Path(path))
    except ConfigError as exc:
        return [str(exc)]
    values, problems = parse_layers([(str(path), raw)])
    if problems:
        return problems
    try:
        build(values, Path(path))
    except ConfigError as exc:
        return [f"{path}: {exc}"]
    return []
