"""The ``hbm`` tier of ``device = "cuda:N"``: regions as raw device allocations, shared by CUDA IPC.

Each region is ONE ``cudaMalloc`` of ``num_slots * page_bytes`` bytes (never a caching pool): a
legacy CUDA IPC handle maps the whole allocation it comes from, so one allocation per region is
what keeps tenant A from reading tenant B. A region is zeroed when it is made (``cudaMalloc`` does
not clear memory: an earlier tenant's pages must not leak) and exported once; workers of its
tenant open the handle (``tierd_client``) and copy into slots at ``device_ptr(slot)``.

Lifetime: regions live until the store closes (``tierd.store.regions``), so freeing "only when no
worker has it open" is a shutdown matter. ``cudaFree`` before an importer closed its mapping is
undefined for that importer, and a worker still mapping a region after the daemon exited keeps the
region's device memory allocated until it closes the mapping; it learns that the daemon restarted
from the session epoch, and must then drop its old mappings.

Every CUDA call goes through the ``CudaRuntime`` (``tierd.tiers.cuda_runtime``); regions are made on
RPC threads and closed on whichever thread closes the store, so each call site binds its thread to
the device first. Budget: ``ArenaBudget``, like the other arenas; ``CudaRegion.close()`` gives the
bytes back.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable

from tierd.errors import InvalidArgument, ResourceExhausted, TierdError, Unavailable
from tierd.handles import HandleKind, RegionHandle
from tierd.page_index import PageIndexWriter
from tierd.tier import Tier
from tierd.tiers.base import Medium, RegionGeometry
from tierd.tiers.budget import ArenaBudget, check_int
from tierd.tiers.cuda_runtime import IPC_HANDLE_BYTES, CudaError, CudaRuntime
from tierd.units import format_size

logger = logging.getLogger(__name__)

# 4 hex chars tell two regions of one namespace apart in logs; the name opens nothing.
_LABEL_TOKEN_BYTES = 2


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class CudaRegion(RegionGeometry):
    """One namespace's pages in device memory: one allocation at ``base_ptr``, owned here.

    Made by ``CudaArena.create_region``; ``close()`` frees the allocation and gives its bytes back
    to the arena's budget.
    """

    def __init__(self, tier: Tier, ns_id: int, name: str, runtime: CudaRuntime, ptr: int,
                 ipc_handle: bytes, num_slots: int, page_bytes: int,
                 on_close: Callable[[CudaRegion], None]) -> None:
        super().__init__(num_slots, page_bytes)
        self._tier = tier
        self._ns_id = ns_id
        self._name = name
        self._runtime = runtime
        self._ptr = ptr
        self._ipc_handle = ipc_handle
        self._on_close = on_close
        self._lock = threading.Lock()
        self._closed = False

    @property
    def medium(self) -> Medium:
        return Medium.DEVICE

    @property
    def page_index(self) -> PageIndexWriter | None:
        """None: hbm pages are read under a lease only."""
        return None

    @property
    def tier(self) -> Tier:
        return self._tier

    @property
    def ns_id(self) -> int:
        return self._ns_id

    @property
    def name(self) -> str:
        """A label for logs and messages; it opens nothing."""
        return self._name

    @property
    def device_index(self) -> int:
        """The N of ``cuda:N`` the allocation lives on."""
        return self._runtime.device_index

    @property
    def closed(self) -> bool:
        return self._closed

    def device_ptr(self, slot: int) -> int:
        """Device address of the first byte of ``slot``; valid until the region is closed."""
        index = check_int(slot, "slot", 0)
        if index >= self._num_slots:
            raise InvalidArgument(f"slot {index} is out of range for hbm region {self._name}: it "
                                  f"has {self._num_slots} slots (0..{self._num_slots - 1})")
        if self._closed:
            raise Unavailable(f"hbm region {self._name} is closed; its slots can no longer be "
                              "read or written")
        return self._ptr + index * self._page_bytes

    def handle(self) -> RegionHandle:
        """What a worker of the tenant needs to map the region: the allocation's IPC handle."""
        return RegionHandle(tier=self._tier, kind=HandleKind.CUDA_IPC, name=self._name,
                            offset_bytes=0, size_bytes=self.size_bytes,
                            page_bytes=self._page_bytes, num_slots=self._num_slots,
                            device=f"cuda:{self.device_index}", ipc_handle=self._ipc_handle)

    def close(self) -> None:
        """Free the allocation and give the bytes back to the arena; idempotent, never raises
        (a failed ``cudaFree`` is logged: the store is shutting down either way)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._runtime.bind_thread()
                self._runtime.free(self._ptr)
            except CudaError as exc:
                logger.error("cudaFree of hbm region %s (%s on cuda:%d) failed: %s", self._name,
                             format_size(self.size_bytes), self.device_index, _one_line(exc))
        self._on_close(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"CudaRegion({self._name!r}, cuda:{self.device_index}, num_slots={self._num_slots}, "
                f"page_bytes={self._page_bytes}, {state})")


class CudaArena:
    """One memory tier's byte budget (``ArenaBudget``) on ``cuda:N``, one allocation per region.

    Thread-safe. ``close()`` frees every region still open; later creates are refused.
    """

    def __init__(self, tier: Tier, capacity_bytes: int, runtime: CudaRuntime) -> None:
        self._tier = tier
        self._budget = ArenaBudget(tier, check_int(capacity_bytes, "capacity_bytes", 0))
        self._runtime = runtime
        self._lock = threading.Lock()
        self._regions: dict[int, CudaRegion] = {}  # by id()

    @property
    def tier(self) -> Tier:
        return self._tier

    @property
    def device_index(self) -> int:
        return self._runtime.device_index

    @property
    def capacity_bytes(self) -> int:
        return self._budget.capacity_bytes

    @property
    def assigned_bytes(self) -> int:
        """Bytes held by open regions (and by regions being created)."""
        return self._budget.assigned_bytes

    @property
    def pinned_bytes(self) -> int:
        """Page-locked host bytes: none (device memory is not host memory)."""
        return 0

    def regions(self) -> list[CudaRegion]:
        """The regions still open, oldest first."""
        with self._lock:
            return list(self._regions.values())

    def create_region(self, ns_id: int, num_slots: int, page_bytes: int) -> CudaRegion:
        """A new zeroed region of ``num_slots`` pages of ``page_bytes`` on the device.

        ``ResourceExhausted`` when the budget or the device's free memory cannot hold it (or the
        allocation fails), ``Unavailable`` once the arena is closed.
        """
        ns_id = check_int(ns_id, "ns_id", 0)
        num_slots = check_int(num_slots, "num_slots", 1)
        page_bytes = check_int(page_bytes, "page_bytes", 1)
        return self._budget.carve(ns_id, num_slots, page_bytes,
                                  lambda: self._make_region(ns_id, num_slots, page_bytes),
                                  self._lock, self._keep)

    def close(self) -> None:
        """Free every open region; idempotent."""
        self._budget.close()
        for region in self.regions():
            region.close()

    def _make_region(self, ns_id: int, num_slots: int, page_bytes: int) -> CudaRegion:
        size_bytes = num_slots * page_bytes
        name = f"{self._tier.label}-ns{ns_id}-{secrets.token_hex(_LABEL_TOKEN_BYTES)}"
        runtime = self._runtime
        runtime.bind_thread()
        self._check_free(ns_id, size_bytes)
        try:
            ptr = runtime.malloc(size_bytes)
        except CudaError as exc:
            raise ResourceExhausted(
                f"cudaMalloc of {format_size(size_bytes)} ({size_bytes} bytes) for {self._tier.label} "
                f"region {name} on cuda:{runtime.device_index} failed: {_one_line(exc)}; lower "
                "--hbm or free GPU memory held by other processes") from exc
        try:
            runtime.memset(ptr, 0, size_bytes)
            ipc_handle = runtime.ipc_mem_handle(ptr)
            if len(ipc_handle) != IPC_HANDLE_BYTES:
                raise CudaError(f"cudaIpcGetMemHandle gave {len(ipc_handle)} bytes, expected "
                                f"{IPC_HANDLE_BYTES}")
        except BaseException as exc:
            self._free_quietly(ptr, name)
            if isinstance(exc, CudaError):
                raise TierdError(
                    f"cannot prepare {self._tier.label} region {name} ({format_size(size_bytes)} "
                    f"on cuda:{runtime.device_index}): {_one_line(exc)}; the allocation was freed; "
                    "check the device with nvidia-smi, or run with --device cpu") from exc
            raise
        logger.info("created %s region %s on cuda:%d: %d slots x %d bytes (%s)", self._tier.label,
                    name, runtime.device_index, num_slots, page_bytes, format_size(size_bytes))
        return CudaRegion(self._tier, ns_id, name, runtime, ptr, ipc_handle, num_slots, page_bytes,
                          self._forget)

    def _check_free(self, ns_id: int, size_bytes: int) -> None:
        """Refuse before ``cudaMalloc`` when the device has fewer free bytes than asked (other
        processes may hold GPU memory the budget does not know about)."""
        free_bytes, total_bytes = self._runtime.mem_info()
        if size_bytes <= free_bytes:
            return
        missing_bytes = size_bytes - free_bytes
        raise ResourceExhausted(
            f"a {self._tier.label} region for namespace {ns_id} asks for {format_size(size_bytes)} "
            f"({size_bytes} bytes) but only {format_size(free_bytes)} ({free_bytes} bytes) of the "
            f"{format_size(total_bytes)} of cuda:{self._runtime.device_index} is free: "
            f"{format_size(missing_bytes)} ({missing_bytes} bytes) missing; lower --hbm or free "
            "GPU memory held by other processes")

    def _free_quietly(self, ptr: int, name: str) -> None:
        try:
            self._runtime.free(ptr)
        except CudaError as exc:
            logger.error("cudaFree while rolling back %s region %s failed: %s", self._tier.label,
                         name, _one_line(exc))

    def _keep(self, region: CudaRegion) -> None:
        """List a new region (under ``self._lock``, held by ``ArenaBudget.carve``)."""
        self._regions[id(region)] = region

    def _forget(self, region: CudaRegion) -> None:
        """Called by ``CudaRegion.close``: its bytes go back to the budget."""
        with self._lock:
            known = self._regions.pop(id(region), None) is not None
        if known:  # a region never listed is given back by create_region
            self._budget.release(region.size_bytes)
