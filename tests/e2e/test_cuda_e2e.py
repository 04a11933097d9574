"""The worker/daemon data path end to end, in two processes: a worker (cuda_worker.py) maps its
hbm region as a torch tensor and runs tierd_kernels over it; the daemon moves the pages through
dram and disk and back. The same tests run on ``--device cpu`` (here, CI) and, marked ``cuda``,
on ``--device cuda:0`` (a CUDA tensor over CUDA IPC, the CUDA kernels, page-locked dram).
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from e2e_daemon import REPO_ROOT, TierdProcess

from tierd_client import ClientOptions, NamespaceHandle, PageSpec, ResourceExhaustedError, Tier, TierClient

pytestmark = pytest.mark.slow

WORKER = REPO_ROOT / "tests/e2e/cuda_worker.py"
# 2 layers x 2 x 16 tokens x 2 kv heads x 64 dims x 2 bytes = 16 KiB pages (head_dim 64: the
# smallest the attention kernels take).
SPEC = PageSpec(model="cuda-e2e@rev1", dtype="float16", num_layers=2, num_kv_heads=2, head_dim=64,
                page_tokens=16)
# The namespace gets half of each tier (region_share 0.5): 16 hbm slots, 32 dram slots. The tests
# size their work from the region handles, not from these.
HBM_CAPACITY = "512KiB"
DRAM_CAPACITY = "1MiB"
SEQ_PAGES = (4, 3, 2)
# Partly filled last pages: the decode must stop at seq_len, not at the page's end.
SEQ_LENS = (4 * 16 - 5, 3 * 16, 2 * 16 - 15)
NUM_PAGES = sum(SEQ_PAGES)
HOLD_PAGES = 4
# Bounds of waits that end on an event; only reached when something is broken.
WORKER_TIMEOUT_S = 300.0  # a CUDA worker compiles its kernels (NVRTC) on first use
WAIT_S = 60.0
POLL_S = 0.05
# The device's free memory after everything ended may be this much below what it was before.
FREE_MEMORY_TOLERANCE_BYTES = 8 << 20


@dataclass(frozen=True)
class WorkerJob:
    """cuda_worker.Job as JSON (the worker's process parses it; this one never imports torch)."""

    seed: int
    seq_pages: tuple[int, ...] = SEQ_PAGES
    seq_lens: tuple[int, ...] = SEQ_LENS
    query_heads: int = 4 * SPEC.num_kv_heads  # GQA groups of 4
    filler_pages: int = 0
    batch_pages: int = 1
    hold_pages: int = 0

    def to_json(self) -> str:
        spec = {f: getattr(SPEC, f) for f in ("model", "dtype", "num_layers", "num_kv_heads", "head_dim",
                                              "page_tokens")}
        return json.dumps({"spec": spec, **asdict(self)})


ROUND_TRIP_JOB = WorkerJob(seed=3)  # its filler is sized to the hbm region (round_trip)
HOLD_JOB = WorkerJob(seed=4, hold_pages=HOLD_PAGES)
AFTER_KILL_JOB = WorkerJob(seed=5, seq_pages=(3, 1), seq_lens=(40, 9))
# Token ids of this process's dram filler: the worker's seed 15 space, which no job here uses.
DRAM_FILLER_TOKEN = 15 << 28


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture()
def start_device_tierd(start_tierd: Callable[..., TierdProcess]) -> Callable[[str], TierdProcess]:
    """``start(device)`` -> a serving daemon on ``--device DEVICE`` with small hbm and dram (flags
    beat the config file's ``device = "cpu"`` and capacities)."""
    return lambda device: start_tierd(extra_args=("--device", device, "--hbm", HBM_CAPACITY,
                                                  "--dram", DRAM_CAPACITY))


def cuda_unavailable_reason() -> str | None:
    """None when this machine can run the CUDA variants (a GPU, torch CUDA, CuPy), else why not."""
    if importlib.util.find_spec("cupy") is None:
        return "needs CuPy (pip install 'tierd[cuda]')"
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False)"
    return None


@pytest.fixture()
def cuda_device() -> str:
    reason = cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return "cuda:0"


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT_S} s"
        time.sleep(POLL_S)


