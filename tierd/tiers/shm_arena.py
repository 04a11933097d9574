"""Shared-memory arenas: regions as unnamed memory (memfd) that only their tenant's workers map.

Without CUDA both ``hbm`` and ``dram`` are ``ShmArena``s. Each region is one ``memfd_create``
file: nothing in ``/dev/shm`` or anywhere else a process could list or open by name. It is
sized, reserved (``posix_fallocate``) and sealed against shrinking or growing (a worker holding
the descriptor can never ``ftruncate`` it under the daemon, which would turn the daemon's next
copy into SIGBUS), then mapped here. A worker gets the descriptor only by presenting the
region's ``grant`` (a random secret in the handle, sent only to the namespace's tenant) on the
daemon's region socket (``tierd.server.region_socket``), which asks ``ShmArena.shared_fd``.
Regions hold bytes: the transfer engine copies through ``slot_view``.

Budget: ``ShmArena.create_region`` takes ``num_slots * page_bytes`` from the arena's budget;
``ShmRegion.close()`` gives it back (it tells its arena), so callers close regions, never
``release`` them through the arena. ``ShmArena.close()`` closes every region still open. The
memory itself is freed by the kernel once the daemon and every worker have unmapped it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from tierd.errors import InvalidArgument, ResourceExhausted, Unavailable
from tierd.handles import HandleKind, RegionHandle
from tierd.page_index import PageIndexWriter, index_bytes_for
from tierd.region_wire import GRANT_BYTES
from tierd.tier import MEMORY_TIERS, Tier
from tierd.tiers.base import Medium, RegionGeometry
from tierd.tiers.budget import ArenaBudget, check_int
from tierd.tiers.host_memory import mem_available_bytes
from tierd.units import format_size

logger = logging.getLogger(__name__)

# A worker may write pages but never resize the region (nor unseal it).
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
# Linux 5.1+; Python 3.11's fcntl does not name it. Once set, no new writable mapping (nor
# write()) of the file can be made: the daemon's own mapping, made before, stays writable.
_F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)
# A worker may only read a region's page index.
_INDEX_SEALS = _SEALS | _F_SEAL_FUTURE_WRITE
# 4 hex chars tell two regions of one namespace and tier apart in logs; the name opens nothing.
_LABEL_TOKEN_BYTES = 2
# Prefault touches one byte per OS page: that is what makes the kernel back and map the page.
_OS_PAGE_BYTES = mmap.PAGESIZE
# posix_fallocate errors that only mean "this filesystem cannot preallocate": ftruncate suffices.
_NO_FALLOCATE = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def grant_digest(grant: bytes) -> bytes:
    """What regions are looked up by: a lookup's timing then says nothing about the grant."""
    return hashlib.sha256(grant).digest()


