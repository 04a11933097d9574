"""This process's opened CUDA IPC mappings of the daemon's hbm regions, shared by every view.

Why process-wide state: CUDA maps an IPC handle once per process (per device context), not per
caller. ``cudaIpcCloseMemHandle`` then unmaps the memory for every user in the process (LMCache
keeps a process-wide registry for exactly this), so two clients of one worker that each opened
and closed on their own would pull the memory from under each other. The registry is one small
object, made on first use and guarded by its lock; nothing is created at import.

Design. ``open(device_index, ipc_handle)`` gives an ``IpcMapping``: opened with
``cupy.cuda.runtime.ipcOpenMemHandle`` the first time for that pair, the live one (count bumped)
after that. Each view gives its reference back with ``release`` once. The mapping object is the
``owner`` of every ``cupy.cuda.UnownedMemory`` over it, so each cupy array (and each torch tensor
made from one through DLPack) keeps it alive. ``ipcCloseMemHandle`` runs from a
``weakref.finalize`` of the mapping: the registry holds the mapping strongly only while some view
holds it, so the memory is closed exactly when every view has released it AND the last array over
it has been collected, whichever comes last; never twice, never under a live array. A handle
opened again while arrays keep its old mapping alive reuses that mapping (no second open).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tierd_client.errors import FailedPreconditionError


def device_index_of(device: str) -> int:
    """The index of ``"cuda:N"`` (``"cuda"`` is device 0)."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index or "0").isdigit():
        raise FailedPreconditionError(f"a CUDA IPC region must name a device 'cuda:N', got {device!r}")
    return int(index or 0)


def _close_handle(registry: IpcRegistry, device_index: int, ptr: int) -> None:
    # Under the registry's lock, so a concurrent open of the same handle never races the close.
    import cupy

    with registry.lock, cupy.cuda.Device(device_index):
        cupy.cuda.runtime.ipcCloseMemHandle(ptr)
        registry.closed += 1


@dataclass(eq=False)
class IpcMapping:
    """One opened handle: device memory at ``ptr`` (the allocation's base) on ``device_index``.

    ``views``: how many views hold it (changed by the registry only, under its lock).
    """

    device_index: int
    ipc_handle: bytes = field(repr=False)
    ptr: int
    views: int = 0

    def memory(self, offset_bytes: int, size_bytes: int) -> Any:
        """``cupy.cuda.UnownedMemory`` of ``size_bytes`` at ``offset_bytes``, owned by this
        mapping (arrays over it keep the mapping, so the IPC memory, alive)."""
        import cupy

        return cupy.cuda.UnownedMemory(self.ptr + offset_bytes, size_bytes, self, self.device_index)


class IpcRegistry:
    """The opened mappings of this process by ``(device_index, ipc_handle)``. Thread-safe."""

    def __init__(self) -> None:
        # Reentrant: a finalizer may run (closing a mapping) in a thread that holds the lock.
        self.lock = threading.RLock()
        self._held: dict[tuple[int, bytes], IpcMapping] = {}  # mappings some view holds
        self._live: weakref.WeakValueDictionary[tuple[int, bytes], IpcMapping] = (
            weakref.WeakValueDictionary())  # ... and those only arrays still keep
        self.opened = 0  # ipcOpenMemHandle calls made (for tests and stats)
        self.closed = 0  # ipcCloseMemHandle calls made

    def open(self, device_index: int, ipc_handle: bytes) -> IpcMapping:
        """The mapping of ``ipc_handle`` on ``device_index`` with one more view; opened if new."""
        key = (device_index, bytes(ipc_handle))
        with self.lock:
            mapping = self._live.get(key)
            if mapping is None:
                mapping = self._open_new(device_index, key[1])
                self._live[key] = mapping
            mapping.views += 1
            self._held[key] = mapping
            return mapping

    def _open_new(self, device_index: int, ipc_handle: bytes) -> IpcMapping:
        import cupy

        with cupy.cuda.Device(device_index):
            ptr = int(cupy.cuda.runtime.ipcOpenMemHandle(ipc_handle))
        self.opened += 1
        mapping = IpcMapping(device_index, ipc_handle, ptr)
        finalizer = weakref.finalize(mapping, _close_handle, self, device_index, ptr)
        finalizer.atexit = False  # at exit the process unmaps anyway; CUDA may be gone by then
        return mapping

    def release(self, mapping: IpcMapping) -> None:
        """One view gives its reference back; with none left, the mapping lives only as long as
        arrays over it (then it is closed)."""
        with self.lock:
            mapping.views -= 1
            if mapping.views > 0:
                return
            held = self._held.pop((mapping.device_index, mapping.ipc_handle), None)
        del held  # outside the lock: dropping the last reference runs the close right here

    def is_held(self, device_index: int, ipc_handle: bytes) -> bool:
        """Whether a view of this process holds that handle's mapping."""
        with self.lock:
            return (device_index, bytes(ipc_handle)) in self._held

    def is_mapped(self, device_index: int, ipc_handle: bytes) -> bool:
        """Whether that handle is mapped in this process (by a view, or arrays outliving one)."""
        with self.lock:
            return self._live.get((device_index, bytes(ipc_handle))) is not None

    def num_open(self) -> int:
        """Mappings open now (held by views or kept by arrays)."""
        with self.lock:
            return len(self._live)


class _Holder:
    """Where the one registry of the process lives; created on first use."""

    lock = threading.Lock()
    registry: IpcRegistry | None = None


def registry() -> IpcRegistry:
    """This process's registry (made on the first call)."""
    with _Holder.lock:
        if _Holder.registry is None:
            _Holder.registry = IpcRegistry()
        return _Holder.registry


def synchronize(devices: Iterable[int]) -> None:
    """Wait for all of this process's work on each of ``devices`` (``cudaDeviceSynchronize``:
    other processes' work is not waited for). Blocks: the async client runs it in a thread.
    No devices: nothing done, and cupy is not imported."""
    ordered = sorted(devices)
    if not ordered:
        return
    import cupy

    for device_index in ordered:
        cupy.cuda.Device(device_index).synchronize()
