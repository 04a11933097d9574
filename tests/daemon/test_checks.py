"""Start-up checks on hand-made machine facts and real paths."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tierd.config import DeviceType, StoreDevice
from tierd.daemon.checks import (
    ResolvedDevice,
    disk_problem,
    memlock_problem,
    memory_problem,
    prepare_data_dir,
    prepare_socket_path,
    resolve_device,
    startup_problems,
)
from tierd.daemon.config import DaemonConfig, load_config
from tierd.daemon.machine import MachineFacts
from tierd.tiers.host_memory import mem_available_bytes

GiB = 1 << 30
ROOMY = MachineFacts(mem_available_bytes=100 * GiB,
                     memlock_limit_bytes=None, cuda_total_bytes=())
ONE_GPU = replace(ROOMY, cuda_total_bytes=(80 * GiB,))
CPU = ResolvedDevice(StoreDevice(DeviceType.CPU))
GPU = ResolvedDevice(StoreDevice(DeviceType.CUDA, 0))


def config(tmp_path: Path, **overrides: object) -> DaemonConfig:
    base = {"server.socket": str(tmp_path / "run" / "t.sock"), "data_dir": str(tmp_path / "data"),
            "hbm.capacity": "1GiB", "dram.capacity": "4GiB", "disk.capacity": "1GiB"}
    return load_config(None, env={}, overrides={**base, **overrides})


def test_device_resolution(tmp_path: Path) -> None:
    auto = resolve_device(config(tmp_path), ROOMY)
    assert auto == ResolvedDevice(CPU.device, auto.note) and "no CUDA device" in auto.note
    assert resolve_device(config(tmp_path), ONE_GPU).name == "cuda:0"
    assert resolve_device(config(tmp_path, device="cpu"), ONE_GPU) == CPU
    assert resolve_device(config(tmp_path, device="cuda:0"), ONE_GPU) == GPU
    reason = resolve_device(config(tmp_path, device="cuda:1"), ONE_GPU)
    assert isinstance(reason, str) and "cuda:1 is not there" in reason and "1 CUDA device" in reason
    assert "0 CUDA device" in resolve_device(config(tmp_path, device="cuda"), ROOMY)


def test_memory_checks(tmp_path: Path) -> None:
    cfg = config(tmp_path)  # 4 GiB dram + 1 GiB hbm
    assert memory_problem(cfg, CPU, ROOMY) is None
    tight = replace(ROOMY, mem_available_bytes=4 * GiB + GiB // 2)
    assert "hbm + dram (on cpu) need 5.0 GiB" in memory_problem(cfg, CPU, tight)
    # On a GPU hbm is device memory: host memory holds dram alone (tierd.store.media says so,
    # and the check counts what the store will build).
    assert memory_problem(cfg, GPU, replace(tight, cuda_total_bytes=(80 * GiB,))) is None
    assert "dram (on cuda:0) need 4.0 GiB" in memory_problem(
        cfg, GPU, replace(ONE_GPU, mem_available_bytes=4 * GiB - 1))
    small_gpu = replace(ROOMY, cuda_total_bytes=(GiB // 2,))
    assert "exceeds the 512.0 MiB of cuda:0" in memory_problem(cfg, GPU, small_gpu)
    unknown = replace(ROOMY, mem_available_bytes=None)
    assert memory_problem(cfg, CPU, unknown) is None


def test_memlock_only_matters_when_dram_is_pinned_for_a_gpu(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    limited = replace(ONE_GPU, memlock_limit_bytes=64 << 20)
    reason = memlock_problem(cfg, GPU, limited)
    assert reason is not None and "RLIMIT_MEMLOCK" in reason and "LimitMEMLOCK=infinity" in reason
    assert "store.pin_dram = false" in reason
    assert memlock_problem(cfg, CPU, limited) is None
    assert memlock_problem(cfg, GPU, ONE_GPU) is None
    unpinned = config(tmp_path, **{"store.pin_dram": False})
    assert memlock_problem(unpinned, GPU, limited) is None  # only the 64 MiB of staging is locked
    tight = replace(ONE_GPU, memlock_limit_bytes=32 << 20)
    reason = memlock_problem(unpinned, GPU, tight)
    assert reason is not None and "64.0 MiB of CUDA staging" in reason and "dram" not in reason.split(" are ")[0]


def _free_on(device_index: int, free_bytes: int) -> Callable[[int], int | None]:
    """A probe that knows one device's free bytes and refuses to be asked about any other."""
    def probe(index: int) -> int | None:
        assert index == device_index, f"the check asked cuda:{index}, not the daemon's cuda:{device_index}"
        return free_bytes
    return probe


