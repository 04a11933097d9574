"""Page-locked staging memory of the CUDA engine: hbm pages pass through it on their way to disk.

The disk writer reads a page from host memory some time after it was queued (when its group
commits), so a device page headed for disk is first copied into a staging range, which is given
back once its write settled. ``RangeAllocator`` does the bookkeeping (first fit, neighbours
merged); ``StagingPool`` owns one anonymous mapping, page-locked with the runtime, and hands out
views of it. Owned by the CUDA engine.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import mmap
import threading

import numpy as np

from tierd.errors import InvalidArgument, Unavailable
from tierd.tiers.cuda_runtime import CudaRuntime

log = logging.getLogger(__name__)


class RangeAllocator:
    """Ranges of ``[0, capacity_bytes)``: ``take`` the first free one that fits, ``give`` it back.

    Not thread-safe (its owner locks). Free ranges never overlap and never touch (neighbours
    merge), so a freed pool is one range again.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 1:
            raise InvalidArgument(f"a range allocator needs at least 1 byte, got {capacity_bytes}")
        self._capacity_bytes = capacity_bytes
        self._starts: list[int] = [0]       # free ranges, sorted by start
        self._sizes: list[int] = [capacity_bytes]
        self._taken: dict[int, int] = {}    # start -> size of ranges handed out

    @property
    def capacity_bytes(self) -> int:
        return self._capacity_bytes

    @property
    def free_bytes(self) -> int:
        return sum(self._sizes)

    def take(self, size_bytes: int) -> int | None:
        """The start of a free range of ``size_bytes``, or None when none is free now."""
        if size_bytes < 1:
            raise InvalidArgument(f"a staging range needs at least 1 byte, got {size_bytes}")
        for k, free in enumerate(self._sizes):
            if free >= size_bytes:
                start = self._starts[k]
                if free == size_bytes:
                    del self._starts[k], self._sizes[k]
                else:
                    self._starts[k] += size_bytes
                    self._sizes[k] -= size_bytes
                self._taken[start] = size_bytes
                return start
        return None

    def give(self, start: int) -> None:
        """Free the range ``take`` returned at ``start``; ``InvalidArgument`` for any other."""
        size = self._taken.pop(start, None)
        if size is None:
            raise InvalidArgument(f"offset {start} is not the start of a taken staging range")
        k = bisect.bisect_left(self._starts, start)
        self._starts.insert(k, start)
        self._sizes.insert(k, size)
        if k + 1 < len(self._starts) and start + size == self._starts[k + 1]:
            self._sizes[k] += self._sizes.pop(k + 1)
            self._starts.pop(k + 1)
        if k > 0 and self._starts[k - 1] + self._sizes[k - 1] == start:
            self._sizes[k - 1] += self._sizes.pop(k)
            self._starts.pop(k)


class StagingPool:
    """``capacity_bytes`` of page-locked host memory, handed out as views (see the module doc).

    Thread-safe. A page larger than the whole pool never fits (the caller stages it in pageable
    memory instead).
    """

    def __init__(self, runtime: CudaRuntime, capacity_bytes: int, register_chunk_bytes: int) -> None:
        self._runtime = runtime
        self._cond = threading.Condition()
        self._alloc = RangeAllocator(capacity_bytes)
        self._mm = mmap.mmap(-1, capacity_bytes)
        self._array = np.frombuffer(self._mm, np.uint8)
        self._base = int(self._array.ctypes.data)
        self._chunks: list[int] = []
        self._closed = False
        try:
            for start in range(0, capacity_bytes, register_chunk_bytes):
                runtime.host_register(self._base + start,
                                      min(register_chunk_bytes, capacity_bytes - start))
                self._chunks.append(self._base + start)
        except BaseException:
            self._unregister()
            raise

    @property
    def pinned_bytes(self) -> int:
        return self._alloc.capacity_bytes if self._chunks else 0

    def fits(self, size_bytes: int) -> bool:
        """Whether a range of ``size_bytes`` can ever be had (the pool is at least that big)."""
        return size_bytes <= self._alloc.capacity_bytes

    def take(self, size_bytes: int, wait: bool) -> memoryview | None:
        """A view of ``size_bytes`` staging bytes; None when there is no room now (``wait``:
        wait for room instead) or the range can never fit."""
        if not self.fits(size_bytes):
            return None
        with self._cond:
            while True:
                if self._closed:
                    raise Unavailable("the CUDA engine is closed")
                start = self._alloc.take(size_bytes)
                if start is not None:
                    return self._array[start:start + size_bytes].data
                if not wait:
                    return None
                self._cond.wait()

    def give(self, view: memoryview) -> None:
        """Return a view ``take`` gave."""
        start = int(np.frombuffer(view, np.uint8).ctypes.data) - self._base
        with self._cond:
            self._alloc.give(start)
            self._cond.notify_all()

    def close(self, drain_timeout_s: float) -> None:
        """Wait (at most ``drain_timeout_s``) until every view is back, then unregister and
        unmap; views still out keep the mapping (it is left to the garbage collector)."""
        with self._cond:
            if self._closed:
                return
            drained = self._cond.wait_for(
                lambda: self._alloc.free_bytes == self._alloc.capacity_bytes, drain_timeout_s)
            self._closed = True
            self._cond.notify_all()
        if not drained:
            log.error("CUDA staging: %d bytes still queued for disk at close; left mapped",
                      self._alloc.capacity_bytes - self._alloc.free_bytes)
            return
        self._unregister()
        del self._array
        with contextlib.suppress(BufferError):  # a view not yet collected: the GC unmaps later
            self._mm.close()

    def _unregister(self) -> None:
        for address in reversed(self._chunks):
            try:
                self._runtime.host_unregister(address)
            except Exception:  # the device is gone: nothing to undo there
                log.exception("could not unregister CUDA staging memory")
        self._chunks.clear()
