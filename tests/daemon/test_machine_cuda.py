"""The CUDA driver probes of the start-up checks: device totals and one device's free memory.

Without a driver they answer "nothing" / "unknown"; the ``cuda`` tests run only where a GPU is.
"""

from __future__ import annotations

import ctypes
import threading

import pytest

from tierd.daemon.machine import cuda_device_free_bytes, cuda_devices


@pytest.fixture
def totals() -> tuple[int, ...]:
    found = cuda_devices()
    if not found:
        pytest.skip("needs a CUDA GPU (libcuda found no device)")
    return found


def test_without_a_gpu_free_memory_is_unknown() -> None:
    if cuda_devices():
        pytest.skip("this machine has a CUDA device")
    assert cuda_device_free_bytes(0) is None


@pytest.mark.cuda
def test_free_memory_of_a_device_is_at_most_its_total(totals: tuple[int, ...]) -> None:
    for index, total_bytes in enumerate(totals):
        free_bytes = cuda_device_free_bytes(index)
        assert free_bytes is not None and 0 < free_bytes <= total_bytes
    assert cuda_device_free_bytes(len(totals)) is None  # a device that is not there


@pytest.mark.cuda
def test_the_probe_leaves_no_context_current(totals: tuple[int, ...]) -> None:
    # On a fresh thread: no context is current there before, whatever other tests made current.
    seen: list[tuple[int, int | None]] = []

    def probe_then_look() -> None:
        cuda_device_free_bytes(0)
        current = ctypes.c_void_p(None)
        status = ctypes.CDLL("libcuda.so.1").cuCtxGetCurrent(ctypes.byref(current))
        seen.append((status, current.value))

    thread = threading.Thread(target=probe_then_look)
    thread.start()
    thread.join()
    assert seen == [(0, None)], "the probe must pop the context it pushed"
