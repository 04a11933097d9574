"""Start-up checks: what the daemon refuses before it allocates anything.

Each check returns a one-line reason (what is asked, what the machine has, what to change) or
``None``. ``startup_problems`` runs them all; the daemon prints the first and exits with
``EXIT_CONFIG``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from tierd.config import DeviceType, StoreDevice
from tierd.daemon.config import DaemonConfig, DeviceKind
from tierd.daemon.machine import MachineFacts, existing_path, used_bytes_under
from tierd.server.unix_socket import socket_is_live
from tierd.store.media import host_tiers
from tierd.tier import Tier
from tierd.tiers.data_dir_lock import lock_problem
from tierd.tiers.disk import ENV_DIR_NAME
from tierd.tiers.host_memory import free_bytes
from tierd.tiers.lmdb_file import DATA_FILE_NAME, data_file_problem
from tierd.units import format_size

# sysexits.h EX_CONFIG: systemd units may list it in RestartPreventExitStatus= (retrying is futile).
EXIT_CONFIG = 78
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107


@dataclass(frozen=True)
class ResolvedDevice:
    """Where ``hbm`` lives (``StoreConfig.device``); ``note`` says why when ``auto`` chose."""

    device: StoreDevice
    note: str | None = None

    @property
    def name(self) -> str:
        return str(self.device)

    @property
    def is_cuda(self) -> bool:
        return self.device.type is DeviceType.CUDA


def resolve_device(config: DaemonConfig, facts: MachineFacts) -> ResolvedDevice | str:
    """The device ``hbm`` runs on, or the reason the requested one cannot be had."""
    choice = config.device
    count = len(facts.cuda_total_bytes)
    if choice.kind is DeviceKind.CPU:
        return ResolvedDevice(StoreDevice(DeviceType.CPU))
    if choice.kind is DeviceKind.AUTO:
        if count:
            return ResolvedDevice(StoreDevice(DeviceType.CUDA, 0),
                                  f"device auto: using cuda:0 of {count} CUDA device(s)")
        return ResolvedDevice(StoreDevice(DeviceType.CPU),
                              "device auto: no CUDA device found, hbm is a CPU shared-memory arena")
    if choice.index >= count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f"{count} CUDA device(s)" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible else "")
        return (f"device {choice} is not there: this machine shows {seen}; use --device auto or "
                "--device cpu")
    return ResolvedDevice(StoreDevice(DeviceType.CUDA, choice.index))


def memory_problem(config: DaemonConfig, device: ResolvedDevice, facts: MachineFacts) -> str | None:
    """Host memory must hold the tiers the store puts there on this device (the same answer
    ``tierd.store.media`` builds from)."""
    store = config.store
    in_host = host_tiers(device.device)
    host_bytes = sum(store.tier_capacity_bytes(tier) for tier in in_host)
    if facts.mem_available_bytes is not None and host_bytes > facts.mem_available_bytes:
        return (f"{_names(in_host, device)} need {format_size(host_bytes)} of memory but only "
                f"{format_size(facts.mem_available_bytes)} is available: lower --dram/--hbm")
    if device.is_cuda:
        return gpu_memory_problem(store.hbm.capacity_bytes, device, facts)
    return None


def gpu_memory_problem(hbm_bytes: int, device: ResolvedDevice, facts: MachineFacts) -> str | None:
    """hbm must fit in the device's free memory (other processes hold some); its total when the
    free bytes cannot be read."""
    index = device.device.index
    total = facts.cuda_total_bytes[index]
    free = facts.cuda_free_bytes(index)
    if free is not None and hbm_bytes > free:
        return (f"hbm of {format_size(hbm_bytes)} ({hbm_bytes} bytes) exceeds the "
                f"{format_size(free)} ({free} bytes) free on {device.name} (of "
                f"{format_size(total)} total; other processes hold the rest): lower --hbm")
    if hbm_bytes > total:
        return (f"hbm of {format_size(hbm_bytes)} exceeds the {format_size(total)} of "
                f"{device.name}: lower --hbm")
    return None


def _names(tiers: tuple[Tier, ...], device: ResolvedDevice) -> str:
    return " + ".join(tier.label for tier in tiers) + f" (on {device.name})"


def memlock_problem(config: DaemonConfig, device: ResolvedDevice, facts: MachineFacts) -> str | None:
    """With a GPU, the CUDA engine's staging memory is page-locked, and dram too (unless
    ``pin_dram`` is off): together they must fit under RLIMIT_MEMLOCK."""
    limit = facts.memlock_limit_bytes
    if not device.is_cuda or limit is None:
        return None
    store = config.store
    dram_bytes = store.dram.capacity_bytes if store.pin_dram else 0
    locked_bytes = dram_bytes + store.cuda_staging_bytes
    if locked_bytes <= limit:
        return None
    what = (f"dram of {format_size(dram_bytes)} and " if dram_bytes else "") + \
        f"{format_size(store.cuda_staging_bytes)} of CUDA staging"
    return (f"{what} are page-locked for the GPU but RLIMIT_MEMLOCK is {format_size(limit)}: set "
            "LimitMEMLOCK=infinity (systemd) or ulimit -l unlimited, lower --dram or "
            "store.cuda_staging_size, or set store.pin_dram = false")


def disk_problem(config: DaemonConfig) -> str | None:
    """The disk tier must fit in the free space of its file system (plus what it already uses)."""
    data_dir = config.store.data_dir
    free = free_bytes(existing_path(data_dir))
    if free is None:
        return None
    usable = free + used_bytes_under(data_dir)
    wanted = config.store.disk.capacity_bytes
    if wanted > usable:
        return (f"disk of {format_size(wanted)} exceeds the {format_size(usable)} available for "
                f"{data_dir}: lower --disk or choose another --data-dir")
    return None


def prepare_data_dir(path: Path) -> str | None:
    """Create the data dir (and parents); the reason when it cannot be created or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create data dir {path}: {exc.strerror}: choose another --data-dir"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"data dir {path} is not writable by uid {os.getuid()}: fix its owner or mode"
    return None


