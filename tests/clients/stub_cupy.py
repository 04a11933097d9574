"""A stand-in ``cupy`` for CPU tests of the client's CUDA IPC path: device memory is numpy.

Only what ``tierd_client`` uses: ``cuda.runtime.ipcOpenMemHandle`` / ``ipcCloseMemHandle``,
``cuda.Device(i)`` (a context manager, ``synchronize()``), ``cuda.UnownedMemory``,
``cuda.MemoryPointer``, ``ndarray(shape, dtype, memptr)`` and ``uint8``. ``export(nbytes)`` plays
the daemon: it makes an allocation and returns its 64-byte IPC handle. Every runtime call and
synchronize is appended to ``events`` in order (tests may append their own, e.g. RPC arrivals).
Like CUDA, opening a handle that is already open in this process is an error here, and an array
keeps its memory (and the memory's owner) alive, through DLPack too.
"""

from __future__ import annotations

import secrets
import threading
import types
from typing import Any

import numpy as np

BASE_PTR = 1 << 32


class _Backed(np.ndarray):
    """A numpy view that keeps the stub memory pointer it was made from alive (numpy's DLPack
    capsule owns the array, so torch tensors keep it too, as with real cupy)."""

    keep: Any = None


class StubCupy(types.ModuleType):
    """The module object; install with ``monkeypatch.setitem(sys.modules, "cupy", stub)``."""

    def __init__(self) -> None:
        super().__init__("cupy")
        self.events: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._allocations: dict[bytes, tuple[int, np.ndarray]] = {}  # handle -> (ptr, bytes)
        self._open: set[bytes] = set()
        self.uint8 = np.uint8
        self.cuda = types.SimpleNamespace(
            runtime=types.SimpleNamespace(ipcOpenMemHandle=self._ipc_open, ipcCloseMemHandle=self._ipc_close),
            Device=self._device, UnownedMemory=_UnownedMemory, MemoryPointer=_MemoryPointer)
        self.ndarray = self._ndarray

    # -- the daemon's side ---------------------------------------------------------------
    def export(self, nbytes: int) -> bytes:
        """A new zeroed allocation of ``nbytes``; its IPC handle."""
        handle = secrets.token_bytes(64)
        with self._lock:
            ptr = BASE_PTR * (len(self._allocations) + 1)
            self._allocations[handle] = (ptr, np.zeros(nbytes, dtype=np.uint8))
        return handle

    def device_bytes(self, handle: bytes) -> np.ndarray:
        """The allocation's bytes, as the exporting daemon sees them."""
        return self._allocations[handle][1]

    def count(self, name: str, handle: bytes | None = None) -> int:
        return sum(1 for event, arg in self.events if event == name and (handle is None or arg == handle))

    # -- cupy's surface --------------------------------------------------------------------
    def _ipc_open(self, handle: bytes) -> int:
        with self._lock:
            if handle in self._open:
                raise RuntimeError("cudaErrorAlreadyMapped: this process has the handle open")
            self._open.add(handle)
            self.events.append(("ipcOpenMemHandle", handle))
            return self._allocations[handle][0]

    def _ipc_close(self, ptr: int) -> None:
        with self._lock:
            handle = next(h for h, (base, _buf) in self._allocations.items() if base == ptr)
            if handle not in self._open:
                raise RuntimeError("cudaErrorInvalidValue: the handle is not open")
            self._open.discard(handle)
            self.events.append(("ipcCloseMemHandle", handle))

    def _device(self, index: int) -> _Device:
        return _Device(self, index)

    def _ndarray(self, shape: tuple[int, ...], dtype: Any, memptr: _MemoryPointer) -> _StubArray:
        address = memptr.mem.ptr + memptr.offset
        for base, buf in self._allocations.values():
            if base <= address < base + buf.size:
                count = int(np.prod(shape)) * np.dtype(dtype).itemsize
                start = address - base
                host = buf[start:start + count].view(dtype).reshape(shape).view(_Backed)
                host.keep = memptr
                return _StubArray(host, memptr)
        raise RuntimeError(f"address {address:#x} is not device memory")

    def is_open(self, handle: bytes) -> bool:
        return handle in self._open


class _Device:
    def __init__(self, stub: StubCupy, index: int) -> None:
        self._stub = stub
        self.index = index

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def synchronize(self) -> None:
        self._stub.events.append(("synchronize", self.index))


class _UnownedMemory:
    def __init__(self, ptr: int, size: int, owner: object, device_id: int) -> None:
        self.ptr, self.size, self.owner, self.device_id = ptr, size, owner, device_id


class _MemoryPointer:
    def __init__(self, mem: _UnownedMemory, offset: int) -> None:
        self.mem, self.offset = mem, offset


class _StubArray:
    """A device array: shape, dtype and DLPack (CPU here) over the stub memory."""

    def __init__(self, host: np.ndarray, memptr: _MemoryPointer) -> None:
        self._host = host
        self.memptr = memptr
        self.shape = host.shape
        self.dtype = host.dtype

    def get(self) -> np.ndarray:
        """A copy on the host (as ``cupy.ndarray.get``)."""
        return np.array(self._host)

    def __setitem__(self, index: Any, value: Any) -> None:
        self._host[index] = value

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._host.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        device: tuple[int, int] = self._host.__dlpack_device__()
        return device
