"""The measured paths of ``benchmarks/local.py`` as one client process runs them: one page per call.

A path owns its keys, the pages it puts (random bytes, stamped per run so a run that stored
nothing cannot pass the check on the bytes of the run before) and a preallocated, touched output
buffer. ``call(op)`` is the timed body; ``prepare`` and ``check`` run outside the timed loop.

Every get delivers its page into that output buffer, and the check compares the buffer. A get
that returns ``bytes`` (Redis, tierd's ``get``) copies them there inside the timed loop, as a
worker must before it can use a page: keeping every returned object for the check instead made
Redis GET 2-6x slower here (each kept 2 MiB object is fresh memory, faulted in page by page),
which would flatter every ratio against it.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from tierd.spec import PageSpec
from tierd.tier import Tier
from tierd_client import ClientOptions, NamespaceHandle, TierClient

CHECK_BATCH_PAGES = 32  # a byte-path read-back moves this many pages per call (bounded memory)
_DATA: dict[tuple[int, int, int], np.ndarray] = {}  # (page_bytes, pages, worker): the pages


def spec_for(page_bytes: int) -> PageSpec:
    """A spec whose pages are ``page_bytes``: 8 kv heads x 128 dims in bf16, layers to fit."""
    per_layer_token = 2 * 8 * 128 * 2
    page_tokens = 16
    return PageSpec("bench-local@r1", "bfloat16", page_bytes // (per_layer_token * page_tokens), 8, 128,
                    page_tokens)


def _pages(page_bytes: int, num_pages: int, worker: int) -> np.ndarray:
    """Random pages, generated once per worker and size (1 GiB takes a second) and reused by
    every path; each run stamps its own first 8 bytes of each page."""
    key = (page_bytes, num_pages, worker)
    if key not in _DATA:
        _DATA.clear()
        rng = np.random.default_rng([worker, page_bytes])
        _DATA[key] = np.frombuffer(bytearray(rng.bytes(num_pages * page_bytes)),
                                   np.uint8).reshape(num_pages, page_bytes)
    return _DATA[key]


def first_mismatch(expected: np.ndarray, got: list[Any] | np.ndarray) -> str | None:
    """None when ``got[i]`` equals ``expected[i]`` byte for byte for every page, else which not."""
    for i, page in enumerate(got):
        if page is None:
            return f"page {i} of {len(expected)}: missing"
        if not np.array_equal(np.frombuffer(page, np.uint8), expected[i]):
            return f"page {i} of {len(expected)}: bytes differ"
    return None


def deliver(out: np.ndarray, page: Any) -> None:
    """Copy a page a get returned into the caller's buffer (a miss leaves it zero: the check fails)."""
    if page is not None:
        out[:] = np.frombuffer(page, np.uint8)


class PagePath:
    """What every path shares: pages, keys, the output buffer, the count of pages stored / read."""

    name = ""
    ops: tuple[str, ...] = ("put", "get")

    def __init__(self, page_bytes: int, num_pages: int, worker: int, path_index: int) -> None:
        self.page_bytes, self.num_pages, self.worker = page_bytes, num_pages, worker
        self.pages = _pages(page_bytes, num_pages, worker)
        self.out = np.ones((num_pages, page_bytes), np.uint8)  # touched, like a worker's buffers
        self.counted = 0  # pages a call reported stored / read: checked after the loop
        self.token_base = (worker * 8 + path_index) << 24  # disjoint keys per worker and path
        self.keys = [hashlib.blake2b(f"{self.name}/{worker}/{i}".encode(), digest_size=16).digest()
                     for i in range(num_pages)]

    def prepare(self, op: str, rep: int) -> None:
        """Before each timed run: puts start from absent keys, gets from a cleared output."""
        self.counted = 0
        if op == "put":
            stamp = self.pages[:, :8].view(np.uint64)
            stamp[:, 0] = (np.uint64(self.worker) << np.uint64(48)) | (np.uint64(rep) << np.uint64(32)) \
                | np.arange(self.num_pages, dtype=np.uint64)
            self.drop()
        else:
            self.out.fill(0)

    def call(self, op: str) -> Callable[[int], None]:
        fn: Callable[[int], None] = getattr(self, f"{op}_one")
        return fn

    def check(self, op: str) -> str | None:
        if op == "put":
            return self.check_stored()
        return first_mismatch(self.pages, self.out)

    def expect_counted(self, what: str) -> str | None:
        if self.counted != self.num_pages:
            return f"{self.counted} of {self.num_pages} pages {what}"
        return None

    def check_stored(self) -> str | None:
        raise NotImplementedError

    def drop(self) -> None:
        """Remove this path's pages from its server (outside the timed loop)."""

    def close(self) -> None:
        self.drop()


