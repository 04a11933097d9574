"""Page-locked ``dram`` for ``device = "cuda:N"`` with ``pin_dram``: shm regions registered with CUDA.

``PinnedShmArena`` is a ``ShmArena`` (so the region socket still finds regions by grant) whose
every new region's mapping is registered with ``cudaHostRegister`` in this process, which lets
dram <-> hbm copies run as DMA at full speed instead of through pageable staging. Registration is
per process: workers that DMA from dram themselves register their own mappings.

The mapping is registered in chunks of at most ``register_chunk_bytes`` (r580+ drivers refuse one
call of 512 GiB or more; a size of 0 is an error), page aligned, covering the region exactly. A
region is unregistered, every chunk, before it is unmapped (``ShmRegion.attach_unpin``). A
registration that fails midway unregisters what it had registered, closes the region and raises
``ResourceExhausted``.
"""

from __future__ import annotations

import logging
import mmap
import threading

from tierd.errors import InvalidArgument, ResourceExhausted
from tierd.tier import Tier
from tierd.tiers.budget import check_int
from tierd.tiers.cuda_runtime import CudaError, CudaRuntime
from tierd.tiers.shm_arena import ShmArena, ShmRegion
from tierd.units import format_size

logger = logging.getLogger(__name__)

OS_PAGE_BYTES = mmap.PAGESIZE


def chunk_plan(size_bytes: int, chunk_bytes: int, os_page_bytes: int = OS_PAGE_BYTES) -> list[tuple[int, int]]:
    """``(offset_bytes, size_bytes)`` of each registration of a ``size_bytes`` mapping.

    Chunks are ``chunk_bytes`` rounded down to whole OS pages (at least one page), so every chunk
    starts page aligned; they cover ``[0, size_bytes)`` exactly, in order, and none is empty.
    """
    if size_bytes < 1 or chunk_bytes < 1 or os_page_bytes < 1:
        raise InvalidArgument(f"a registration plan needs size_bytes, chunk_bytes and os_page_bytes "
                              f">= 1, got {size_bytes}, {chunk_bytes}, {os_page_bytes}")
    step_bytes = max(chunk_bytes // os_page_bytes, 1) * os_page_bytes
    return [(offset, min(step_bytes, size_bytes - offset))
            for offset in range(0, size_bytes, step_bytes)]


class PinnedShmArena(ShmArena):
    """A ``ShmArena`` whose regions are page-locked for ``runtime``'s device (module docstring).

    ``pinned_bytes`` is how many bytes are registered now. Thread-safe: regions are made on RPC
    threads and closed on the store's, so every CUDA call binds its thread first.
    """

    def __init__(self, tier: Tier, capacity_bytes: int, name_prefix: str, prefault: bool,
                 runtime: CudaRuntime, register_chunk_bytes: int) -> None:
        register_chunk_bytes = check_int(register_chunk_bytes, "register_chunk_bytes", 1)
        super().__init__(tier, capacity_bytes, name_prefix, prefault)
        self._runtime = runtime
        self._register_chunk_bytes = register_chunk_bytes
        self._pinned_lock = threading.Lock()
        self._pinned_bytes = 0

    @property
    def pinned_bytes(self) -> int:
        """Bytes of this arena's regions registered with CUDA now."""
        with self._pinned_lock:
            return self._pinned_bytes

    @property
    def device_index(self) -> int:
        return self._runtime.device_index

    def _prepare_region(self, region: ShmRegion) -> None:
        """Register the region's mapping, chunk by chunk; on failure unregister what was."""
        base = region.slot_address(0)
        plan = chunk_plan(region.size_bytes, self._register_chunk_bytes)
        self._runtime.bind_thread()
        done: list[tuple[int, int]] = []
        for index, (offset, size_bytes) in enumerate(plan):
            try:
                self._runtime.host_register(base + offset, size_bytes)
            except CudaError as exc:
                self._unregister(region, done)
                raise ResourceExhausted(self._failure(region, index, len(plan), size_bytes, exc)) from exc
            except BaseException:
                self._unregister(region, done)
                raise
            done.append((base + offset, size_bytes))
            self._count(size_bytes)
        try:
            region.attach_unpin(lambda: self._unregister(region, done))
        except BaseException:
            self._unregister(region, done)
            raise
        logger.info("page-locked %s region %s for cuda:%d: %s in %d chunk(s)", self.tier.label,
                    region.name, self._runtime.device_index, format_size(region.size_bytes), len(plan))

    def _failure(self, region: ShmRegion, index: int, count: int, size_bytes: int,
                 exc: CudaError) -> str:
        asked = region.size_bytes
        problem = " ".join(str(exc).split())
        return (f"cannot page-lock {self.tier.label} region {region.name} for "
                f"cuda:{self._runtime.device_index}: cudaHostRegister of chunk {index + 1}/{count} "
                f"({format_size(size_bytes)}) failed with {format_size(asked)} ({asked} bytes) "
                f"asked: {problem}; raise RLIMIT_MEMLOCK (LimitMEMLOCK=infinity, ulimit -l "
                f"unlimited), lower --dram or set pin_dram = false")

    def _unregister(self, region: ShmRegion, ranges: list[tuple[int, int]]) -> None:
        """Unregister ``ranges`` (newest first) while the mapping is still there; never raises."""
        try:
            self._runtime.bind_thread()
        except CudaError as exc:  # each unregister below then fails and says so
            logger.error("cannot bind to cuda:%d to unregister %s region %s: %s",
                         self._runtime.device_index, self.tier.label, region.name, exc)
        while ranges:
            address, size_bytes = ranges.pop()
            try:
                self._runtime.host_unregister(address)
            except CudaError as exc:
                logger.error("cudaHostUnregister of %s of %s region %s failed: %s",
                             format_size(size_bytes), self.tier.label, region.name,
                             " ".join(str(exc).split()))
            self._count(-size_bytes)

    def _count(self, delta_bytes: int) -> None:
        with self._pinned_lock:
            self._pinned_bytes += delta_bytes
