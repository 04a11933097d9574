"""GPU check stage 5: tierd's own page moves on the CUDA device, against stage 4's ceilings.

Through ``PageStore`` on ``cuda:N`` (hbm in GPU memory, dram page-locked), for each page size:

- promotion dram -> hbm: pages put into dram, then one ``acquire`` into hbm (timed);
- demotion hbm -> dram: pages put into hbm, then an ``allocate`` of every hbm slot (timed),
  which demotes them all to dram first;
- disk -> hbm: pages flushed to disk, the store reopened (every page on disk only), one
  ``acquire`` into hbm, with the page cache warm and with the data file dropped from it.

hbm holds exactly the pages moved, dram room for two sets, watermarks at 1.0 and maintenance
idle, so nothing but the timed call moves pages. Targets: promotion and demotion at >= 0.9 of
the raw copy's GB/s; Acquire of the first page size's pages within 1.2x the raw copy's time.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gpu_check_copies import D2H_KEY, H2D_KEY, size_label
from gpu_check_driver import StageContext, Target
from gpu_check_resources import MiB, Resources

from tierd.config import DeviceType, DiskConfig, MemoryTierConfig, StoreConfig, StoreDevice
from tierd.errors import InvalidArgument
from tierd.keys import chain_keys
from tierd.spec import Namespace, PageSpec
from tierd.store import PageStore
from tierd.tier import Tier
from tierd.tiers.cuda_runtime import CudaRuntime
from tierd.tiers.disk import ENV_DIR_NAME
from tierd.tiers.lmdb_file import DATA_FILE_NAME
from tierd.values import Lease

MOVE_TARGET = 0.9      # promotion / demotion GB/s over the raw copy's
ACQUIRE_TARGET = 1.2   # Acquire's time over the raw copy's time of the same bytes
DISK_REPS = 3          # each disk rep reopens the store: fewer than the memory reps
SHM_PREFIX = "gpucheck"
KV_BYTES_PER_TOKEN_LAYER = 2 * 8 * 128 * 2  # K and V, 8 kv heads x 128 dims, bf16
PAGE_TOKENS = 16


def spec_for(page_bytes: int) -> PageSpec:
    """A Llama-like bf16 spec whose pages are ``page_bytes`` (a multiple of 64 KiB)."""
    layers = page_bytes // (KV_BYTES_PER_TOKEN_LAYER * PAGE_TOKENS)
    if layers < 1 or layers * KV_BYTES_PER_TOKEN_LAYER * PAGE_TOKENS != page_bytes:
        raise InvalidArgument(f"page size {page_bytes} B is not a multiple of 64 KiB; use one that is")
    return PageSpec(f"gpu-check-{size_label(page_bytes)}@r1", "bfloat16", layers, 8, 128, PAGE_TOKENS)


def store_config(data_dir: Path, res: Resources, page_bytes: int, hbm_pages: int, dram_pages: int) -> StoreConfig:
    """hbm of exactly ``hbm_pages`` slots, dram of ``dram_pages``, nothing moving on its own."""
    def memory(pages: int) -> MemoryTierConfig:
        return MemoryTierConfig(pages * page_bytes, high_watermark=1.0, low_watermark=1.0, region_share=1.0)

    disk_bytes = 4 * dram_pages * (page_bytes + 4096) + 64 * MiB
    return StoreConfig(data_dir=data_dir, hbm=memory(hbm_pages), dram=memory(dram_pages),
                       disk=DiskConfig(disk_bytes, fsync=False),
                       device=StoreDevice(DeviceType.CUDA, res.device_index),
                       cuda_register_chunk_bytes=res.sizes.register_chunk_bytes, prefault=True,
                       maintenance_interval_s=3600.0, acquire_timeout_s=120.0, flush_timeout_s=120.0,
                       shm_prefix=SHM_PREFIX)


def page_array(num_pages: int, page_bytes: int) -> np.ndarray:
    """``[num_pages, page_bytes]`` uint8, every 8-byte word distinct."""
    return np.arange(num_pages * page_bytes // 8, dtype=np.uint64).view(np.uint8).reshape(num_pages, page_bytes)


def keys_for(ns: Namespace, num_pages: int, first_page: int) -> list[bytes]:
    tokens = np.arange(first_page * PAGE_TOKENS, (first_page + num_pages) * PAGE_TOKENS, dtype=np.uint32)
    return list(chain_keys(ns.fingerprint, tokens, PAGE_TOKENS))


def drop_page_cache(path: Path) -> None:
    """Write back and drop ``path``'s pages from the page cache (the next read comes from disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def check_pages(store: PageStore, ns_id: int, keys: list[bytes], pages: np.ndarray, tier: Tier, what: str) -> None:
    """The first and last page are in ``tier`` with the bytes put (``RuntimeError`` otherwise)."""
    picks = sorted({0, len(keys) - 1})
    found = store.peek(ns_id, [keys[i] for i in picks])
    for i, page in zip(picks, found):
        if page is None or page.tier is not tier or page.data != pages[i].tobytes():
            where = ("missing" if page is None else
                     f"in {page.tier.label}, bytes {'ok' if page.data == pages[i].tobytes() else 'WRONG'}")
            raise RuntimeError(f"{what}: page {i} should be in {tier.label} with the bytes put, but is {where}")


