"""A stand-in for ``cupy.cuda.runtime`` (and ``cuda.bindings.driver``) backed by the strict fake,
so ``CupyRuntime``'s plumbing (argument order, flags, error wrapping, the batch ABI) runs on CPU."""

from __future__ import annotations

import ctypes
import sys
import types
from collections.abc import Callable
from typing import Any

import pytest
from cuda_fake_runtime import FakeCudaRuntime

from tierd.tiers.cuda_cupy import BATCH_PROTOTYPE
from tierd.tiers.cuda_runtime import CopyRange, CudaError


class StubCUDARuntimeError(RuntimeError):
    """What ``cupy.cuda.runtime.CUDARuntimeError`` is to CuPy."""


class StubRuntime:
    """``cupy.cuda.runtime`` over a ``FakeCudaRuntime``; records the flags it was given."""

    CUDARuntimeError = StubCUDARuntimeError

    def __init__(self, fake: FakeCudaRuntime, device_count: int = 1) -> None:
        self.fake = fake
        self.device_count = device_count
        self.flags: dict[str, list[int]] = {"hostRegister": [], "streamCreateWithFlags": [],
                                            "eventCreateWithFlags": []}
        self.memcpy_kinds: list[int] = []
        self._events: dict[int, int | None] = {}   # stub event -> the fake's recorded event

    def _fake(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except CudaError as exc:
            raise StubCUDARuntimeError(f"cudaErrorStub: {exc}") from exc

    def getDeviceCount(self) -> int:
        return self.device_count

    def setDevice(self, device: int) -> None:
        if device != self.fake.device_index:
            raise StubCUDARuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {device}")
        self.fake.bind_thread()

    def memGetInfo(self) -> tuple[int, int]:
        return self._fake(self.fake.mem_info)  # type: ignore[no-any-return]

    def malloc(self, size: int) -> int:
        return self._fake(self.fake.malloc, size)  # type: ignore[no-any-return]

    def free(self, ptr: int) -> None:
        self._fake(self.fake.free, ptr)

    def memset(self, ptr: int, value: int, size: int) -> None:
        self._fake(self.fake.memset, ptr, value, size)

    def ipcGetMemHandle(self, ptr: int) -> bytes:
        return self._fake(self.fake.ipc_mem_handle, ptr)  # type: ignore[no-any-return]

    def hostRegister(self, ptr: int, size: int, flags: int) -> None:
        self.flags["hostRegister"].append(flags)
        self._fake(self.fake.host_register, ptr, size)

    def hostUnregister(self, ptr: int) -> None:
        self._fake(self.fake.host_unregister, ptr)

    def streamCreateWithFlags(self, flags: int) -> int:
        self.flags["streamCreateWithFlags"].append(flags)
        return self._fake(self.fake.create_stream)  # type: ignore[no-any-return]

    def streamDestroy(self, stream: int) -> None:
        self._fake(self.fake.destroy_stream, stream)

    def memcpyAsync(self, dst: int, src: int, size: int, kind: int, stream: int) -> None:
        self.memcpy_kinds.append(kind)
        self._fake(self.fake.copy_batch_async, [CopyRange(dst, src, size)], stream)

    def eventCreateWithFlags(self, flags: int) -> int:
        self.flags["eventCreateWithFlags"].append(flags)
        event = 0x1000 + len(self._events)
        self._events[event] = None
        return event

    def eventRecord(self, event: int, stream: int) -> None:
        self._events[event] = self._fake(self.fake.record_event, stream)

    def eventSynchronize(self, event: int) -> None:
        recorded = self._events[event]
        if recorded is not None:
            self._fake(self.fake.wait_event, recorded)

    def eventDestroy(self, event: int) -> None:
        recorded = self._events.pop(event)
        if recorded is not None:
            self._fake(self.fake.destroy_event, recorded)


def install_cupy(monkeypatch: pytest.MonkeyPatch, runtime: StubRuntime) -> None:
    """Make ``import cupy`` give ``runtime`` as ``cupy.cuda.runtime``."""
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=runtime)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cupy", cupy)


class StubDriver:
    """``cuda.bindings.driver`` whose ``cuMemcpyBatchAsync`` is a C-callable Python function at
    the 12.8 ABI, running the copies on the fake; records each call's copies."""

    def __init__(self, fake: FakeCudaRuntime, driver_version: int = 12090, status: int = 0) -> None:
        self.fake = fake
        self.driver_version = driver_version
        self.status = status
        self.batches: list[list[CopyRange]] = []
        self.attributes: list[tuple[int, int, int]] = []
        self.asked: list[tuple[bytes, int, int]] = []
        self.CUresult = types.SimpleNamespace(CUDA_SUCCESS=0)
        self._callback = BATCH_PROTOTYPE(self._batch)   # kept alive as long as the driver

    def cuDriverGetVersion(self) -> tuple[int, int]:
        return 0, self.driver_version

    def cuGetProcAddress(self, symbol: bytes, version: int, flags: int) -> tuple[int, int, int]:
        self.asked.append((symbol, version, flags))
        pointer = ctypes.cast(self._callback, ctypes.c_void_p).value
        return 0, pointer or 0, 0

    def _batch(self, dsts: int, srcs: int, sizes: int, count: int, attrs: int, attrs_idxs: int, num_attrs: int,
               fail_idx: int, stream: int | None) -> int:
        dst = (ctypes.c_uint64 * count).from_address(dsts)
        src = (ctypes.c_uint64 * count).from_address(srcs)
        size = (ctypes.c_size_t * count).from_address(sizes)
        copies = [CopyRange(dst[i], src[i], size[i]) for i in range(count)]
        self.batches.append(copies)
        # (srcAccessOrder of the one attribute set, how many sets, the first copy they apply to)
        self.attributes.append((ctypes.c_uint.from_address(attrs).value, num_attrs,
                                ctypes.c_size_t.from_address(attrs_idxs).value))
        if self.status != 0:
            ctypes.c_size_t.from_address(fail_idx).value = 1
            return self.status
        self.fake.copy_batch_async(copies, stream or 0)
        return 0


def install_driver(monkeypatch: pytest.MonkeyPatch, driver: StubDriver | None) -> None:
    """Make ``import cuda.bindings.driver`` give ``driver`` (None: an ImportError)."""
    for name in ("cuda", "cuda.bindings"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    if driver is None:
        monkeypatch.setitem(sys.modules, "cuda.bindings.driver", None)   # import raises ImportError
    else:
        monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)
