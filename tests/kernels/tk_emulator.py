"""Run the CUDA kernels on the CPU: compile a kernel source with g++ against emu/cuda_emu.h and
execute tierd_kernels launch plans with it (test-only; see the header for what is emulated).

Each (source, macros) specialisation becomes one shared library. Before a launch, the number and
sizes of the plan's arguments are checked against the kernel's real C signature, so a Python
argument list that drifts from the ``extern "C"`` declaration fails here, not on a GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tierd_kernels.plans import ArgKind, KernelArg, LaunchPlan
from tierd_kernels.sources import KernelSource, KernelSpec, expand_source

EMU_DIR = Path(__file__).resolve().parent / "emu"
CSRC_DIR = Path(__file__).resolve().parents[2] / "kernels" / "csrc"
FUNCTIONS = {
    KernelSource.DECODE: ("tk_decode_partial", "tk_decode_reduce"),
    KernelSource.PREFILL: ("tk_prefill",),
    KernelSource.PREFILL_MMA: ("tk_prefill_mma",),
    KernelSource.PAGE_COPY: ("tk_gather_pages", "tk_scatter_pages", "tk_store_kv"),
}
CXX_FLAGS = ("-std=c++17", "-O1", "-shared", "-fPIC", "-fno-strict-aliasing", "-U_FORTIFY_SOURCE",
             "-DTK_EMULATION", "-Wno-attributes")
# Set TK_EMULATOR_ASAN=1 (and LD_PRELOAD=$(g++ -print-file-name=libasan.so)) to also run the emulated
# kernels under AddressSanitizer, which then checks their shared-memory indexing too.
ASAN_FLAGS = ("-fsanitize=address", "-fno-omit-frame-pointer", "-g")
ERROR_BYTES = 512
_CTYPES = {ArgKind.POINTER: ctypes.c_uint64, ArgKind.INT32: ctypes.c_int32, ArgKind.INT64: ctypes.c_int64,
           ArgKind.FLOAT32: ctypes.c_float}


def _cxx_flags() -> tuple[str, ...]:
    return CXX_FLAGS + (ASAN_FLAGS if os.environ.get("TK_EMULATOR_ASAN") == "1" else ())


class EmulationError(RuntimeError):
    """The emulated kernel did something a GPU would fault or race on, or the plan mismatched it."""


def cuda_include_dir() -> Path | None:
    """The CUDA toolkit's include directory (for cuda_fp16.h), if a toolkit is installed."""
    candidates = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for root in candidates:
        if root and (Path(root) / "include" / "cuda_fp16.h").is_file():
            return Path(root) / "include"
    return None


def available() -> str | None:
    """None when the emulator can be built here, else why not."""
    if shutil.which("g++") is None:
        return "g++ is not installed"
    if cuda_include_dir() is None:
        return "no CUDA toolkit headers (cuda_fp16.h) found"
    return None


