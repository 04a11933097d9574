"""``CudaRuntime`` on a real GPU: raw calls of CuPy's ``cupy.cuda.runtime`` (never its pools).

Imported only by ``open_cuda_runtime``; CuPy itself is imported in ``CupyRuntime.__init__``, so
this module imports without CuPy. Every CUDA failure becomes one ``CudaError`` line naming the
call, the device and the driver's message.

``batch_api=True`` issues a ``copy_batch_async`` as one ``cuMemcpyBatchAsync`` (CUDA 12.8+,
through cuda-python's ``cuda.bindings.driver``) when every end of every copy lies in memory this
runtime allocated or registered and no copy writes what another copy of the batch touches (the
driver does not order copies within a batch); otherwise, and wherever the entry point is missing,
it loops ``cudaMemcpyAsync``, which is strictly in stream order.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import importlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from tierd.tiers.cuda_runtime import CopyRange, CudaError

log = logging.getLogger(__name__)

# Flag values of cuda_runtime_api.h and cuda.h (the same in CUDA 12.x and 13.x).
HOST_REGISTER_PORTABLE = 0x01
STREAM_NON_BLOCKING = 0x01
EVENT_BLOCKING_SYNC = 0x01
EVENT_DISABLE_TIMING = 0x02
MEMCPY_DEFAULT = 4
CU_MEMCPY_SRC_ACCESS_ORDER_STREAM = 1

# cuGetProcAddress(..., 12080) returns the CUDA 12.8 entry point on any newer driver too: the one
# with a failIdx out-parameter before hStream (13.x's default cuMemcpyBatchAsync dropped it).
# Mixing the two signatures corrupts the stack, so the version and the prototype go together.
BATCH_ABI_CUDA_VERSION = 12080


class _MemLocation(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint), ("id", ctypes.c_int)]   # CUmemLocation


class _MemcpyAttributes(ctypes.Structure):
    _fields_ = [("srcAccessOrder", ctypes.c_uint), ("srcLocHint", _MemLocation),   # CUmemcpyAttributes
                ("dstLocHint", _MemLocation), ("flags", ctypes.c_uint)]


# CUresult cuMemcpyBatchAsync(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, size_t count,
#     CUmemcpyAttributes *attrs, size_t *attrsIdxs, size_t numAttrs, size_t *failIdx, CUstream hStream)
BATCH_PROTOTYPE = ctypes.CFUNCTYPE(
    ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p)


class _Ranges:
    """Disjoint address ranges ``[base, base + size_bytes)``, keyed by base (not thread-safe)."""

    def __init__(self) -> None:
        self._bases: list[int] = []
        self._sizes: dict[int, int] = {}

    def add(self, base: int, size_bytes: int) -> None:
        bisect.insort(self._bases, base)
        self._sizes[base] = size_bytes

    def discard(self, base: int) -> None:
        if self._sizes.pop(base, None) is not None:
            self._bases.remove(base)

    def holds(self, address: int, size_bytes: int) -> bool:
        index = bisect.bisect_right(self._bases, address) - 1
        if index < 0:
            return False
        base = self._bases[index]
        return address + size_bytes <= base + self._sizes[base]


def _writes_overlap(copies: Sequence[CopyRange]) -> bool:
    """Whether a copy of the batch writes bytes that another (or itself) reads or writes."""
    dsts = sorted((copy.dst, copy.dst + copy.size_bytes) for copy in copies)
    if any(dsts[i][1] > dsts[i + 1][0] for i in range(len(dsts) - 1)):
        return True
    starts = [start for start, _ in dsts]
    for copy in copies:
        # The dst ranges are disjoint and sorted (so are their ends): only the last one starting
        # before the src's end can reach into the src.
        index = bisect.bisect_left(starts, copy.src + copy.size_bytes) - 1
        if index >= 0 and dsts[index][1] > copy.src:
            return True
    return False


def _import_cupy_runtime(device_index: int) -> Any:
    try:
        cupy = importlib.import_module("cupy")
    except (ImportError, OSError) as exc:
        raise CudaError(f"import cupy for cuda:{device_index}: {exc} (install tierd[cuda] on a machine with a "
                        f"CUDA driver)") from exc
    return cupy.cuda.runtime


class _BatchCopy:
    """``cuMemcpyBatchAsync`` at the CUDA 12.8 ABI; ``resolve`` says why not when it is missing."""

    def __init__(self, function: Any) -> None:
        self._function = function
        attributes = _MemcpyAttributes()
        attributes.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM   # read sources in stream order
        self._attributes = attributes
        self._attribute_index = (ctypes.c_size_t * 1)(0)   # one attribute set, from copy 0 on

    @classmethod
    def resolve(cls) -> _BatchCopy | str:
        """The entry point, or why it cannot be used (for the log)."""
        try:
            driver = importlib.import_module("cuda.bindings.driver")
        except ImportError as exc:
            return f"cuda-python's cuda.bindings.driver is not importable ({exc})"
        try:
            err, version = driver.cuDriverGetVersion()
            if err != driver.CUresult.CUDA_SUCCESS:
                return f"cuDriverGetVersion failed: {err}"
            if version < BATCH_ABI_CUDA_VERSION:
                return f"the driver supports CUDA {version}, cuMemcpyBatchAsync needs {BATCH_ABI_CUDA_VERSION}"
            result = driver.cuGetProcAddress(b"cuMemcpyBatchAsync", BATCH_ABI_CUDA_VERSION, 0)
        except Exception as exc:   # any binding mismatch means: use the loop
            return f"resolving cuMemcpyBatchAsync raised {exc!r}"
        if result[0] != driver.CUresult.CUDA_SUCCESS or not int(result[1]):
            return f"cuGetProcAddress(cuMemcpyBatchAsync, {BATCH_ABI_CUDA_VERSION}) failed: {result[0]}"
        return cls(BATCH_PROTOTYPE(int(result[1])))

    def copy(self, copies: Sequence[CopyRange], stream: int) -> str | None:
        """Queue ``copies`` with one call (the GIL released); None, or what the driver said."""
        count = len(copies)
        dsts = (ctypes.c_uint64 * count)(*(copy.dst for copy in copies))
        srcs = (ctypes.c_uint64 * count)(*(copy.src for copy in copies))
        sizes = (ctypes.c_size_t * count)(*(copy.size_bytes for copy in copies))
        fail_index = ctypes.c_size_t(0)
        status = int(self._function(dsts, srcs, sizes, count, ctypes.byref(self._attributes),
                                    self._attribute_index, 1, ctypes.byref(fail_index), stream))
        if status == 0:
            return None
        where = "" if fail_index.value >= count else f" at copy {fail_index.value}"
        return f"CUresult {status}{where}"


class CupyRuntime:
    """One GPU through CuPy's raw runtime calls (see the module docstring). Thread-safe: each
    thread calls ``bind_thread`` first (the constructing thread is bound)."""

    def __init__(self, device_index: int, *, batch_api: bool = False) -> None:
        self._device_index = device_index
        self._rt = _import_cupy_runtime(device_index)
        self._cuda_error: type[Exception] = self._rt.CUDARuntimeError
        count = int(self._call("cudaGetDeviceCount", self._rt.getDeviceCount))
        if not 0 <= device_index < count:
            raise CudaError(f"cudaSetDevice on cuda:{device_index}: no such device ({count} visible; "
                            f"check CUDA_VISIBLE_DEVICES and the configured device index)")
        self.bind_thread()
        self._lock = threading.Lock()
        self._allocations = _Ranges()
        self._registered = _Ranges()
        self._batch: _BatchCopy | None = None
        if batch_api:
            resolved = _BatchCopy.resolve()
            if isinstance(resolved, str):
                log.warning("cuda:%d: copies go one cudaMemcpyAsync each: %s", device_index, resolved)
            else:
                self._batch = resolved

    def __repr__(self) -> str:
        return f"CupyRuntime(cuda:{self._device_index}, batch_api={self._batch is not None})"

    @property
    def device_index(self) -> int:
        return self._device_index

    def bind_thread(self) -> None:
        self._call("cudaSetDevice", self._rt.setDevice, self._device_index)

    def mem_info(self) -> tuple[int, int]:
        free_bytes, total_bytes = self._call("cudaMemGetInfo", self._rt.memGetInfo)
        return int(free_bytes), int(total_bytes)

    def malloc(self, size_bytes: int) -> int:
        if size_bytes <= 0:
            raise CudaError(f"cudaMalloc({size_bytes} B) on cuda:{self._device_index}: size must be > 0")
        ptr = int(self._call(f"cudaMalloc({size_bytes} B)", self._rt.malloc, size_bytes))
        with self._lock:
            self._allocations.add(ptr, size_bytes)
        return ptr

    def free(self, ptr: int) -> None:
        self._call(f"cudaFree({ptr:#x})", self._rt.free, ptr)
        with self._lock:
            self._allocations.discard(ptr)

    def memset(self, ptr: int, value: int, size_bytes: int) -> None:
        self._call(f"cudaMemset({ptr:#x}, {value}, {size_bytes} B)", self._rt.memset, ptr, value, size_bytes)

    def ipc_mem_handle(self, ptr: int) -> bytes:
        return bytes(self._call(f"cudaIpcGetMemHandle({ptr:#x})", self._rt.ipcGetMemHandle, ptr))

    def host_register(self, address: int, size_bytes: int) -> None:
        call = f"cudaHostRegister({address:#x}, {size_bytes} B)"
        if size_bytes <= 0:
            raise CudaError(f"{call} on cuda:{self._device_index}: size must be > 0 (cudaErrorInvalidValue)")
        self._call(call, self._rt.hostRegister, address, size_bytes, HOST_REGISTER_PORTABLE)
        with self._lock:
            self._registered.add(address, size_bytes)

    def host_unregister(self, address: int) -> None:
        self._call(f"cudaHostUnregister({address:#x})", self._rt.hostUnregister, address)
        with self._lock:
            self._registered.discard(address)

    def create_stream(self) -> int:
        return int(self._call("cudaStreamCreateWithFlags(NonBlocking)", self._rt.streamCreateWithFlags,
                              STREAM_NON_BLOCKING))

    def destroy_stream(self, stream: int) -> None:
        self._call(f"cudaStreamDestroy({stream:#x})", self._rt.streamDestroy, stream)

    def copy_batch_async(self, copies: Sequence[CopyRange], stream: int) -> None:
        """Queue ``copies`` in order on ``stream``. A bad size queues nothing; a failing copy
        leaves the ones before it queued."""
        for index, copy in enumerate(copies):
            if copy.size_bytes <= 0:
                raise CudaError(f"copy_batch_async (copy {index}) on cuda:{self._device_index}: size_bytes "
                                f"must be > 0, got {copy.size_bytes}")
        if self._batch is not None and len(copies) > 1 and self._batchable(copies):
            failure = self._batch.copy(copies, stream)
            if failure is not None:
                raise CudaError(f"cuMemcpyBatchAsync({len(copies)} copies) on cuda:{self._device_index}: {failure}")
            return
        for index, copy in enumerate(copies):
            self._call(f"cudaMemcpyAsync(copy {index} of {len(copies)}: {copy.size_bytes} B {copy.src:#x} -> "
                       f"{copy.dst:#x})", self._rt.memcpyAsync, copy.dst, copy.src, copy.size_bytes,
                       MEMCPY_DEFAULT, stream)

    def record_event(self, stream: int) -> int:
        event = int(self._call("cudaEventCreateWithFlags(BlockingSync|DisableTiming)",
                               self._rt.eventCreateWithFlags, EVENT_BLOCKING_SYNC | EVENT_DISABLE_TIMING))
        try:
            self._call(f"cudaEventRecord(stream {stream:#x})", self._rt.eventRecord, event, stream)
        except CudaError:
            with contextlib.suppress(self._cuda_error):   # the record's error is the one to report
                self._rt.eventDestroy(event)
            raise
        return event

    def wait_event(self, event: int) -> None:
        self._call(f"cudaEventSynchronize({event:#x})", self._rt.eventSynchronize, event)

    def destroy_event(self, event: int) -> None:
        self._call(f"cudaEventDestroy({event:#x})", self._rt.eventDestroy, event)

    def _batchable(self, copies: Sequence[CopyRange]) -> bool:
        """Every end in device memory or page-locked host memory of this runtime (the batch
        reads sources in stream order, which pageable memory cannot give), no write conflict."""
        with self._lock:
            for copy in copies:
                for address in (copy.dst, copy.src):
                    if not (self._allocations.holds(address, copy.size_bytes)
                            or self._registered.holds(address, copy.size_bytes)):
                        return False
        return not _writes_overlap(copies)

    def _call(self, call: str, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except self._cuda_error as exc:
            raise CudaError(f"{call} on cuda:{self._device_index}: {exc}") from exc