class ShmRegion(RegionGeometry):
    """One namespace's pages in one tier: a memfd created, mapped and owned here.

    Made by ``ShmArena.create_region``. ``close()`` unmaps, closes the descriptor and returns the
    region's bytes to its arena's budget. Views handed out (``slot_view``, ``array``) keep the
    mapping alive, so a copy racing ``close`` never touches unmapped memory.
    """

    def __init__(self, tier: Tier, ns_id: int, name: str, fd: int, mm: mmap.mmap, num_slots: int,
                 page_bytes: int, on_close: Callable[[ShmRegion], None],
                 index: tuple[int, mmap.mmap] | None = None) -> None:
        super().__init__(num_slots, page_bytes)
        self._mm: mmap.mmap | None = mm
        # The page index: its own memfd, read-only to workers (tierd.page_index).
        self._index_fd = index[0] if index is not None else -1
        self._index_mm: mmap.mmap | None = index[1] if index is not None else None
        self._index = (PageIndexWriter(memoryview(self._index_mm), num_slots, page_bytes, ns_id)
                       if self._index_mm is not None else None)
        pages = np.frombuffer(mm, dtype=np.uint8, count=num_slots * page_bytes)
        self._pages: np.ndarray | None = pages.reshape(num_slots, page_bytes)
        # The mapping's first byte: numpy already exports the buffer, so reading its address
        # adds no export that would keep close() from unmapping.
        self._base_address: int = pages.__array_interface__["data"][0]
        # Set by attach_unpin (tierd.tiers.pinned): run once by close(), before the unmap.
        self._unpin: Callable[[], None] | None = None
        self._label = f"{tier.label} region {name}"
        # Held while the descriptor is being sent, so close() never closes (and the kernel never
        # reuses) a descriptor number in the middle of a send.
        self._fd_lock = threading.Lock()
        self._fd = fd
        self._close_lock = threading.Lock()
        self._closed = False
        self._tier = tier
        self._ns_id = ns_id
        self._name = name
        self._grant = secrets.token_bytes(GRANT_BYTES)
        self._on_close = on_close

    @property
    def medium(self) -> Medium:
        return Medium.HOST

    @property
    def closed(self) -> bool:
        return self._closed

    def slot_view(self, slot: int) -> memoryview:
        """Writable zero-copy view of ``slot`` (``page_bytes`` bytes); drop it before close."""
        pages = self._live_pages()
        view: memoryview = pages[self._check_slot(slot)].data
        return view

    def array(self) -> np.ndarray:
        """Writable zero-copy uint8 array of shape ``[num_slots, page_bytes]`` over the region."""
        return self._live_pages().view()

    def slot_address(self, slot: int) -> int:
        """Host address of the first byte of ``slot`` (for DMA engines); valid while open."""
        self._live_pages()
        return self._base_address + self._check_slot(slot) * self._page_bytes

    @property
    def pinned(self) -> bool:
        """True while the mapping is page-locked for a GPU (``tierd.tiers.pinned``)."""
        with self._close_lock:
            return self._unpin is not None

    def attach_unpin(self, unpin: Callable[[], None]) -> None:
        """Mark the region page-locked: ``close()`` calls ``unpin`` once, before the unmap."""
        with self._close_lock:
            if self._closed:
                raise Unavailable(f"{self._label} is closed; it cannot be page-locked")
            self._unpin = unpin

    def _live_pages(self) -> np.ndarray:
        pages = self._pages
        if pages is None:
            raise Unavailable(f"{self._label} is closed; its slots can no longer be read or written")
        return pages

    def _check_slot(self, slot: object) -> int:
        index = check_int(slot, "slot", 0)
        if index >= self._num_slots:
            raise InvalidArgument(f"slot {index} is out of range for {self._label}: it has "
                                  f"{self._num_slots} slots (0..{self._num_slots - 1})")
        return index

    def _unmap(self) -> bool:
        """Drop our views and unmap; ``False`` if views handed out still pin the mapping (then the
        garbage collector unmaps it after the last one: nobody ever sees unmapped memory)."""
        self._pages = None
        mm, self._mm = self._mm, None
        if mm is None:
            return True
        try:
            mm.close()
        except BufferError:
            return False
        return True

    @property
    def tier(self) -> Tier:
        return self._tier

    @property
    def ns_id(self) -> int:
        return self._ns_id

    @property
    def name(self) -> str:
        """A label for logs and messages (also the memfd's name in ``/proc/PID/maps``)."""
        return self._name

    @property
    def grant(self) -> bytes:
        """The secret that opens this region on the region socket; give it only to its tenant."""
        return self._grant

    @property
    def page_index(self) -> PageIndexWriter | None:
        """The writer of this region's page index (the manager's page directory), if it has one."""
        return self._index

    @contextmanager
    def open_fd(self, index: bool = False) -> Iterator[int | None]:
        """The region's descriptor (``index``: its page index's), valid inside the ``with``
        (``None`` once closed, or without an index)."""
        with self._fd_lock:
            if self._closed or (index and self._index is None):
                yield None
            else:
                yield self._index_fd if index else self._fd

    def handle(self) -> RegionHandle:
        """What a local client needs to map this region (``tierd_client.shm.map_shm``); the
        server adds where its region socket is."""
        return RegionHandle(tier=self._tier, kind=HandleKind.MEMFD, name=self._name,
                            offset_bytes=0, size_bytes=self.size_bytes,
                            page_bytes=self._page_bytes, num_slots=self._num_slots,
                            device="cpu", grant=self._grant,
                            index_bytes=index_bytes_for(self._num_slots) if self._index is not None else 0)

    def prefault(self) -> float:
        """Touch every OS page so later writes run at full speed; returns the seconds it took."""
        started = time.monotonic()
        flat = self._live_pages().reshape(-1)
        # Fresh shared memory is zero, so writing zero changes no content, only backs the page.
        flat[::_OS_PAGE_BYTES] = 0
        return time.monotonic() - started

    def close(self) -> None:
        """Unmap, close the descriptor, give the bytes back to the arena. Idempotent; never raises.

        Views still exported (``slot_view``, ``array``) stay valid; the memory is freed when the
        last of them is dropped. Workers that mapped the region keep their mapping until they
        unmap it, but the grant no longer opens it.
        """
        with self._close_lock:
            if self._closed:
                return
            if self._index is not None:
                self._index.close()  # first: readers must stop trusting it before anything else
            unpin, self._unpin = self._unpin, None
            if unpin is not None:
                try:
                    unpin()  # page-locked memory must be unregistered while it is still mapped
                except Exception:
                    logger.exception("unpinning %s failed; unmapping it anyway", self._label)
            with self._fd_lock:
                self._closed = True
                os.close(self._fd)
                if self._index_fd >= 0:
                    os.close(self._index_fd)
        if self._index_mm is not None:
            with contextlib.suppress(BufferError):  # a reader of the index here: the GC unmaps it
                self._index_mm.close()
        if not self._unmap():
            logger.warning("%s closed while views of it are still in use; its %s are freed when "
                           "the last view is dropped", self._label, format_size(self.size_bytes))
        self._on_close(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"ShmRegion({self._name!r}, num_slots={self._num_slots}, "
                f"page_bytes={self._page_bytes}, {state})")