def worker_command(daemon: TierdProcess, mode: str, job: WorkerJob) -> list[str]:
    return [sys.executable, str(WORKER), str(daemon.socket_path), mode, job.to_json()]


def run_worker(daemon: TierdProcess, mode: str, job: WorkerJob) -> dict[str, Any]:
    """Run the worker to its end; its one JSON line."""
    done = subprocess.run(worker_command(daemon, mode, job), capture_output=True, text=True,
                          timeout=WORKER_TIMEOUT_S, env=child_env(), cwd=daemon.work_dir)
    assert done.returncode == 0, f"worker {mode} failed:\n{done.stderr[-4000:]}\ndaemon:\n{daemon.log_tail()}"
    lines = done.stdout.splitlines()
    assert len(lines) == 1, f"worker {mode} printed {done.stdout!r}"
    result: dict[str, Any] = json.loads(lines[0])
    return result


def read_line(worker: subprocess.Popen[str], stderr_path: Path) -> dict[str, Any]:
    """The next JSON line of a running worker (it fails with the worker's stderr if none comes)."""
    assert worker.stdout is not None
    ready, _, _ = select.select([worker.stdout], [], [], WORKER_TIMEOUT_S)
    line = worker.stdout.readline() if ready else ""
    assert line, f"worker said nothing (exit {worker.poll()}):\n{stderr_path.read_text()[-4000:]}"
    result: dict[str, Any] = json.loads(line)
    return result


def assert_verified(verified: dict[str, Any], device: str, tier_label: str) -> None:
    """A verify worker's answer: every page acquired from ``tier_label``, bit-exact, and the
    decode over them within tierd_kernels.tolerances of the reference over the original K/V."""
    num_pages = len(verified["tiers_at_acquire"])
    assert verified["device"] == device
    assert verified["tiers_at_acquire"] == [tier_label] * num_pages and verified["acquired_pages"] == num_pages
    assert verified["pages_exact"], verified
    assert verified["decode_close"], verified


def region_slots(ns: NamespaceHandle, tier: Tier) -> int:
    region = ns.region(tier)
    assert region is not None, f"the daemon gave no {tier.label} region: {ns.regions}"
    return region.num_slots


