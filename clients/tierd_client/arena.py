"""Client-side views of a namespace's regions (the daemon's arenas), for the zero-copy path.

A region is ``num_slots * page_bytes`` bytes; slot ``i`` is bytes ``[i*page_bytes, (i+1)*page_bytes)``
and holds one page ``[num_layers][2][page_tokens][num_kv_heads][head_dim]``. The daemon owns the
memory: the client maps it (host regions: ``tierd_client.shm.map_shm``, the region's memfd
fetched from the daemon's region socket with the handle's grant; device regions: the handle's CUDA
IPC handle, opened through the process-wide ``tierd_client.cuda_ipc`` registry) and unmaps it on
``close``.

Ordering with the worker's own kernels on a CUDA region (enforced by the clients, not by CUDA):
the daemon copies a committed slot with its own streams, and may overwrite a released one at
once. So before a Commit of a lease on a CUDA region, and before a Release (or an Acquire that
carries ``release_later`` leases) of one, the client synchronizes that device in this process
(``cupy.cuda.Device(i).synchronize()``: this process's work only). A kernel still writing a slot
is thus never copied half-written, and one still reading a slot never sees the daemon's next
page. Work queued on the device after the Commit/Release call is the caller's to order.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from tierd.handles import HandleKind, RegionHandle
from tierd.page_index import PageIndexReader
from tierd.spec import DType, PageSpec
from tierd_client import cuda_ipc
from tierd_client.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from tierd_client.shm import MappedIndex, MappedShm, map_index, map_shm

# numpy has no bfloat16 or float8: those arrays carry the raw bits in an unsigned type of the same
# itemsize (use ``ArenaView.torch()`` for typed values).
_NUMPY_DTYPES: dict[DType, np.dtype] = {
    DType.FLOAT16: np.dtype(np.float16), DType.BFLOAT16: np.dtype(np.uint16),
    DType.FLOAT32: np.dtype(np.float32), DType.FLOAT8_E4M3: np.dtype(np.uint8),
    DType.FLOAT8_E5M2: np.dtype(np.uint8), DType.INT8: np.dtype(np.int8),
}


def numpy_dtype(dtype: DType) -> np.dtype:
    """The numpy dtype arena arrays of ``dtype`` use (raw bits for bfloat16 / float8)."""
    return _NUMPY_DTYPES[dtype]


def _torch_dtype(dtype: DType) -> Any:
    import torch

    return getattr(torch, dtype.label)


def _check_handle(handle: RegionHandle, spec: PageSpec) -> None:
    if handle.page_bytes != spec.page_bytes:
        raise FailedPreconditionError(
            f"{handle.tier.label} region {handle.name!r} has {handle.page_bytes}-byte slots but the "
            f"spec's pages are {spec.page_bytes} bytes: client and daemon disagree on the spec")
    if handle.size_bytes < handle.num_slots * handle.page_bytes:
        raise FailedPreconditionError(
            f"{handle.tier.label} region {handle.name!r} is {handle.size_bytes} bytes, too small for "
            f"{handle.num_slots} slots of {handle.page_bytes} bytes")


class ArenaView:
    """One region of one namespace, mapped into this process. Owned by the client that mapped it.

    ``numpy()``: ``[num_slots, num_layers, 2, page_tokens, num_kv_heads, head_dim]`` of the spec's
    dtype (raw bits for bfloat16/float8); ``bytes()``: ``uint8 [num_slots, page_bytes]``;
    ``torch()``: a tensor of the spec's dtype and the same shape (on the region's device);
    ``cupy()``: ``uint8 [num_slots, page_bytes]`` on the device (CUDA regions; both made once).
    Views stay valid until ``close()``; writing into slots the caller does not hold a FILL lease on
    corrupts other workers' pages. A CUDA region's arrays outlive ``close()`` safely: the IPC
    mapping is closed once the view is closed and the last array over it is gone.

    ``current_epoch()``: the epoch of the daemon run the client's session talks to (``b""`` while
    none is known); a CUDA view of a handle from another run is stale.
    """

    def __init__(self, handle: RegionHandle, spec: PageSpec,
                 current_epoch: Callable[[], bytes] | None = None) -> None:
        _check_handle(handle, spec)
        self.handle = handle
        self.spec = spec
        self._current_epoch = current_epoch
        self._lock = threading.Lock()
        self._mapped: MappedShm | None = None
        self._index: MappedIndex | None = None
        self._flat: memoryview | None = None
        self._mapping: cuda_ipc.IpcMapping | None = None  # of a CUDA IPC region
        self._cuda_mem: Any = None  # cupy.cuda.UnownedMemory over the region, owned by _mapping
        self._cupy: Any = None
        self._torch: Any = None
        self._closed = False
        if handle.kind is HandleKind.MEMFD:
            self._mapped = map_shm(handle)
        elif handle.kind is HandleKind.CUDA_IPC:
            if self.is_stale():  # its exporter is gone: opening it would fail in the driver
                raise NotFoundError(
                    f"region {handle.name!r} belongs to an earlier run of the daemon (it restarted): "
                    "register the namespace again and map the new handle")
            # Only a worker on a CUDA machine gets such a handle; cupy is imported there only.
            self._mapping = cuda_ipc.registry().open(self.device_index, handle.ipc_handle)
            self._cuda_mem = self._mapping.memory(handle.offset_bytes, handle.size_bytes)
        else:
            raise InvalidArgumentError(f"region handle kind {handle.kind!r} cannot be mapped")

    @property
    def num_slots(self) -> int:
        return self.handle.num_slots

    @property
    def page_bytes(self) -> int:
        return self.handle.page_bytes

    @property
    def is_cuda(self) -> bool:
        """Whether the region is device memory (a CUDA IPC handle)."""
        return self.handle.kind is HandleKind.CUDA_IPC

    @property
    def device_index(self) -> int:
        """The CUDA device of a device region (``FailedPreconditionError`` for host memory)."""
        return cuda_ipc.device_index_of(self.handle.device)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(num_slots, num_layers, 2, page_tokens, num_kv_heads, head_dim)``."""
        return (self.num_slots, *self.spec.page_shape)

    def is_stale(self) -> bool:
        """True when the daemon no longer serves this mapping (it stopped or restarted): its slots
        are no longer the cache's. Host regions: one ``stat`` of the region socket; CUDA regions:
        the handle's epoch differs from the session's current one (unknown epochs: not stale)."""
        if self._closed:
            return True
        if self._mapped is not None:
            return not self._mapped.is_current()
        current = self._current_epoch() if self._current_epoch is not None else b""
        return bool(current and self.handle.epoch and current != self.handle.epoch)

    def page_index(self) -> tuple[PageIndexReader, memoryview] | None:
        """The region's page index and its bytes as one flat view, for lease-free reads
        (``tierd_client.local_path``); ``None`` when the daemon publishes no index for it (device
        regions, older daemons). Mapped on first use, unmapped by ``close``."""
        self._require_open()
        if self._mapped is None or self.handle.index_bytes <= 0:
            return None
        with self._lock:
            if self._index is None:
                self._index = map_index(self.handle)
                self._flat = self._mapped.array().reshape(-1).data
            reader, flat = self._index.reader, self._flat
        if reader is None or flat is None:
            return None
        return reader, flat

    def _require_open(self) -> None:
        if self._closed:
            raise FailedPreconditionError(
                f"the view of region {self.handle.name!r} is closed (its client was closed)")

    def bytes(self) -> np.ndarray:
        """``uint8 [num_slots, page_bytes]`` over the shared memory (host regions only)."""
        self._require_open()
        if self._mapped is None:
            raise FailedPreconditionError(
                f"{self.handle.tier.label} region lives on {self.handle.device}; use torch() or cupy()")
        return self._mapped.array()

    def numpy(self) -> np.ndarray:
        """The region as ``[num_slots, num_layers, 2, page_tokens, num_kv_heads, head_dim]``."""
        dtype = numpy_dtype(DType.parse(self.spec.dtype))
        return self.bytes().view(dtype).reshape(self.shape)

    def slot(self, slot: int) -> np.ndarray:
        """One page ``[num_layers, 2, page_tokens, num_kv_heads, head_dim]`` (a view)."""
        if not 0 <= slot < self.num_slots:
            raise InvalidArgumentError(f"slot {slot} is outside 0..{self.num_slots - 1}")
        page: np.ndarray = self.numpy()[slot]
        return page

    def torch(self) -> Any:
        """The region as a torch tensor of the spec's dtype, shape ``shape``, sharing memory
        (a CUDA region's tensor is made once, from ``cupy()`` through DLPack)."""
        self._require_open()
        import torch

        dtype = _torch_dtype(DType.parse(self.spec.dtype))
        if self._mapped is not None:
            return torch.from_numpy(self.bytes()).view(dtype).reshape(self.shape)
        raw = self.cupy()
        with self._lock:
            if self._torch is None:
                self._torch = torch.utils.dlpack.from_dlpack(raw).view(dtype).reshape(self.shape)
            return self._torch

    def cupy(self) -> Any:
        """``uint8 [num_slots, page_bytes]`` cupy array over a CUDA IPC region (made once)."""
        self._require_open()
        with self._lock:
            if self._cuda_mem is None:
                raise FailedPreconditionError(
                    f"{self.handle.tier.label} region is host memory (or closed); use numpy()")
            if self._cupy is None:
                import cupy

                ptr = cupy.cuda.MemoryPointer(self._cuda_mem, 0)
                self._cupy = cupy.ndarray((self.num_slots, self.page_bytes), dtype=cupy.uint8,
                                          memptr=ptr)
            return self._cupy

    def close(self) -> None:
        """Unmap (idempotent). Arrays still referencing the mapping keep it alive until collected."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            mapped, self._mapped = self._mapped, None
            mapping, self._mapping = self._mapping, None
            self._cuda_mem = self._cupy = self._torch = None  # the caller's arrays keep theirs
            index, self._index = self._index, None
            flat, self._flat = self._flat, None
        if index is not None:
            index.close()
        if flat is not None:
            with contextlib.suppress(BufferError):  # a read in flight: the GC unmaps after it
                flat.release()
        if mapped is not None:
            mapped.close()  # unmaps once numpy/torch views of it are dropped; never unlinks
        if mapping is not None:
            cuda_ipc.registry().release(mapping)  # closed once no view and no array holds it
