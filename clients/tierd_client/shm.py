"""Mapping a daemon's shm region into this worker: ``os.open`` + ``mmap`` of ``/dev/shm/NAME``.

Never ``multiprocessing.shared_memory``: its resource tracker would unlink the daemon's segment
when this process exits. The daemon owns and unlinks the file; a mapping here only unmaps.
"""

from __future__ import annotations

import logging
import mmap
import operator
import os

import numpy as np

from tierd.handles import SHM_DIR, HandleKind, RegionHandle
from tierd_client.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError

log = logging.getLogger(__name__)


def _count(value: object, what: str, minimum: int) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = minimum - 1
    if isinstance(value, bool) or number < minimum:
        raise InvalidArgumentError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return number


class MappedShm:
    """A worker's read-write mapping of one shm region; ``close()`` unmaps, never unlinks."""

    def __init__(self, handle: RegionHandle, mm: mmap.mmap, start_bytes: int) -> None:
        self.handle = handle
        self._mm: mmap.mmap | None = mm
        pages = np.frombuffer(mm, dtype=np.uint8, count=handle.size_bytes, offset=start_bytes)
        self._pages: np.ndarray | None = pages.reshape(handle.num_slots, handle.page_bytes)

    def array(self) -> np.ndarray:
        """Writable ``uint8 [num_slots, page_bytes]`` over the region (no copy)."""
        if self._pages is None:
            raise FailedPreconditionError(f"the mapping of region {self.handle.name!r} is closed")
        return self._pages.view()

    def close(self) -> None:
        """Unmap once every exported view is dropped (until then the GC keeps it). Idempotent."""
        self._pages = None
        mm, self._mm = self._mm, None
        if mm is None:
            return
        try:
            mm.close()
        except BufferError:
            log.debug("region %s: views still in use; unmapped when the last is dropped",
                      self.handle.name)


def map_shm(handle: RegionHandle) -> MappedShm:
    """Map the shm region ``handle`` names, read-write.

    ``NotFoundError`` if the file is gone (the daemon closed the region or restarted),
    ``InvalidArgumentError`` for a handle that is not a well-formed shm handle,
    ``FailedPreconditionError`` when this process may not open it.
    """
    if handle.kind is not HandleKind.SHM:
        raise InvalidArgumentError(f"map_shm maps shm handles only, got a {handle.kind.value} "
                                   f"handle for region {handle.name!r}")
    if not handle.name or "/" in handle.name or handle.name in (".", ".."):
        raise InvalidArgumentError(f"an shm handle names a file directly under {SHM_DIR}, got "
                                   f"{handle.name!r}")
    num_slots = _count(handle.num_slots, "handle.num_slots", 1)
    page_bytes = _count(handle.page_bytes, "handle.page_bytes", 1)
    offset_bytes = _count(handle.offset_bytes, "handle.offset_bytes", 0)
    if handle.size_bytes != num_slots * page_bytes:
        raise InvalidArgumentError(f"handle.size_bytes is {handle.size_bytes}, expected num_slots x "
                                   f"page_bytes = {num_slots} x {page_bytes} = {num_slots * page_bytes}")
    path = SHM_DIR / handle.name
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        raise NotFoundError(f"shared-memory region {path} does not exist: the daemon closed it or "
                            f"restarted; register the namespace again for fresh handles") from None
    except PermissionError:
        raise FailedPreconditionError(f"no permission to open {path} read-write: run the worker as "
                                      f"the daemon's user or in its group") from None
    try:
        file_bytes = os.fstat(fd).st_size
        end_bytes = offset_bytes + handle.size_bytes
        if end_bytes > file_bytes:
            raise InvalidArgumentError(f"handle asks for bytes {offset_bytes}..{end_bytes} of {path}, "
                                       f"but the file holds {file_bytes} bytes")
        # mmap offsets must be multiples of the allocation granularity: map from the one below.
        start_bytes = offset_bytes % mmap.ALLOCATIONGRANULARITY
        mm = mmap.mmap(fd, start_bytes + handle.size_bytes, flags=mmap.MAP_SHARED,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset_bytes - start_bytes)
    finally:
        os.close(fd)
    return MappedShm(handle, mm, start_bytes)
