"""The CUDA runtime calls tierd makes, behind one protocol: CuPy on a GPU, a strict fake in tests.

Everything tierd does with a GPU goes through a ``CudaRuntime`` bound to one device: the hbm
arena (``tierd.tiers.cuda_arena``), the page-locking of dram (``tierd.tiers.pinned``) and the CUDA
transfer engine (``tierd.store.transfer.cuda``). ``open_cuda_runtime`` imports CuPy on first use,
so ``import tierd`` needs no GPU.

Addresses are plain ints: device pointers (from ``malloc``) and host addresses (of shm slots or
callers' buffers) share CUDA's unified address space, so one ``copy_async`` moves any pair.
Streams and events are opaque ints owned by whoever created them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tierd.errors import TierdError

# cudaIpcMemHandle_t is 64 bytes.
IPC_HANDLE_BYTES = 64


class CudaError(TierdError):
    """A CUDA call failed (out of memory, a bad pointer, a failed copy): names the call and the
    driver's message."""

    status_name = "INTERNAL"


@dataclass(frozen=True)
class CopyRange:
    """``size_bytes`` from address ``src`` to address ``dst`` (device or host)."""

    dst: int
    src: int
    size_bytes: int


class CudaRuntime(Protocol):
    """One CUDA device, as tierd uses it. Thread-safe; each thread calls ``bind_thread`` first."""

    @property
    def device_index(self) -> int: ...

    def bind_thread(self) -> None:
        """Make this device current on the calling thread (CUDA's current device is per thread)."""

    def mem_info(self) -> tuple[int, int]:
        """``(free_bytes, total_bytes)`` of the device (``cudaMemGetInfo``)."""

    def malloc(self, size_bytes: int) -> int:
        """One raw ``cudaMalloc`` (never a caching pool: an IPC handle maps exactly this
        allocation); ``CudaError`` when the device cannot give it."""

    def free(self, ptr: int) -> None:
        """``cudaFree`` of an allocation ``malloc`` returned."""

    def memset(self, ptr: int, value: int, size_bytes: int) -> None:
        """Fill device bytes with ``value``; done when it returns."""

    def ipc_mem_handle(self, ptr: int) -> bytes:
        """The ``IPC_HANDLE_BYTES`` CUDA IPC handle of the allocation starting at ``ptr``."""

    def host_register(self, address: int, size_bytes: int) -> None:
        """Page-lock host memory for DMA (``cudaHostRegister``, portable); ``size_bytes`` > 0."""

    def host_unregister(self, address: int) -> None:
        """Undo ``host_register`` of the range starting at ``address`` (before it is unmapped)."""

    def create_stream(self) -> int:
        """A new non-blocking stream (never the legacy NULL stream)."""

    def destroy_stream(self, stream: int) -> None: ...

    def copy_batch_async(self, copies: Sequence[CopyRange], stream: int) -> None:
        """Queue every copy on ``stream``, in order (one batch call where the driver has one).

        From or to page-locked or device memory the call returns at once; with pageable host
        memory it returns once the source was staged (to the device) or the copy is done (from it).
        """

    def record_event(self, stream: int) -> int:
        """A new blocking-sync event recorded on ``stream`` (done once what was queued before is)."""

    def wait_event(self, event: int) -> None:
        """Block the calling thread (GIL released) until ``event`` is done; ``CudaError`` if the
        work before it failed."""

    def destroy_event(self, event: int) -> None: ...


def open_cuda_runtime(device_index: int) -> CudaRuntime:
    """The CuPy runtime of ``cuda:device_index``; ``CudaError`` (one line) when CuPy or the
    device is missing."""
    from tierd.tiers.cuda_cupy import CupyRuntime

    return CupyRuntime(device_index)