class CeilingPath(PagePath):
    """The shared-memory copy ceiling: a page copied out of (get) / into (put) a mapped memfd."""

    name = "ceiling"

    def __init__(self, page_bytes: int, num_pages: int, worker: int, path_index: int) -> None:
        super().__init__(page_bytes, num_pages, worker, path_index)
        fd = os.memfd_create("tierd-bench-ceiling")
        try:
            os.ftruncate(fd, num_pages * page_bytes)
            self._map = mmap.mmap(fd, num_pages * page_bytes)
        finally:
            os.close(fd)
        self.shm = np.frombuffer(self._map, np.uint8).reshape(num_pages, page_bytes)
        self.shm.fill(1)  # prefaulted, as the daemon prefaults its arenas

    def put_one(self, i: int) -> None:
        np.copyto(self.shm[i], self.pages[i])

    def get_one(self, i: int) -> None:
        np.copyto(self.out[i], self.shm[i])

    def drop(self) -> None:
        self.shm.fill(1)

    def check_stored(self) -> str | None:
        return first_mismatch(self.pages, self.shm)

    def close(self) -> None:
        del self.shm
        self._map.close()


class RedisPath(PagePath):
    """Redis GET / SET over its unix socket (redis-py with the hiredis parser)."""

    name = "redis"

    def __init__(self, page_bytes: int, num_pages: int, worker: int, path_index: int, socket: str) -> None:
        super().__init__(page_bytes, num_pages, worker, path_index)
        import redis

        self.redis = redis.Redis(unix_socket_path=socket)
        self.redis.ping()

    def put_one(self, i: int) -> None:
        self.counted += bool(self.redis.set(self.keys[i], memoryview(self.pages[i])))

    def get_one(self, i: int) -> None:
        deliver(self.out[i], self.redis.get(self.keys[i]))

    def drop(self) -> None:
        self.redis.delete(*self.keys)

    def check_stored(self) -> str | None:
        if (problem := self.expect_counted("stored")) is not None:
            return problem
        got = [self.redis.get(key) for key in self.keys]
        return first_mismatch(self.pages, got)

    def close(self) -> None:
        self.drop()
        self.redis.close()


class TierdPath(PagePath):
    """A tierd client and namespace; the put check reads back through the byte path."""

    options = ClientOptions(local_data_path=False)

    def __init__(self, page_bytes: int, num_pages: int, worker: int, path_index: int, socket: str) -> None:
        super().__init__(page_bytes, num_pages, worker, path_index)
        self.client = TierClient(socket, self.options)
        self.bytes_client = self.client if not self.options.local_data_path else \
            TierClient(socket, ClientOptions(local_data_path=False))
        self.ns: NamespaceHandle = self.client.register(spec_for(page_bytes))
        if self.ns.page_bytes != page_bytes:
            raise ValueError(f"spec has {self.ns.page_bytes}-byte pages, wanted {page_bytes}")
        self.keys = self.ns.keys(np.arange(num_pages * self.ns.spec.page_tokens) + self.token_base)

    def drop(self) -> None:
        self.bytes_client.delete(self.ns, self.keys)

    def check_stored(self) -> str | None:
        if (problem := self.expect_counted("stored")) is not None:
            return problem
        for start in range(0, self.num_pages, CHECK_BATCH_PAGES):
            got: list[bytes | None] = list(self.bytes_client.get(self.ns, self.keys[start:start + CHECK_BATCH_PAGES]))
            got += [None] * (min(CHECK_BATCH_PAGES, self.num_pages - start) - len(got))
            if (problem := first_mismatch(self.pages[start:start + CHECK_BATCH_PAGES], got)) is not None:
                return f"from page {start}: {problem}"
        return None

    def close(self) -> None:
        self.drop()
        if self.bytes_client is not self.client:
            self.bytes_client.close()
        self.client.close()


