"""Mapping a daemon's host region into this worker: its memfd, fetched from the region socket.

The worker presents the region's grant (from Register) on the socket the handle names and gets
the region's descriptor back (SCM_RIGHTS), maps it read-write and closes the descriptor. Nothing
is opened by name. The daemon owns the memory; a mapping here only unmaps.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import operator
import os
import socket

import numpy as np

from tierd.errors import InvalidArgument
from tierd.handles import HandleKind, RegionHandle
from tierd.page_index import PageIndexReader
from tierd.region_wire import MAX_REPLY_BYTES, RegionOp, RegionReply, RegionRequest, RegionStatus
from tierd_client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)

log = logging.getLogger(__name__)

# One exchange with the daemon's region socket may take this long (it answers in microseconds).
EXCHANGE_TIMEOUT_S = 10.0


def _count(value: object, what: str, minimum: int) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = minimum - 1
    if isinstance(value, bool) or number < minimum:
        raise InvalidArgumentError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return number


def _socket_identity(path: str) -> tuple[int, int, int]:
    """The region socket file's (device, inode, ctime in ns), zeros when gone: a restarted daemon
    binds a new file: its inode number may be reused, but not with the same ctime, as a daemon
    takes far longer to start than a file system's timestamp tick."""
    try:
        info = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (info.st_dev, info.st_ino, info.st_ctime_ns)


class MappedShm:
    """A worker's read-write mapping of one host region; ``close()`` unmaps.

    ``socket_identity``: the region socket file's identity when the region was fetched. A daemon
    keeps its regions for its whole life, so another socket file there (or none) means the daemon
    that served this region is gone: ``is_current`` says so with one ``stat``, no round trip.
    """

    def __init__(self, handle: RegionHandle, mm: mmap.mmap, start_bytes: int,
                 socket_identity: tuple[int, int, int] = (0, 0, 0)) -> None:
        self.handle = handle
        self._socket_identity = socket_identity
        self._mm: mmap.mmap | None = mm
        pages = np.frombuffer(mm, dtype=np.uint8, count=handle.size_bytes, offset=start_bytes)
        self._pages: np.ndarray | None = pages.reshape(handle.num_slots, handle.page_bytes)

    def array(self) -> np.ndarray:
        """Writable ``uint8 [num_slots, page_bytes]`` over the region (no copy)."""
        if self._pages is None:
            raise FailedPreconditionError(f"the mapping of region {self.handle.name!r} is closed")
        return self._pages.view()

    def is_current(self) -> bool:
        """Whether the daemon that served this region still serves its region socket."""
        return (self._pages is not None
                and _socket_identity(self.handle.socket_path) == self._socket_identity)

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


def _check_handle(handle: RegionHandle) -> None:
    if handle.kind is not HandleKind.MEMFD:
        raise InvalidArgumentError(f"map_shm maps host (memfd) handles only, got a "
                                   f"{handle.kind.value} handle for region {handle.name!r}")
    num_slots = _count(handle.num_slots, "handle.num_slots", 1)
    page_bytes = _count(handle.page_bytes, "handle.page_bytes", 1)
    _count(handle.offset_bytes, "handle.offset_bytes", 0)
    if handle.size_bytes != num_slots * page_bytes:
        raise InvalidArgumentError(f"handle.size_bytes is {handle.size_bytes}, expected num_slots x "
                                   f"page_bytes = {num_slots} x {page_bytes} = {num_slots * page_bytes}")
    if not handle.socket_path:
        raise FailedPreconditionError(
            f"region {handle.name!r} names no region socket: the daemon serves none (it listens "
            f"on TCP only, or server.region_socket is off); zero-copy needs a daemon on this node "
            f"with a unix socket")


