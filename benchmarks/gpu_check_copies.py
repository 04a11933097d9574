"""GPU check stages 3 and 4: ``cudaHostRegister`` cost, and the raw copy ceiling.

Stage 3 registers a shmem-backed mapping (a memfd, as tierd's pinned dram regions are; /dev/shm
files are the same shmem, and a container's /dev/shm is often too small) in tierd's chunks,
fresh and prefaulted. Stage 4 times H2D and D2H between page-locked host memory and one device
allocation: one big copy (the ceiling), the same bytes per page through one ``copy_batch_async``
(pages land on shuffled device slots, as an arena's do), pageable H2D, and both directions at
once. Its ceilings go into ``ctx.shared`` for stage 5's ratios.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import os
import statistics
from collections.abc import Callable, Iterator

import numpy as np
from gpu_check_driver import StageContext
from gpu_check_resources import GiB, KiB, MiB, Resources

from tierd.tiers.cuda_runtime import CopyRange, CudaRuntime

# Stage 3 maps at most this share of MemAvailable.
REGISTER_MEMORY_SHARE = 0.5
PAGE_BYTES = mmap.PAGESIZE
H2D_KEY, D2H_KEY = "h2d_ceiling_gbps", "d2h_ceiling_gbps"


def size_label(size_bytes: int) -> str:
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size_bytes >= unit and size_bytes % unit == 0:
            return f"{size_bytes // unit}{name}"
    return f"{size_bytes}B"


@contextlib.contextmanager
def host_mapping(size_bytes: int, shared: bool) -> Iterator[tuple[np.ndarray, int]]:
    """A fresh ``size_bytes`` mapping (``shared``: of a memfd, the shmem tierd's dram regions and
    /dev/shm files are made of; else anonymous): a uint8 view of it and its address, valid inside
    the ``with`` only. Nothing is touched yet."""
    fd = -1
    if shared:
        fd = os.memfd_create("gpu-check", os.MFD_CLOEXEC)
        os.ftruncate(fd, size_bytes)
    try:
        mapping = mmap.mmap(fd, size_bytes)
        try:
            anchor = ctypes.c_char.from_buffer(mapping)
            address = ctypes.addressof(anchor)
            del anchor  # no buffer export may outlive the block, or the mapping cannot close
            yield np.ctypeslib.as_array((ctypes.c_uint8 * size_bytes).from_address(address)), address
        finally:
            mapping.close()
    finally:
        if fd >= 0:
            os.close(fd)


def prefault(view: np.ndarray) -> None:
    """Touch one byte per OS page, so every page is backed before it is registered."""
    view[::PAGE_BYTES] = 1


def register_chunked(runtime: CudaRuntime, address: int, size_bytes: int, chunk_bytes: int) -> list[int]:
    """``host_register`` in calls of at most ``chunk_bytes`` (as tierd's pinned arena); the chunk
    addresses, for ``unregister_all``."""
    done: list[int] = []
    try:
        for offset in range(0, size_bytes, chunk_bytes):
            runtime.host_register(address + offset, min(chunk_bytes, size_bytes - offset))
            done.append(address + offset)
    except BaseException:
        unregister_all(runtime, done)
        raise
    return done


def unregister_all(runtime: CudaRuntime, chunks: list[int]) -> None:
    for chunk in chunks:
        runtime.host_unregister(chunk)


def fitting_sizes(wanted_bytes: tuple[int, ...], room_bytes: int) -> list[tuple[int, int]]:
    """(wanted, used) per size: a size above ``room_bytes`` is halved until it fits (0: none fits
    even at 1 MiB)."""
    out = []
    for wanted in wanted_bytes:
        used = wanted
        while used > room_bytes and used > MiB:
            used //= 2
        out.append((wanted, used if used <= room_bytes else 0))
    return out


def _room_bytes() -> int:
    from gpu_check_env import _meminfo_bytes

    return int(REGISTER_MEMORY_SHARE * _meminfo_bytes("MemAvailable"))


def host_register_stage(ctx: StageContext, room_bytes: int | None = None) -> None:
    """Stage 3: seconds per GiB of ``cudaHostRegister`` on shmem, fresh and prefaulted."""
    res: Resources = ctx.resources
    runtime = res.runtime()
    sizes = res.sizes
    room = _room_bytes() if room_bytes is None else room_bytes
    ctx.note("room_bytes", room)
    ctx.note("chunk_bytes", sizes.register_chunk_bytes)
    measured: set[int] = set()
    for (wanted, used), reps in zip(fitting_sizes(sizes.register_bytes, room), sizes.register_reps):
        if used != wanted:
            ctx.note(f"scaled_{size_label(wanted)}", f"{size_label(used) if used else 'skipped'}: not enough memory")
        if not used or used in measured:
            continue
        measured.add(used)
        for prefaulted in (False, True):
            label = f"register {size_label(used)} {'prefaulted' if prefaulted else 'fresh'}"
            seconds = []
            for _ in range(reps):
                ctx.check()
                seconds.append(_register_once(ctx, runtime, used, prefaulted, label))
            ctx.add(label, statistics.median(seconds) / (used / GiB), "s/GiB")


def _register_once(ctx: StageContext, runtime: CudaRuntime, size_bytes: int, prefaulted: bool, label: str) -> float:
    """One registration of a fresh mapping (unregistered again before it is unmapped)."""
    with host_mapping(size_bytes, shared=True) as (view, address):
        if prefaulted:
            prefault(view)
        chunks: list[int] = []

        def register() -> None:
            chunks.extend(register_chunked(runtime, address, size_bytes, ctx.resources.sizes.register_chunk_bytes))

        try:
            return ctx.time_s(label, register)
        finally:
            unregister_all(runtime, chunks)


# -- stage 4: the raw copy ceiling ---------------------------------------------------------------------

def run_and_wait(runtime: CudaRuntime, batches: list[tuple[list[CopyRange], int]]) -> None:
    """Queue each batch on its stream, then wait for all of them (both directions at once when
    given one batch per stream)."""
    for copies, stream in batches:
        runtime.copy_batch_async(copies, stream)
    events = [runtime.record_event(stream) for _, stream in batches]
    for event in events:
        try:
            runtime.wait_event(event)
        finally:
            runtime.destroy_event(event)


def page_copies(dst_base: int, src_base: int, total_bytes: int, page_bytes: int, to_device: bool,
                seed: int = 0) -> list[CopyRange]:
    """One copy per page; the device side of page ``i`` is slot ``perm[i]`` (shuffled)."""
    pages = total_bytes // page_bytes
    perm = np.random.default_rng(seed).permutation(pages)
    return [CopyRange(dst_base + int(perm[i] if to_device else i) * page_bytes,
                      src_base + int(i if to_device else perm[i]) * page_bytes, page_bytes) for i in range(pages)]


def median_gbps(ctx: StageContext, label: str, size_bytes: int, fn: Callable[[], None]) -> float:
    """GB/s of ``size_bytes`` over the median of ``reps`` timed runs of ``fn`` (after one warm-up)."""
    ctx.check()
    fn()
    seconds = []
    for _ in range(ctx.resources.sizes.reps):
        ctx.check()
        seconds.append(ctx.time_s(label, fn))
    return size_bytes / statistics.median(seconds) / 1e9


@contextlib.contextmanager
def device_buffer(runtime: CudaRuntime, size_bytes: int) -> Iterator[int]:
    ptr = runtime.malloc(size_bytes)
    try:
        yield ptr
    finally:
        runtime.free(ptr)


@contextlib.contextmanager
def stream_pair(runtime: CudaRuntime) -> Iterator[tuple[int, int]]:
    first = runtime.create_stream()
    try:
        second = runtime.create_stream()
        try:
            yield first, second
        finally:
            runtime.destroy_stream(second)
    finally:
        runtime.destroy_stream(first)


@contextlib.contextmanager
def pinned_mapping(runtime: CudaRuntime, size_bytes: int, chunk_bytes: int) -> Iterator[tuple[np.ndarray, int]]:
    """An anonymous mapping, touched, page-locked for its lifetime."""
    with host_mapping(size_bytes, shared=False) as (view, address):
        prefault(view)
        chunks = register_chunked(runtime, address, size_bytes, chunk_bytes)
        try:
            yield view, address
        finally:
            unregister_all(runtime, chunks)


def fill_pattern(view: np.ndarray, seed: int) -> None:
    """Distinct 8-byte words, so a misplaced or missing page shows."""
    words = view[: view.size // 8 * 8].view(np.uint64)
    words[:] = np.arange(words.size, dtype=np.uint64) + np.uint64(seed << 40)


def raw_copy_stage(ctx: StageContext) -> None:
    """Stage 4: pinned H2D / D2H GB/s (one copy, per page), pageable H2D, both directions at once."""
    res: Resources = ctx.resources
    runtime = res.runtime()
    n = res.sizes.copy_bytes
    chunk = res.sizes.register_chunk_bytes
    with contextlib.ExitStack() as stack:
        up, down = stack.enter_context(stream_pair(runtime))
        dev = stack.enter_context(device_buffer(runtime, n))
        dev2 = stack.enter_context(device_buffer(runtime, n))
        src, src_addr = stack.enter_context(pinned_mapping(runtime, n, chunk))
        dst, dst_addr = stack.enter_context(pinned_mapping(runtime, n, chunk))
        fill_pattern(src, seed=1)
        big = f"1 copy {size_label(n)}"
        h2d = median_gbps(ctx, f"h2d {big}", n, lambda: run_and_wait(runtime, [([CopyRange(dev, src_addr, n)], up)]))
        ctx.shared[H2D_KEY] = h2d
        ctx.add(f"H2D pinned, {big}", h2d, "GB/s")
        d2h = median_gbps(ctx, f"d2h {big}", n, lambda: run_and_wait(runtime, [([CopyRange(dst_addr, dev, n)], down)]))
        ctx.shared[D2H_KEY] = d2h
        ctx.add(f"D2H pinned, {big}", d2h, "GB/s")
        equal = bool(np.array_equal(src, dst))
        ctx.add("H2D then D2H bytes equal", float(equal), "bool")
        if not equal:
            raise RuntimeError("the bytes copied to the device and back differ from the source")
        _per_page(ctx, runtime, (up, down), dev, src_addr, dst_addr)
        _pageable_and_both(ctx, runtime, (up, down), (dev, dev2), (src_addr, dst_addr))


def _per_page(ctx: StageContext, runtime: CudaRuntime, streams: tuple[int, int], dev: int, src_addr: int,
              dst_addr: int) -> None:
    n = ctx.resources.sizes.copy_bytes
    for page in ctx.resources.sizes.page_bytes:
        up_copies = page_copies(dev, src_addr, n, page, to_device=True)
        down_copies = page_copies(dst_addr, dev, n, page, to_device=False)
        name = f"{size_label(page)} pages, 1 batch"
        for direction, copies, stream in (("H2D", up_copies, streams[0]), ("D2H", down_copies, streams[1])):
            run = functools.partial(run_and_wait, runtime, [(copies, stream)])
            gbps = median_gbps(ctx, f"{direction.lower()} {name}", n, run)
            ctx.add(f"{direction} pinned, {name}", gbps, "GB/s")


def _pageable_and_both(ctx: StageContext, runtime: CudaRuntime, streams: tuple[int, int], devs: tuple[int, int],
                       pinned: tuple[int, int]) -> None:
    n = ctx.resources.sizes.copy_bytes
    big = f"1 copy {size_label(n)}"
    with host_mapping(n, shared=False) as (pageable, pageable_addr):
        fill_pattern(pageable, seed=2)
        gbps = median_gbps(ctx, f"h2d pageable {big}", n,
                           lambda: run_and_wait(runtime, [([CopyRange(devs[0], pageable_addr, n)], streams[0])]))
        ctx.add(f"H2D pageable, {big}", gbps, "GB/s")
    both = [([CopyRange(devs[1], pinned[0], n)], streams[0]), ([CopyRange(pinned[1], devs[0], n)], streams[1])]
    gbps = median_gbps(ctx, f"both {big}", 2 * n, lambda: run_and_wait(runtime, both))
    ctx.add(f"H2D + D2H at once (sum), {big}", gbps, "GB/s")
