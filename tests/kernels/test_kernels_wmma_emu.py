"""The emulated nvcuda::wmma (emu/wmma_emu.h) itself: element addressing of every layout, and the
misuses it must report (what the tensor-core kernel's emulated tests rely on)."""

from __future__ import annotations

import ctypes
import re

import pytest
import torch
from tk_emulator import EMU_DIR, Emulator, compile_library, launch_function

from tierd_kernels import plans

LD = 24  # ldm of the probe's a and b buffers (halves)
MODES = {"row_col": 0, "col_row": 1, "misaligned": 2, "bad_ldm": 3, "lanes_disagree": 4, "divergent": 5,
         "bad_float_ldm": 6, "no_sync_after_store": 7}


@pytest.fixture(scope="module")
def probe(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """emu/wmma_probe.cu built against the emulator (the `emulator` fixture skips where it cannot be)."""
    del emulator
    build = tmp_path_factory.mktemp("wmma_probe")
    unit = build / "probe.cpp"
    unit.write_text(f'#include "cuda_emu.h"\n#include "{EMU_DIR / "wmma_probe.cu"}"\nEMU_EXPORT(wmma_probe)\n')
    library = build / "probe.so"
    compile_library(unit, library)
    return ctypes.CDLL(str(library))


def _run(probe: ctypes.CDLL, mode: str) -> tuple[str | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the probe; returns (error, the expected d, d_row, d_col); only row_col and col_row multiply."""
    generator = torch.Generator().manual_seed(11)
    # One spare row: the lanes_disagree probe reads a + 16, past the 16 x LD tile.
    a = torch.randn((17, LD), generator=generator).half()
    b = torch.randn((17, LD), generator=generator).half()
    c = torch.randn((16, 16), generator=generator)
    # Room for 16 rows of LD floats: the bad_float_ldm store (ldm 18) writes past 16 x 16.
    d_row_buf = torch.full((16 * LD,), float("nan"))
    d_col_buf = torch.full((16 * LD,), float("nan"))
    d_row, d_col = d_row_buf[:256].view(16, 16), d_col_buf[:256].view(16, 16)
    args = (plans.pointer(a), plans.pointer(b), plans.pointer(c), plans.pointer(d_row_buf, writable=True),
            plans.pointer(d_col_buf, writable=True), plans.i32(MODES[mode]))
    error = launch_function(probe, "wmma_probe", (1, 1, 1), (32, 1, 1), args)
    if mode == "col_row":  # a col_major: (i, k) at a[k * LD + i]; b row_major: (k, n) at b[k * LD + n]
        expected = a[:16, :16].double().T @ b[:16, :16].double() + c.double()
    elif mode == "row_col":  # a row_major: (i, k) at a[i * LD + k]; b col_major: (k, n) at b[n * LD + k]
        expected = a[:16, :16].double() @ b[:16, :16].double().T + c.double()
    else:
        expected = c.double()
    return error, expected, d_row, d_col


@pytest.mark.parametrize("mode", ["row_col", "col_row"])
def test_wmma_layouts_address_elements_as_cuda_defines(probe: ctypes.CDLL, mode: str) -> None:
    error, expected, d_row, d_col = _run(probe, mode)
    assert error is None
    torch.testing.assert_close(d_row.double(), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(d_col.double().T, expected, atol=1e-4, rtol=1e-5)  # mem_col_major: (i, j) at i + 16 j


@pytest.mark.parametrize(("mode", "message"), [
    ("misaligned", "load_matrix_sync\\(matrix_a\\): pointer not 32-byte aligned"),
    ("bad_ldm", "ldm 20 is not a multiple of 8 elements"),
    ("lanes_disagree", "lanes of one warp passed different operations, pointers, ldm or layouts \\(lane 16"),
    ("divergent", "lanes of one warp passed different operations"),
    ("bad_float_ldm", "store_matrix_sync: ldm 18 is not a multiple of 4 elements"),
])
def test_wmma_misuse_is_reported(probe: ctypes.CDLL, mode: str, message: str) -> None:
    error, *_ = _run(probe, mode)
    assert error is not None
    assert re.search(message, error), error


def test_a_lane_reading_a_stored_tile_before_syncwarp_sees_stale_data(probe: ctypes.CDLL) -> None:
    """Each lane stores only its share of the tile, so a missing __syncwarp shows up as wrong data."""
    error, expected, d_row, _ = _run(probe, "no_sync_after_store")
    assert error is None
    flat = d_row.flatten()
    assert (flat[:31] == -1.0).all()           # lanes 0..30 read what lanes 1..31 had not stored yet
    assert flat[31].item() == expected[0, 0].item()  # lane 0 had stored element 0 (c[0, 0]: no mma here)