def _exchange(handle: RegionHandle, op: RegionOp) -> tuple[RegionReply, int | None]:
    """One request on the region socket: the reply and the descriptor it carried, if any."""
    try:
        request = RegionRequest(op, handle.grant).encode()
    except InvalidArgument as exc:
        raise InvalidArgumentError(f"region {handle.name!r}: {exc}") from None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(EXCHANGE_TIMEOUT_S)
        try:
            conn.connect(handle.socket_path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotFoundError(f"the daemon's region socket {handle.socket_path} is not "
                                f"answering: the daemon stopped or restarted; register the "
                                f"namespace again for fresh handles") from None
        except PermissionError:
            raise FailedPreconditionError(
                f"no permission to connect to the region socket {handle.socket_path}: run the "
                f"worker as the daemon's user or in its group") from None
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.sendall(request)  # a busy daemon answers and hangs up before reading it
            data, fds, _flags, _addr = socket.recv_fds(conn, MAX_REPLY_BYTES, 1)
        except OSError as exc:
            raise UnavailableError(f"the region socket {handle.socket_path} failed: {exc}") from None
    try:
        reply = RegionReply.decode(data)
    except InvalidArgument as exc:
        for fd in fds:
            os.close(fd)
        raise UnavailableError(f"the region socket {handle.socket_path} sent a bad reply: {exc}") from None
    return reply, (fds[0] if fds else None)


def _fetch_fd(handle: RegionHandle, op: RegionOp = RegionOp.OPEN) -> int:
    reply, fd = _exchange(handle, op)
    if reply.status is RegionStatus.OK and fd is not None:
        return fd
    if fd is not None:
        os.close(fd)
    if reply.status is RegionStatus.NOT_FOUND:
        raise NotFoundError(f"region {handle.name!r}: {reply.message}")
    if reply.status is RegionStatus.INVALID:
        raise InvalidArgumentError(f"region {handle.name!r}: {reply.message}")
    raise UnavailableError(f"region {handle.name!r}: {reply.message or 'no descriptor came back'}")


def region_alive(handle: RegionHandle) -> bool:
    """Whether the daemon still serves the region ``handle`` names (its grant still opens it)."""
    try:
        reply, fd = _exchange(handle, RegionOp.CHECK)
    except (NotFoundError, UnavailableError):
        return False
    if fd is not None:
        os.close(fd)
    return reply.status is RegionStatus.OK


def map_shm(handle: RegionHandle) -> MappedShm:
    """Map the host region ``handle`` names, read-write.

    ``NotFoundError`` if the daemon no longer serves it (it closed the region or restarted),
    ``InvalidArgumentError`` for a handle that is not a well-formed memfd handle,
    ``FailedPreconditionError`` when this process may not reach the region socket.
    """
    _check_handle(handle)
    socket_identity = _socket_identity(handle.socket_path)
    fd = _fetch_fd(handle)
    try:
        file_bytes = os.fstat(fd).st_size
        end_bytes = handle.offset_bytes + handle.size_bytes
        if end_bytes > file_bytes:
            raise InvalidArgumentError(f"handle asks for bytes {handle.offset_bytes}..{end_bytes} "
                                       f"of region {handle.name!r}, but it holds {file_bytes} bytes")
        # mmap offsets must be multiples of the allocation granularity: map from the one below.
        start_bytes = handle.offset_bytes % mmap.ALLOCATIONGRANULARITY
        mm = mmap.mmap(fd, start_bytes + handle.size_bytes, flags=mmap.MAP_SHARED,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE,
                       offset=handle.offset_bytes - start_bytes)
    finally:
        os.close(fd)
    return MappedShm(handle, mm, start_bytes, socket_identity)


class MappedIndex:
    """A worker's read-only mapping of one region's page index; ``close()`` unmaps."""

    def __init__(self, handle: RegionHandle, mm: mmap.mmap) -> None:
        self.handle = handle
        self._mm: mmap.mmap | None = mm
        self.reader: PageIndexReader | None = PageIndexReader(memoryview(mm))

    def close(self) -> None:
        """Drop the reader and unmap. Idempotent."""
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.release()
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                log.debug("page index of %s still in use; unmapped when dropped", self.handle.name)


def map_index(handle: RegionHandle) -> MappedIndex:
    """Map the page index of the host region ``handle`` names, read-only (op 3 on the region
    socket). ``FailedPreconditionError`` when the daemon publishes none for it (``index_bytes``
    0), else the errors of ``map_shm``; ``InvalidArgumentError`` for an index that does not
    match the handle."""
    _check_handle(handle)
    if handle.index_bytes <= 0:
        raise FailedPreconditionError(f"region {handle.name!r} has no page index")
    fd = _fetch_fd(handle, RegionOp.OPEN_INDEX)
    try:
        file_bytes = os.fstat(fd).st_size
        if file_bytes != handle.index_bytes:
            raise InvalidArgumentError(f"the page index of region {handle.name!r} is {file_bytes} "
                                       f"bytes, the handle says {handle.index_bytes}")
        mm = mmap.mmap(fd, file_bytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        mapped = MappedIndex(handle, mm)
    except ValueError as exc:
        mm.close()
        raise InvalidArgumentError(f"region {handle.name!r}: {exc}") from None
    reader = mapped.reader
    if reader is None or reader.num_slots != handle.num_slots or reader.page_bytes != handle.page_bytes:
        mapped.close()
        raise InvalidArgumentError(f"the page index of region {handle.name!r} does not describe "
                                   f"its {handle.num_slots} slots of {handle.page_bytes} bytes")
    return mapped