class Emulator:
    """Builds and runs emulated kernels; libraries are cached in ``build_dir`` by content hash."""

    def __init__(self, build_dir: Path) -> None:
        self._build_dir = build_dir
        self._libraries: dict[tuple[KernelSource, tuple[tuple[str, str], ...]], ctypes.CDLL] = {}

    def _library_path(self, spec: KernelSpec) -> tuple[Path, Path]:
        exports = "".join(f"EMU_EXPORT({f})\n" for f in FUNCTIONS[spec.source])
        unit = f'#include "cuda_emu.h"\n#include "{CSRC_DIR / spec.source.value}"\n{exports}'
        emu_headers = tuple(path.read_text() for path in sorted(EMU_DIR.glob("*.h")))  # cuda_emu.h, wmma_emu.h
        digest = hashlib.sha256("\0".join((
            unit, " ".join(_cxx_flags()), " ".join(spec.define_flags()), *emu_headers,
            expand_source(spec.source))).encode()).hexdigest()[:20]  # the source with its headers
        source_path = self._build_dir / f"{spec.source.name.lower()}_{digest}.cpp"
        if not source_path.exists():
            source_path.write_text(unit)
        return source_path, source_path.with_suffix(".so")

    def _compile(self, spec: KernelSpec) -> Path:
        source_path, library_path = self._library_path(spec)
        if library_path.exists():
            return library_path
        compile_library(source_path, library_path, spec.define_flags())
        return library_path

    def build(self, specs: Iterable[KernelSpec], workers: int | None = None) -> None:
        """Compile the libraries of ``specs`` in parallel (one per distinct source and macros)."""
        distinct = {(s.source, s.macros): s for s in specs}
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            list(pool.map(self._compile, distinct.values()))

    def _library(self, spec: KernelSpec) -> ctypes.CDLL:
        key = (spec.source, spec.macros)
        if key not in self._libraries:
            self._libraries[key] = ctypes.CDLL(str(self._compile(spec)))
        return self._libraries[key]

    def check_signature(self, plan: LaunchPlan) -> None:
        """The plan passes as many arguments as the kernel declares, each of the declared size."""
        library = self._library(plan.kernel)
        name = plan.kernel.function
        count = getattr(library, f"emu_num_params_{name}")()
        sizes = (ctypes.c_int * max(count, 1))()
        getattr(library, f"emu_param_sizes_{name}")(sizes)
        planned = [arg.kind.size_bytes for arg in plan.args]
        if count != len(plan.args) or list(sizes)[:count] != planned:
            raise EmulationError(f"{name}: the kernel takes {count} parameters of sizes {list(sizes)[:count]}, "
                                 f"the plan passes {len(plan.args)} of sizes {planned}")

    def run(self, launches: Iterable[LaunchPlan]) -> None:
        """Execute plans in order, as a stream would."""
        for plan in launches:
            self.check_signature(plan)
            self._launch(plan)

    def _launch(self, plan: LaunchPlan) -> None:
        error = launch_function(self._library(plan.kernel), plan.kernel.function, plan.grid, plan.block, plan.args)
        if error is not None:
            raise EmulationError(f"{plan.kernel.function} {dict(plan.kernel.macros)}: {error}")


def compile_library(source_path: Path, library_path: Path, define_flags: Iterable[str] = ()) -> None:
    """g++ a translation unit that includes cuda_emu.h and a kernel source into a shared library."""
    include = cuda_include_dir()
    tmp = library_path.with_suffix(f".{os.getpid()}.tmp")
    command = ["g++", *_cxx_flags(), *define_flags, f"-I{EMU_DIR}", f"-I{CSRC_DIR}", f"-I{include}",
               str(source_path), "-o", str(tmp)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise EmulationError(f"g++ failed for {source_path.name} {' '.join(define_flags)}:\n{result.stderr[-4000:]}")
    tmp.replace(library_path)


def launch_function(library: ctypes.CDLL, function: str, grid: tuple[int, int, int], block: tuple[int, int, int],
                    args: tuple[KernelArg, ...]) -> str | None:
    """Run one EMU_EXPORTed kernel of a library; None on success, else the emulator's report."""
    values = [_CTYPES[arg.kind](arg.value) for arg in args]
    argv = (ctypes.c_void_p * len(values))(*(ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values))
    regions = _regions(args)
    region_array = (ctypes.c_uint64 * max(len(regions), 1))(*regions)
    error = ctypes.create_string_buffer(ERROR_BYTES)
    launch = getattr(library, f"emu_launch_{function}")
    status = launch((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), argv, region_array, len(regions) // 3,
                    error, ERROR_BYTES)
    return None if status == 0 else error.value.decode()


def _regions(args: tuple[KernelArg, ...]) -> list[int]:
    flat: list[int] = []
    for arg in args:
        if arg.kind is ArgKind.POINTER and arg.extent_bytes > 0:
            flat += [int(arg.value), arg.extent_bytes, int(arg.writable)]
    return flat