def test_hbm_must_fit_in_the_devices_free_memory(tmp_path: Path) -> None:
    cfg = config(tmp_path, **{"hbm.capacity": "10GiB"})
    second = ResolvedDevice(StoreDevice(DeviceType.CUDA, 1))
    two_gpus = replace(ROOMY, cuda_total_bytes=(80 * GiB, 80 * GiB))
    busy = replace(two_gpus, cuda_free_bytes=_free_on(1, 6 * GiB))
    reason = memory_problem(cfg, second, busy)
    assert reason is not None and "lower --hbm" in reason and "\n" not in reason
    assert f"{10 * GiB} bytes" in reason and f"{6 * GiB} bytes) free on cuda:1" in reason
    assert "80.0 GiB total" in reason
    assert memory_problem(cfg, second, replace(two_gpus, cuda_free_bytes=_free_on(1, 10 * GiB))) is None
    # Without a free-memory answer the total is the limit.
    assert memory_problem(cfg, second, two_gpus) is None
    small = replace(two_gpus, cuda_total_bytes=(80 * GiB, 8 * GiB))
    assert "exceeds the 8.0 GiB of cuda:1" in memory_problem(cfg, second, small)
    # A CPU daemon never asks a GPU.
    assert memory_problem(cfg, CPU, replace(two_gpus, cuda_free_bytes=_free_on(7, 0))) is None


def test_startup_refuses_hbm_above_the_free_memory(tmp_path: Path) -> None:
    facts = replace(ONE_GPU, cuda_free_bytes=_free_on(0, GiB // 2))
    device, problems = startup_problems(config(tmp_path, device="cuda:0"), facts)
    assert device == GPU and any("free on cuda:0" in problem for problem in problems)
    assert MachineFacts(None, None, ()).cuda_free_bytes(0) is None  # the default: no GPU to ask


def test_disk_larger_than_the_file_system_is_refused(tmp_path: Path) -> None:
    assert disk_problem(config(tmp_path)) is None
    reason = disk_problem(config(tmp_path, **{"disk.capacity": "1000000TiB"}))
    assert reason is not None and "lower --disk" in reason


def test_socket_path_checks(tmp_path: Path) -> None:
    assert prepare_socket_path(tmp_path / "new" / "dir" / "t.sock") is None
    assert (tmp_path / "new" / "dir").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot create socket directory" in prepare_socket_path(blocker / "t.sock")
    assert "is not a socket" in prepare_socket_path(blocker)
    assert "shorter --socket" in prepare_socket_path(tmp_path / ("x" * 120))
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        assert "another process is serving" in prepare_socket_path(path)
    assert prepare_socket_path(path) is None  # the socket file stayed, nobody answers: stale


def test_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot create data dir" in prepare_data_dir(blocker / "data")


def test_startup_problems_collects_and_resolves(tmp_path: Path) -> None:
    device, problems = startup_problems(config(tmp_path), ROOMY)
    assert device is not None and device.name == "cpu" and problems == []
    device, problems = startup_problems(config(tmp_path, device="cuda:3"), ROOMY)
    assert device is None and len(problems) == 1 and "cuda:3" in problems[0]


def test_meminfo_is_read_in_bytes(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemAvailable:     512 kB\n")
    assert mem_available_bytes(meminfo) == 512 * 1024
    assert mem_available_bytes(tmp_path / "absent") is None