def _reserve_segment(fd: int, size_bytes: int, name: str) -> None:
    """Size the memfd and make the kernel commit its pages now.

    Without the reservation a host out of memory would surface as SIGBUS on some later write;
    ``posix_fallocate`` turns it into an error here. It allocates but does not yet map pages,
    which is what prefaulting is for.
    """
    os.ftruncate(fd, size_bytes)
    try:
        os.posix_fallocate(fd, 0, size_bytes)
    except OSError as exc:
        if exc.errno in _NO_FALLOCATE:
            return
        if exc.errno in (errno.ENOSPC, errno.ENOMEM):
            free = mem_available_bytes()
            have = "an unknown amount" if free is None else f"{format_size(free)} ({free} bytes)"
            raise ResourceExhausted(f"cannot reserve {format_size(size_bytes)} ({size_bytes} "
                                    f"bytes) of host memory for region {name}: {have} is "
                                    f"available; lower the tier's capacity") from None
        raise


def _create_segment(name: str, size_bytes: int, index: bool = False) -> tuple[int, mmap.mmap]:
    """A sealed memfd of ``size_bytes`` and its shared read-write mapping; ``index``: sealed
    read-only for everyone else once mapped here."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        _reserve_segment(fd, size_bytes, name)
        if not index:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        mm = mmap.mmap(fd, size_bytes, flags=mmap.MAP_SHARED,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE)
        if index:
            try:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _INDEX_SEALS)
            except BaseException:
                mm.close()
                raise
    except BaseException:
        os.close(fd)
        raise
    return fd, mm


class ShmArena:
    """One memory tier's byte budget, carved into memfd regions (one per namespace).

    ``capacity_bytes`` is a budget, not an allocation (``ArenaBudget``). Thread-safe. Regions are
    labelled ``{name_prefix}-{tier}-ns{ns_id}-{token}``; the label opens nothing.
    """

    def __init__(self, tier: Tier, capacity_bytes: int, name_prefix: str, prefault: bool) -> None:
        if tier not in MEMORY_TIERS:
            choices = ", ".join(t.label for t in MEMORY_TIERS)
            raise InvalidArgument(f"a shm arena holds a memory tier ({choices}), got {tier!r}")
        if not name_prefix or not name_prefix.replace("-", "").replace("_", "").isalnum():
            raise InvalidArgument(f"name_prefix may hold letters, digits, '-' and '_' only, got "
                                  f"{name_prefix!r}")
        self._tier = tier
        self._budget = ArenaBudget(tier, check_int(capacity_bytes, "capacity_bytes", 0))
        self._name_prefix = name_prefix
        self._prefault = bool(prefault)
        self._lock = threading.Lock()
        self._regions: dict[bytes, ShmRegion] = {}  # by grant digest

    @property
    def tier(self) -> Tier:
        return self._tier

    @property
    def capacity_bytes(self) -> int:
        return self._budget.capacity_bytes

    @property
    def assigned_bytes(self) -> int:
        """Bytes held by open regions (and by regions being created)."""
        return self._budget.assigned_bytes

    @property
    def unassigned_bytes(self) -> int:
        """Bytes of the budget not yet given to a region."""
        return self._budget.unassigned_bytes

    @property
    def pinned_bytes(self) -> int:
        """Bytes page-locked for a GPU now: 0 here (``tierd.tiers.pinned.PinnedShmArena``)."""
        return 0

    def regions(self) -> list[ShmRegion]:
        """The regions still open, oldest first."""
        with self._lock:
            return list(self._regions.values())

    @contextmanager
    def shared_fd(self, grant: bytes, index: bool = False) -> Iterator[int | None]:
        """The descriptor of the open region whose grant is ``grant`` (``index``: of its page
        index), valid inside the ``with``; ``None`` when no open region has it."""
        with self._lock:
            region = self._regions.get(grant_digest(grant))
        if region is None:
            yield None
            return
        with region.open_fd(index) as fd:
            yield fd

    def create_region(self, ns_id: int, num_slots: int, page_bytes: int) -> ShmRegion:
        """A new region of ``num_slots`` pages of ``page_bytes``, prefaulted if configured.

        Raises ``ResourceExhausted`` when the unassigned budget (or host memory) cannot hold
        it, ``Unavailable`` once the arena is closed.
        """
        ns_id = check_int(ns_id, "ns_id", 0)
        num_slots = check_int(num_slots, "num_slots", 1)
        page_bytes = check_int(page_bytes, "page_bytes", 1)
        return self._budget.carve(ns_id, num_slots, page_bytes,
                                  lambda: self._make_region(ns_id, num_slots, page_bytes),
                                  self._lock, self._keep)

    def close(self) -> None:
        """Close every open region; idempotent. Later creates are refused."""
        self._budget.close()
        with self._lock:
            regions = list(self._regions.values())
        for region in regions:
            region.close()

    def __enter__(self) -> ShmArena:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _make_region(self, ns_id: int, num_slots: int, page_bytes: int) -> ShmRegion:
        size_bytes = num_slots * page_bytes
        name = (f"{self._name_prefix}-{self._tier.label}-ns{ns_id}-"
                f"{secrets.token_hex(_LABEL_TOKEN_BYTES)}")
        fd, mm = _create_segment(name, size_bytes)
        try:
            index = _create_segment(f"{name}-index", index_bytes_for(num_slots), index=True)
        except BaseException:
            mm.close()
            os.close(fd)
            raise
        region = ShmRegion(self._tier, ns_id, name, fd, mm, num_slots, page_bytes, self._forget,
                           index)
        try:
            prefault_s = region.prefault() if self._prefault else 0.0
            self._prepare_region(region)
        except BaseException:
            region.close()
            raise
        logger.info("created %s region %s: %d slots x %d bytes (%s), prefault %.2f s",
                    self._tier.label, name, num_slots, page_bytes, format_size(size_bytes),
                    prefault_s)
        return region

    def _prepare_region(self, region: ShmRegion) -> None:
        """What a subclass does to each new region before it is handed out (page-locking);
        raising closes the region."""

    def _keep(self, region: ShmRegion) -> None:
        """List a new region (under ``self._lock``, held by ``ArenaBudget.carve``)."""
        self._regions[grant_digest(region.grant)] = region

    def _forget(self, region: ShmRegion) -> None:
        """Called by ``ShmRegion.close``: its bytes go back to the budget."""
        with self._lock:
            known = self._regions.pop(grant_digest(region.grant), None) is not None
        if known:  # a region never listed is given back by create_region
            self._budget.release(region.size_bytes)
