"""What the GPU check's stages share: the sizes they measure, and the hooks tests replace.

``Hooks`` is how the CPU tests inject the strict fake CUDA runtime, a fake command runner and a
store factory (function parameters, never command-line flags). ``Resources`` opens the runtime
once, on the first stage that asks, and binds every calling thread to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from tierd.config import StoreConfig
from tierd.errors import InvalidArgument

if TYPE_CHECKING:
    from tierd.store import PageStore
    from tierd.tiers.cuda_runtime import CudaRuntime

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
REPO_ROOT = Path(__file__).resolve().parents[1]


def _default_register_chunk_bytes() -> int:
    """tierd's own chunk of ``cudaHostRegister`` calls (``StoreConfig.cuda_register_chunk_bytes``)."""
    default = next(f.default for f in fields(StoreConfig) if f.name == "cuda_register_chunk_bytes")
    if not isinstance(default, int):
        raise TypeError(f"StoreConfig.cuda_register_chunk_bytes has no int default: {default!r}")
    return default


@dataclass(frozen=True)
class Sizes:
    """Bytes each stage moves; ``reps`` repeats per figure (medians). ``register_reps[i]`` is
    the repeats of ``register_bytes[i]`` (an 8 GiB registration with its prefault takes ~10 s)."""

    register_bytes: tuple[int, ...] = (1 * GiB, 8 * GiB)
    register_reps: tuple[int, ...] = (5, 1)
    register_chunk_bytes: int = field(default_factory=_default_register_chunk_bytes)
    copy_bytes: int = 1 * GiB
    page_bytes: tuple[int, ...] = (512 * KiB, 2 * MiB)
    disk_bytes: int = 256 * MiB
    reps: int = 5

    def __post_init__(self) -> None:
        if len(self.register_reps) != len(self.register_bytes):
            raise InvalidArgument(f"register_reps {self.register_reps} needs one count per size of "
                                  f"register_bytes {self.register_bytes}")
        if min(self.reps, self.copy_bytes, self.disk_bytes, self.register_chunk_bytes, *self.page_bytes) <= 0:
            raise InvalidArgument(f"every size and repeat count must be above 0, got {self}")

    @classmethod
    def quick(cls) -> Sizes:
        return cls(register_bytes=(256 * MiB, 1 * GiB), register_reps=(3, 3), copy_bytes=256 * MiB,
                   disk_bytes=64 * MiB, reps=3)


@dataclass(frozen=True)
class CommandResult:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool


CommandRunner = Callable[[Sequence[str], float, Path], CommandResult]


def run_command(argv: Sequence[str], timeout_s: float, cwd: Path) -> CommandResult:
    """Run ``argv`` in its own session; at ``timeout_s`` the whole process group is killed (pytest
    may have started daemons) and what it printed so far is returned."""
    with subprocess.Popen(list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=max(0.1, timeout_s))
            return CommandResult(proc.returncode, out, err, False)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return CommandResult(proc.returncode, out, err, True)


def open_runtime(device_index: int) -> CudaRuntime:
    from tierd.tiers.cuda_runtime import open_cuda_runtime

    return open_cuda_runtime(device_index)


def open_page_store(config: StoreConfig, runtime: CudaRuntime) -> PageStore:
    """tierd's store on the CUDA device of ``config``, over ``runtime``."""
    from tierd.store import PageStore

    return PageStore(config, cuda_runtime=runtime)


StoreFactory = Callable[[StoreConfig, "CudaRuntime"], "PageStore"]


@dataclass(frozen=True)
class Hooks:
    runtime_factory: Callable[[int], CudaRuntime] = open_runtime
    run_command: CommandRunner = run_command
    store_factory: StoreFactory = open_page_store


class Resources:
    """The run's sizes, hooks and device; the runtime opened on first use (a failure to open is
    raised again to every stage that asks)."""

    def __init__(self, sizes: Sizes, hooks: Hooks, device_index: int = 0, repo_root: Path = REPO_ROOT) -> None:
        self.sizes = sizes
        self.hooks = hooks
        self.device_index = device_index
        self.repo_root = repo_root
        self._lock = threading.Lock()
        self._runtime: CudaRuntime | None = None
        self._open_error: Exception | None = None

    def runtime(self) -> CudaRuntime:
        """The device's runtime, bound to the calling thread."""
        with self._lock:
            if self._runtime is None and self._open_error is None:
                try:
                    self._runtime = self.hooks.runtime_factory(self.device_index)
                except Exception as exc:  # kept: every later stage reports the same cause
                    self._open_error = exc
            runtime, error = self._runtime, self._open_error
        if runtime is None:
            raise error if error is not None else RuntimeError("the CUDA runtime did not open")
        runtime.bind_thread()
        return runtime