def data_dir_problem(path: Path) -> str | None:
    """Another tierd holding the data dir's lock, or a ``data.mdb`` that LMDB would crash on or
    misread (the disk tier's open checks both again under its lock, and the rest of the data dir)."""
    return lock_problem(path) or data_file_problem(path / ENV_DIR_NAME / DATA_FILE_NAME)


def prepare_socket_path(path: Path, setting: str = "--socket") -> str | None:
    """Make the socket's directory; the reason the daemon cannot bind ``path``, else ``None``.

    A socket file left by a daemon that died is fine (the runner replaces it); one a live process
    answers on is not. ``setting`` is what the message tells the operator to change.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        return (f"socket path {path} is {len(os.fsencode(path))} bytes; unix sockets allow "
                f"{MAX_SOCKET_PATH_BYTES}: choose a shorter {setting}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create socket directory {path.parent}: {exc.strerror}: choose another {setting}"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return (f"cannot create socket {path}: directory {path.parent} is not writable by uid "
                f"{os.getuid()}: choose another {setting}")
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(mode):
        return f"{path} exists and is not a socket: remove it or choose another {setting}"
    if socket_is_live(path):
        return f"another process is serving on {path}: stop it or choose another {setting}"
    return None


def tls_problem(config: DaemonConfig) -> str | None:
    """Every TLS file named by the config must be readable."""
    server = config.server
    for name, path in (("tls_cert", server.tls_cert), ("tls_key", server.tls_key),
                       ("tls_client_ca", server.tls_client_ca)):
        if path is not None and not os.access(path, os.R_OK):
            return f"server.{name} = {path} cannot be read: check the path and its permissions"
    return None


def startup_problems(config: DaemonConfig, facts: MachineFacts) -> tuple[ResolvedDevice | None, list[str]]:
    """The resolved device and every reason to refuse start-up (empty: go ahead).

    Creates the data dir and the socket's directory as a side effect (a check that they can be).
    """
    problems: list[str] = []
    resolved = resolve_device(config, facts)
    device = resolved if isinstance(resolved, ResolvedDevice) else None
    if device is None:
        problems.append(str(resolved))
    else:
        problems += [p for p in (memory_problem(config, device, facts),
                                 memlock_problem(config, device, facts)) if p]
    problems += [p for p in (prepare_data_dir(config.store.data_dir), disk_problem(config),
                             tls_problem(config)) if p]
    sockets = ((config.server.socket, "--socket"),
               (config.server.region_socket_path, "server.region_socket"),
               (config.server.page_socket_path, "server.page_socket"))
    for path, setting in sockets:
        problem = None if path is None else prepare_socket_path(path, setting)
        if problem:
            problems.append(problem)
    # After the socket's: a second daemon on the same socket hears about the socket first.
    problem = data_dir_problem(config.store.data_dir)
    if problem:
        problems.append(problem)
    return device, problems
