"""The page store's parts: assembled at ``open``, taken down in reverse order at ``close``.

The disk tier first (the index is rebuilt from it), then the manager, the media (arenas and
transfer engine), regions, the plan runner, eviction, promotion, the remote tier's link (when
one is configured) and the maintenance thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from tierd.config import StoreConfig
from tierd.errors import TierdError
from tierd.remote.base import RemoteBackend
from tierd.store.eviction import Evictor
from tierd.store.flushing import flush_to_disk
from tierd.store.maintenance import Maintenance
from tierd.store.manager import Manager
from tierd.store.media import Media, open_media
from tierd.store.promotion import Promoter
from tierd.store.regions import RegionTable
from tierd.store.remote_link import RemoteLink, open_remote
from tierd.store.runner import PlanRunner
from tierd.tiers.cuda_runtime import CudaRuntime
from tierd.tiers.disk import DiskTier
from tierd.tiers.shm_cleanup import cleanup_stale_segments

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parts:
    """Everything that lives from ``open`` to ``close``."""

    disk: DiskTier
    media: Media
    manager: Manager
    regions: RegionTable
    runner: PlanRunner
    evictor: Evictor
    promoter: Promoter
    maintenance: Maintenance
    remote: RemoteLink | None


def assemble(cfg: StoreConfig, remote_backend: RemoteBackend | None = None,
             cuda_runtime: CudaRuntime | None = None) -> Parts:
    """Open the disk tier, rebuild the index from it (warm restart), compose the other parts;
    maintenance is not started yet. ``cuda_runtime``: the device's (``cuda:N``; None opens CuPy's)."""
    cleanup_stale_segments(cfg.shm_prefix)
    disk = DiskTier(cfg)
    disk.open()
    try:
        manager = Manager(cfg)
        _load_index(disk, manager)
        media = open_media(cfg, disk, cuda_runtime)
    except BaseException:
        disk.close()
        raise
    try:
        parts = _compose(cfg, disk, media, manager, remote_backend)
    except BaseException:
        media.close()
        disk.close()
        raise
    disk.on_map_full = manager.map_full
    return parts


def take_down(parts: Parts, cfg: StoreConfig) -> int:
    """Flush dirty pages to disk (within ``flush_timeout_s``), stop threads, free memory.

    Returns how many pages the flush could not write, now lost: 0 when it completed (or the
    disk tier is disabled, capacity 0, so memory pages are meant to go)."""
    parts.maintenance.close()
    if parts.remote is not None:  # its writer reads pages through the runner
        parts.remote.close()
    flushing = cfg.disk.capacity_bytes > 0
    if flushing:
        _flush_on_close(parts, cfg.flush_timeout_s)
    parts.promoter.close()
    parts.runner.drain_deletes()
    parts.media.engine.close()
    parts.runner.drain_deletes()
    parts.disk.close()  # every queued write has now committed or failed
    lost = parts.manager.pages_not_on_disk() if flushing else 0
    parts.manager.durability.fail_all()
    for arena in parts.media.arenas.values():
        arena.close()
    return lost


def _flush_on_close(parts: Parts, timeout_s: float) -> None:
    """Close goes on whatever the flush meets: say in one line why it did not complete."""
    try:
        flush_to_disk(parts.manager, parts.runner, parts.disk, timeout_s)
    except TierdError as exc:
        log.error("flush on close did not complete: %s", exc)
    except Exception:  # a bug: keep its traceback
        log.exception("flush on close failed")


def _load_index(disk: DiskTier, manager: Manager) -> None:
    """Rebuild the index from LMDB, oldest page first (recency survives a restart)."""
    for ns in disk.load_namespaces():
        manager.add_namespace(ns)
    for entry in sorted(disk.scan(), key=lambda entry: entry.seq):
        if not manager.load_disk_page(entry.ns_id, entry.key, entry.stored_bytes, entry.seq,
                                      entry.parent):
            log.warning("disk holds a page of unknown namespace %d; dropping it", entry.ns_id)


def _compose(cfg: StoreConfig, disk: DiskTier, media: Media, manager: Manager,
             remote_backend: RemoteBackend | None) -> Parts:
    regions = RegionTable(cfg, media.arenas)
    # Disk writes that complete wake maintenance: room in dram may let a waiting put go on.
    wake = threading.Event()
    runner = PlanRunner(manager, media.engine, regions, disk, wake.set)
    evictor = Evictor(manager, runner)
    promoter = Promoter(manager, runner, evictor, cfg.mover_threads)
    remote = open_remote(cfg, manager, runner, remote_backend)
    maintenance = Maintenance(manager, evictor, cfg.maintenance_interval_s, cfg.acquire_timeout_s, wake)
    return Parts(disk, media, manager, regions, runner, evictor, promoter, maintenance, remote)