class BytePath(TierdPath):
    """``TierClient(ClientOptions(local_data_path=False))``: every page over the byte path, which
    on the daemon's machine is its page socket."""

    name = "byte"

    def put_one(self, i: int) -> None:
        self.counted += self.client.put(self.ns, [self.keys[i]], [self.pages[i]]).num_stored

    def get_one(self, i: int) -> None:
        got = self.client.get(self.ns, [self.keys[i]])
        deliver(self.out[i], got[0] if got else None)


class GrpcBytePath(BytePath):
    """``ClientOptions(local_data_path=False, page_socket=False)``: every page over gRPC
    GetPages / PutPages (what a client on another machine gets)."""

    name = "byte-grpc"
    options = ClientOptions(local_data_path=False, page_socket=False)


class ZeroCopyPath(TierdPath):
    """Leases: get = Acquire + copy out of the leased slot + Release; put = Allocate + copy into
    the hbm slot + Commit (+ Release unless the commit ended the lease)."""

    name = "zero-copy"

    def put_one(self, i: int) -> None:
        lease = self.client.allocate(self.ns, 1)
        arena = self.client.arena(self.ns, Tier.HBM).bytes()
        np.copyto(arena[lease.slots[0]], self.pages[i])
        self.counted += lease.commit([self.keys[i]]).num_committed
        if not lease.released:
            lease.release()

    def get_one(self, i: int) -> None:
        lease = self.client.acquire(self.ns, [self.keys[i]], Tier.DRAM)
        try:
            if lease.num_pages == 1:
                np.copyto(self.out[i], self.client.arena(self.ns, lease.tier).bytes()[lease.slots[0]])
        finally:
            lease.release()

    def prepare(self, op: str, rep: int) -> None:
        super().prepare(op, rep)
        if op == "get" and rep == 0:
            # The puts left the pages in hbm; Acquire(DRAM) of each page once, untimed, makes
            # them resident in dram so no timed call moves a page between tiers.
            for start in range(0, self.num_pages, CHECK_BATCH_PAGES):
                self.client.acquire(self.ns, self.keys[start:start + CHECK_BATCH_PAGES], Tier.DRAM).release()


class LocalPath(TierdPath):
    """``TierClient`` with default options (the local data path): ``get_into`` copies resident
    pages into the caller's buffer through the daemon's page index, ``get`` / ``put`` use it too."""

    name = "local"
    ops = ("put", "get_into", "get")
    options = ClientOptions()

    def __init__(self, page_bytes: int, num_pages: int, worker: int, path_index: int, socket: str) -> None:
        super().__init__(page_bytes, num_pages, worker, path_index, socket)
        if not hasattr(self.client, "get_into"):
            # Without get_into the default client's get/put are still the byte path: measuring
            # them here would report byte-path numbers under the local path's name.
            raise AttributeError("'TierClient' object has no attribute 'get_into': the local data "
                                 "path has not landed")

    def put_one(self, i: int) -> None:
        self.counted += self.client.put(self.ns, [self.keys[i]], [self.pages[i]]).num_stored

    def get_into_one(self, i: int) -> None:
        self.counted += self.client.get_into(self.ns, [self.keys[i]], self.out[i])  # type: ignore[attr-defined]

    def get_one(self, i: int) -> None:
        got = self.client.get(self.ns, [self.keys[i]])
        deliver(self.out[i], got[0] if got else None)

    def check(self, op: str) -> str | None:
        if op == "get_into" and (problem := self.expect_counted("read")) is not None:
            return problem
        return super().check(op)


PATHS: dict[str, type[PagePath]] = {cls.name: cls for cls in
                                    (CeilingPath, RedisPath, BytePath, GrpcBytePath, ZeroCopyPath,
                                     LocalPath)}


def open_path(name: str, page_bytes: int, num_pages: int, worker: int, socket: str | None) -> PagePath:
    cls = PATHS[name]
    index = list(PATHS).index(name)
    if cls is CeilingPath:
        return cls(page_bytes, num_pages, worker, index)
    return cls(page_bytes, num_pages, worker, index, socket)  # type: ignore[call-arg]