def timed_lease_s(ctx: StageContext, label: str, call: Callable[[], Lease], num_pages: int) -> tuple[float, Lease]:
    """Seconds of ``call`` (an acquire or allocate) and its lease, which must hold ``num_pages``."""
    got: list[Lease] = []
    seconds = ctx.time_s(label, lambda: got.append(call()))
    if got[0].num_pages != num_pages:
        raise RuntimeError(f"{label}: the lease holds {got[0].num_pages} pages, expected {num_pages}")
    return seconds, got[0]


def tierd_stage(ctx: StageContext) -> None:
    """Stage 5 (see the module docstring)."""
    res: Resources = ctx.resources
    runtime = res.runtime()
    root = Path(tempfile.mkdtemp(prefix="gpu-check-store-"))
    ctx.note("data_dir", str(root))
    try:
        for index, page_bytes in enumerate(res.sizes.page_bytes):
            ctx.check()
            _memory_moves(ctx, runtime, page_bytes, root / f"memory-{size_label(page_bytes)}", index == 0)
            ctx.check()
            _disk_reads(ctx, runtime, page_bytes, root / f"disk-{size_label(page_bytes)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _ratio(value: float, ceiling: float | None) -> float | None:
    return None if ceiling is None or ceiling <= 0 else value / ceiling


def _memory_moves(ctx: StageContext, runtime: CudaRuntime, page_bytes: int, data_dir: Path,
                  acquire_figure: bool) -> None:
    res: Resources = ctx.resources
    num_pages = max(1, res.sizes.copy_bytes // page_bytes)
    moved_bytes = num_pages * page_bytes
    label = f"{num_pages} x {size_label(page_bytes)}"
    pages = page_array(num_pages, page_bytes)
    views = [memoryview(page) for page in pages]
    cfg = store_config(data_dir, res, page_bytes, num_pages, 2 * num_pages + 2)
    with res.hooks.store_factory(cfg, runtime) as store:
        ns = store.register(spec_for(page_bytes))
        promoted, demoted = keys_for(ns, num_pages, 0), keys_for(ns, num_pages, num_pages)
        promote_s, demote_s, already_in_dram = [], [], 0
        for _ in range(res.sizes.reps):
            ctx.check()
            store.put(ns.ns_id, promoted, views, Tier.DRAM)
            seconds, lease = timed_lease_s(ctx, f"promote {label}",
                                           lambda: store.acquire(ns.ns_id, promoted, Tier.HBM), num_pages)
            promote_s.append(seconds)
            store.release(lease.lease_id)
            check_pages(store, ns.ns_id, promoted, pages, Tier.HBM, "after promotion")
            store.delete(ns.ns_id, promoted)
            store.put(ns.ns_id, demoted, views, Tier.HBM)
            already_in_dram = max(already_in_dram, len(store.inspect().regions[(ns.ns_id, Tier.DRAM)].pages))
            seconds, lease = timed_lease_s(ctx, f"demote {label}",
                                           lambda: store.allocate(ns.ns_id, num_pages, tier=Tier.HBM), num_pages)
            demote_s.append(seconds)
            store.release(lease.lease_id)
            check_pages(store, ns.ns_id, demoted, pages, Tier.DRAM, "after demotion")
            store.delete(ns.ns_id, demoted)
    # A put into hbm that left a dram copy would make "demotion" a drop: said, not hidden.
    ctx.note(f"demotion_{size_label(page_bytes)}_pages_in_dram_before", already_in_dram)
    h2d, d2h = ctx.shared.get(H2D_KEY), ctx.shared.get(D2H_KEY)
    _move_figures(ctx, f"promote dram->hbm {label}", moved_bytes / statistics.median(promote_s) / 1e9, h2d, "H2D")
    _move_figures(ctx, f"demote hbm->dram {label}", moved_bytes / statistics.median(demote_s) / 1e9, d2h, "D2H")
    if acquire_figure:
        raw_s = None if h2d is None else moved_bytes / (h2d * 1e9)
        ctx.add(f"Acquire {label} / raw H2D time", None if raw_s is None else statistics.median(promote_s) / raw_s,
                "x", Target("<=", ACQUIRE_TARGET))


def _move_figures(ctx: StageContext, name: str, gbps: float, ceiling: float | None, direction: str) -> None:
    ctx.add(name, gbps, "GB/s")
    ctx.add(f"{name} / raw {direction}", _ratio(gbps, ceiling), "x", Target(">=", MOVE_TARGET))


def _disk_reads(ctx: StageContext, runtime: CudaRuntime, page_bytes: int, data_dir: Path) -> None:
    res: Resources = ctx.resources
    num_pages = max(1, res.sizes.disk_bytes // page_bytes)
    label = f"{num_pages} x {size_label(page_bytes)}"
    pages = page_array(num_pages, page_bytes)
    spec = spec_for(page_bytes)
    cfg = store_config(data_dir, res, page_bytes, num_pages, num_pages + 2)
    with res.hooks.store_factory(cfg, runtime) as store:
        ns = store.register(spec)
        keys = keys_for(ns, num_pages, 0)
        store.put(ns.ns_id, keys, [memoryview(page) for page in pages], Tier.DRAM)
        store.flush()
    data_file = data_dir / ENV_DIR_NAME / DATA_FILE_NAME
    for cache in ("warm", "cold"):
        seconds = []
        for _ in range(min(res.sizes.reps, DISK_REPS)):
            ctx.check()
            if cache == "cold":
                drop_page_cache(data_file)
            with res.hooks.store_factory(cfg, runtime) as store:
                ns = store.register(spec)
                tiers = set(store.lookup(ns.ns_id, keys).tiers)
                if tiers != {Tier.DISK}:
                    raise RuntimeError(f"after a restart the pages should be on disk only, found {tiers}")
                acquire = functools.partial(store.acquire, ns.ns_id, keys, Tier.HBM)
                took_s, lease = timed_lease_s(ctx, f"disk {cache} {label}", acquire, num_pages)
                seconds.append(took_s)
                store.release(lease.lease_id)
                check_pages(store, ns.ns_id, keys, pages, Tier.HBM, f"after disk ({cache}) -> hbm")
        ctx.add(f"disk->hbm {cache} page cache, {label}", num_pages * page_bytes / statistics.median(seconds) / 1e9,
                "GB/s")
