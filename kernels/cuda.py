"""CuPy loader and launcher: compile each kernel specialisation on first use, launch plans.

CuPy is an optional dependency (the ``cuda`` extra), imported only when a CUDA tensor reaches a
kernel. Kernels are compiled through NVRTC from the packaged sources, cached per
(KernelSpec, device) in a ``KernelCache`` (CuPy also caches the binaries on disk), and launched on
torch's current stream of the tensors' device, so they order with the caller's torch work.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import torch

from tierd_kernels.errors import KernelUnavailableError
from tierd_kernels.plans import ArgKind, KernelArg, LaunchPlan
from tierd_kernels.sources import KernelSource, KernelSpec, expand_source

logger = logging.getLogger(__name__)

_NUMPY_TYPES: dict[ArgKind, Callable[[Any], Any]] = {
    ArgKind.POINTER: np.uint64,
    ArgKind.INT32: np.int32,
    ArgKind.INT64: np.int64,
    ArgKind.FLOAT32: np.float32,
}


def import_cupy() -> ModuleType:
    """CuPy, or a KernelUnavailableError that says how to get it."""
    try:
        import cupy
    except ImportError as exc:
        raise KernelUnavailableError(
            "the CUDA kernels need CuPy: install it with `pip install 'tierd[cuda]'` (CUDA 13; "
            "'tierd[cuda12]' for CUDA 12), or pass backend=Backend.REFERENCE to run the torch reference "
            "on these tensors") from exc
    module: ModuleType = cupy
    return module


def to_cupy_arg(arg: KernelArg) -> Any:
    """A kernel argument as the NumPy scalar whose size matches the C parameter."""
    return _NUMPY_TYPES[arg.kind](arg.value)


class KernelCache:
    """Compiled kernels by (KernelSpec, device index); one module per (source, macros, device)
    serves every function of that source. Thread-safe; compiles each module once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._modules: dict[tuple[KernelSource, tuple[tuple[str, str], ...], int], Any] = {}
        self._kernels: dict[tuple[KernelSpec, int], Any] = {}

    def get(self, spec: KernelSpec, device_index: int) -> Any:
        key = (spec, device_index)
        with self._lock:
            kernel = self._kernels.get(key)
            if kernel is None:
                module_key = (spec.source, spec.macros, device_index)
                module = self._modules.get(module_key)
                if module is None:
                    module = self._compile(spec, device_index)
                    self._modules[module_key] = module
                kernel = module.get_function(spec.function)
                self._kernels[key] = kernel
            return kernel

    def num_modules(self) -> int:
        """Modules compiled so far (one per source, specialisation and device)."""
        with self._lock:
            return len(self._modules)

    @staticmethod
    def _compile(spec: KernelSpec, device_index: int) -> Any:
        cupy = import_cupy()
        logger.info("compiling %s with %s for cuda:%d", spec.source.value, " ".join(spec.define_flags()),
                    device_index)
        with cupy.cuda.Device(device_index):
            return cupy.RawModule(code=expand_source(spec.source), options=spec.define_flags())


@functools.cache
def default_cache() -> KernelCache:
    """The process-wide cache (compiled modules belong to the process's CUDA contexts)."""
    return KernelCache()


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (the split-K heuristic's measure of width)."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def compute_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device (picks the prefill kernel)."""
    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def launch(plans: tuple[LaunchPlan, ...], device: torch.device, cache: KernelCache | None = None) -> None:
    """Launch plans in order on torch's current stream of ``device``."""
    if not plans:
        return
    cupy = import_cupy()
    cache = cache if cache is not None else default_cache()
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream_ptr = torch.cuda.current_stream(index).cuda_stream
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(stream_ptr):
        for plan in plans:
            kernel = cache.get(plan.kernel, index)
            kernel(plan.grid, plan.block, tuple(to_cupy_arg(a) for a in plan.args))