def round_trip(daemon: TierdProcess, device: str) -> None:
    """Worker 1 fills pages on ``device`` and pushes them out of hbm; this client pushes them out
    of dram; worker 2 acquires them back into hbm and decodes over them."""
    with TierClient(daemon.socket_path, ClientOptions(put_slots=1, page_socket=False)) as client:
        ns = client.register(SPEC)
        hbm_slots, dram_slots = region_slots(ns, Tier.HBM), region_slots(ns, Tier.DRAM)
        assert hbm_slots >= max(NUM_PAGES, 2), "the verify worker's pages must fit in hbm at once"
        # Twice what the hbm region holds, half a region per Allocate: the first pages must be demoted.
        job = replace(ROUND_TRIP_JOB, filler_pages=2 * hbm_slots, batch_pages=hbm_slots // 2)
        filled = run_worker(daemon, "fill", job)
        assert filled["device"] == device and filled["committed"] == NUM_PAGES
        assert filled["filler_committed"] == job.filler_pages
        keys = [bytes.fromhex(key) for chain in filled["keys"] for key in chain]
        wait_until(lambda: Tier.HBM not in client.lookup_result(ns, keys).tiers,
                   "the filler demoting the worker's pages out of hbm")
        client.flush()
        # Newer pages than the worker's, twice what dram holds: the worker's pages leave dram.
        filler = ns.keys(range(DRAM_FILLER_TOKEN, DRAM_FILLER_TOKEN + 2 * dram_slots * SPEC.page_tokens))
        for start in range(0, len(filler), job.batch_pages):
            batch = filler[start:start + job.batch_pages]
            assert client.put(ns, batch, [bytes([start % 251]) * SPEC.page_bytes] * len(batch)).num_stored \
                == len(batch)
        wait_until(lambda: client.lookup_result(ns, keys).tiers == (Tier.DISK,) * NUM_PAGES,
                   "the worker's pages being on disk only")
        stats = client.stats()
        assert stats.tiers[Tier.HBM].evictions >= NUM_PAGES and stats.tiers[Tier.DRAM].evictions >= NUM_PAGES
        assert stats.tiers[Tier.DISK].pages >= NUM_PAGES and stats.checksum_failures == 0
        assert_verified(run_worker(daemon, "verify", job), device, "disk")
        # Acquire promoted them (disk -> dram -> hbm); nothing pushed them out since.
        assert client.lookup_result(ns, keys).tiers == (Tier.HBM,) * NUM_PAGES
        assert client.stats().leases == 0


def hold_then_kill(daemon: TierdProcess, client: TierClient, ns: NamespaceHandle, device: str) -> None:
    """Start a ``hold`` worker, check it holds every hbm slot, and kill -9 it."""
    hbm_slots = region_slots(ns, Tier.HBM)
    assert hbm_slots > HOLD_PAGES
    stderr_path = daemon.work_dir / "holder.stderr"
    with open(stderr_path, "w") as stderr, subprocess.Popen(
            worker_command(daemon, "hold", HOLD_JOB), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr, text=True, env=child_env(), cwd=daemon.work_dir) as worker:
        try:
            held = read_line(worker, stderr_path)
            assert held == {"device": device, "read_pages": HOLD_PAGES, "fill_pages": hbm_slots - HOLD_PAGES,
                            "num_slots": hbm_slots}
            assert client.stats().leases == 2
            with pytest.raises(ResourceExhaustedError):  # every hbm slot is the worker's
                client.allocate(ns, 1)
            worker.kill()
            assert worker.wait(timeout=WAIT_S) == -signal.SIGKILL
        finally:
            worker.kill()


def kill_holder(daemon: TierdProcess, device: str) -> None:
    """A worker holding a READ and a FILL lease over all of hbm (and its mapping) is killed -9:
    the daemon frees its leases, another client gets every hbm slot, another worker uses them."""
    with TierClient(daemon.socket_path, ClientOptions(put_slots=1, page_socket=False)) as client:
        ns = client.register(SPEC)
        hold_then_kill(daemon, client, ns, device)
        wait_until(lambda: client.stats().leases == 0, "freeing the dead worker's leases")
        hbm_slots = region_slots(ns, Tier.HBM)
        with client.allocate(ns, hbm_slots) as lease:
            assert sorted(lease.slots) == list(range(hbm_slots))
        # Another worker maps the region the dead one had mapped, fills slots and reads them back.
        filled = run_worker(daemon, "fill", AFTER_KILL_JOB)
        assert filled["device"] == device and filled["committed"] == sum(AFTER_KILL_JOB.seq_pages)
        assert_verified(run_worker(daemon, "verify", AFTER_KILL_JOB), device, "hbm")
        assert client.stats().leases == 0


def test_pages_round_trip_through_dram_and_disk_on_cpu(start_device_tierd: Callable[[str], TierdProcess]) -> None:
    round_trip(start_device_tierd("cpu"), "cpu")


def test_a_killed_workers_leases_are_freed_on_cpu(start_device_tierd: Callable[[str], TierdProcess]) -> None:
    kill_holder(start_device_tierd("cpu"), "cpu")


@pytest.mark.cuda
def test_pages_round_trip_through_dram_and_disk_on_cuda(
        start_device_tierd: Callable[[str], TierdProcess], cuda_device: str) -> None:
    round_trip(start_device_tierd(cuda_device), cuda_device)


def device_free_bytes() -> int:
    """Free memory of device 0 as the driver reports it (the first call makes this process's context)."""
    import cupy

    free_bytes, _total = cupy.cuda.runtime.memGetInfo()
    return int(free_bytes)


@pytest.mark.cuda
def test_a_killed_workers_leases_and_device_memory_are_freed_on_cuda(
        start_device_tierd: Callable[[str], TierdProcess], cuda_device: str) -> None:
    device_free_bytes()  # this process's own context exists before the baseline
    before = device_free_bytes()
    daemon = start_device_tierd(cuda_device)
    kill_holder(daemon, cuda_device)
    assert daemon.terminate() == 0, daemon.log_tail()
    # One-sided: memory freed by others meanwhile is no leak of ours.
    wait_until(lambda: device_free_bytes() >= before - FREE_MEMORY_TOLERANCE_BYTES,
               f"the device's free memory returning to {before} bytes (less {FREE_MEMORY_TOLERANCE_BYTES})")
