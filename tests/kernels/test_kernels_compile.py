"""Every CUDA source compiles, with the macros the runtime uses, so a syntax error cannot land.

nvcc (skipped only when absent) builds each .cu for sm_90 (cubin, so ptxas also checks registers
and shared memory) and for a portable target (compute_75 PTX, the oldest CUDA 13 accepts), as
C++14 with warnings as errors. NVRTC, which CuPy uses at run time, compiles the expanded sources
when its library is installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tk_emulator import cuda_include_dir

from tierd_kernels.sources import KernelSource, KernelSpec, compile_check_specs, expand_source

CSRC = Path(__file__).resolve().parents[2] / "kernels" / "csrc"
NVCC = shutil.which("nvcc")
# (flag selecting the target, output kind); the portable PTX build covers one spec per source and dtype.
SM90 = ("-arch=sm_90", "-cubin")
PORTABLE = ("-arch=compute_75", "--ptx")


def _nvcc(source: Path, spec: KernelSpec, target: tuple[str, str], out_dir: Path) -> str | None:
    """None on success, else nvcc's output."""
    out = out_dir / f"{spec.function}_{abs(hash((spec, target)))}.out"
    command = [NVCC, target[1], target[0], "-std=c++14", "-Werror", "all-warnings", *spec.define_flags(),
               str(source), "-o", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    return None if result.returncode == 0 else f"{' '.join(command)}\n{result.stdout}{result.stderr}"


def _jobs(tmp_path: Path) -> list[tuple[Path, KernelSpec, tuple[str, str]]]:
    jobs = [(CSRC / spec.source.value, spec, SM90) for spec in compile_check_specs()]
    portable_seen: set[tuple[KernelSource, tuple[tuple[str, str], ...]]] = set()
    for spec in compile_check_specs():
        dtype_macros = tuple(m for m in spec.macros if m[0] == "TK_SCALAR_T")
        if (spec.source, dtype_macros) not in portable_seen:
            portable_seen.add((spec.source, dtype_macros))
            jobs.append((CSRC / spec.source.value, spec, PORTABLE))
    # The single-string form CuPy hands to NVRTC (local includes inlined) must compile too.
    expanded = tmp_path / "expanded_decode.cu"
    expanded.write_text(expand_source(KernelSource.DECODE))
    jobs.append((expanded, compile_check_specs()[1], SM90))
    return jobs


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_every_source_compiles_with_nvcc(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path)
    assert {job[0].name for job in jobs} >= {s.value for s in KernelSource}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        failures = [f for f in pool.map(lambda job: _nvcc(*job, tmp_path), jobs) if f is not None]
    assert not failures, "\n\n".join(failures)


def _load_nvrtc() -> ctypes.CDLL | None:
    # Sonames are found on LD_LIBRARY_PATH too (e.g. the lib dir of an nvidia-cuda-nvrtc wheel).
    candidates = [ctypes.util.find_library("nvrtc"), "libnvrtc.so.13", "libnvrtc.so.12"]
    include = cuda_include_dir()
    if include is not None:
        for lib_dir in (include.parent / "lib64", include.parent / "lib"):
            candidates += [str(p) for p in sorted(lib_dir.glob("libnvrtc.so*"))]
    for candidate in filter(None, candidates):
        try:
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    return None


def _nvrtc_compile(nvrtc: ctypes.CDLL, source: str, options: list[str]) -> str | None:
    """None on success, else NVRTC's log."""
    program = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"tierd_kernel.cu", 0, None, None):
        return "nvrtcCreateProgram failed"
    try:
        encoded = [o.encode() for o in options]
        status = nvrtc.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
        if status == 0:
            return None
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        return log.value.decode(errors="replace")
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


def test_every_source_compiles_with_nvrtc() -> None:
    nvrtc = _load_nvrtc()
    include = cuda_include_dir()
    if nvrtc is None or include is None:
        pytest.skip("libnvrtc is not installed (CuPy brings its own on GPU machines)")
    failures = []
    for spec in compile_check_specs():
        log = _nvrtc_compile(nvrtc, expand_source(spec.source), [f"-I{include}", "-arch=compute_90",
                                                                  *spec.define_flags()])
        if log is not None:
            failures.append(f"{spec}:\n{log}")
    assert not failures, "\n\n".join(failures)
