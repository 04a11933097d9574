"""The one factory of arenas and transfer engine, keyed by the resolved device.

``cpu`` -> shm arenas for hbm and dram, the CPU engine; ``fake`` -> the fake device arena for hbm
(no host view), shm for dram, the fake device engine; ``cuda:N`` -> hbm in GPU memory (one
cudaMalloc per region, exported over CUDA IPC), dram page-locked shm (unless ``pin_dram`` is
off), the CUDA engine. The start-up checks count host memory from ``host_tiers`` here, so they
never disagree with what is built.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tierd.config import DeviceType, StoreConfig, StoreDevice
from tierd.store.transfer.base import TransferEngine
from tierd.store.transfer.cpu import CpuEngine
from tierd.store.transfer.cuda import CudaEngine, CudaEngineSettings
from tierd.store.transfer.fake import FakeDeviceEngine
from tierd.tier import MEMORY_TIERS, Tier
from tierd.tiers.base import Arena
from tierd.tiers.cuda_arena import CudaArena
from tierd.tiers.cuda_runtime import CudaRuntime, open_cuda_runtime
from tierd.tiers.disk import DiskTier
from tierd.tiers.fake_device import FakeDeviceArena
from tierd.tiers.pinned import PinnedShmArena
from tierd.tiers.shm_arena import ShmArena
from tierd.units import format_size

log = logging.getLogger(__name__)


def shm_tiers(device: StoreDevice) -> tuple[Tier, ...]:
    """The memory tiers whose regions are host shared memory (memfd) on this device."""
    return MEMORY_TIERS if device.type is DeviceType.CPU else (Tier.DRAM,)


def host_tiers(device: StoreDevice) -> tuple[Tier, ...]:
    """The memory tiers whose bytes take host RAM on this device."""
    return (Tier.DRAM,) if device.type is DeviceType.CUDA else MEMORY_TIERS


@dataclass(frozen=True)
class Media:
    """The memory arenas and the engine that copies between them, the disk and callers."""

    arenas: dict[Tier, Arena]
    engine: TransferEngine

    @contextmanager
    def shared_fd(self, grant: bytes, index: bool = False) -> Iterator[int | None]:
        """The descriptor of the shm region ``grant`` opens (``index``: of its page index),
        valid inside the ``with``, else None."""
        for arena in self.arenas.values():
            if isinstance(arena, ShmArena):
                with arena.shared_fd(grant, index) as fd:
                    if fd is not None:
                        yield fd
                        return
        yield None

    def close(self) -> None:
        """The engine first (it lands what is in flight), then the arenas; idempotent."""
        self.engine.close()
        for arena in self.arenas.values():
            arena.close()


def _shm(config: StoreConfig, tier: Tier) -> ShmArena:
    return ShmArena(tier, config.tier_capacity_bytes(tier), config.shm_prefix, config.prefault)


def open_media(config: StoreConfig, disk: DiskTier, cuda_runtime: CudaRuntime | None = None) -> Media:
    """The arenas and engine of ``config.device``, over the (open) disk tier. ``cuda_runtime``:
    the device's runtime on ``cuda:N`` (None: CuPy's, imported here)."""
    device = config.device
    readers = config.disk.reader_threads
    if device.type is DeviceType.CUDA:
        return _cuda_media(config, disk, cuda_runtime or open_cuda_runtime(device.index))
    dram = _shm(config, Tier.DRAM)
    if device.type is DeviceType.FAKE:
        hbm = FakeDeviceArena(Tier.HBM, config.hbm.capacity_bytes)
        engine: TransferEngine = FakeDeviceEngine(disk, readers, hbm, device.fake_min_delay_s,
                                                  device.fake_max_delay_s, device.fake_seed)
        return Media({Tier.HBM: hbm, Tier.DRAM: dram}, engine)
    return Media({Tier.HBM: _shm(config, Tier.HBM), Tier.DRAM: dram}, CpuEngine(disk, readers))


def _cuda_media(config: StoreConfig, disk: DiskTier, runtime: CudaRuntime) -> Media:
    """hbm in GPU memory, dram page-locked for it, the CUDA engine; what was made is closed
    again when a later part fails."""
    log.info("hbm on cuda:%d (%s of GPU memory), dram %s", runtime.device_index,
             format_size(config.hbm.capacity_bytes),
             "page-locked" if config.pin_dram else "pageable (store.pin_dram = false)")
    settings = CudaEngineSettings(batch_pages=config.cuda_batch_pages,
                                  staging_bytes=config.cuda_staging_bytes,
                                  register_chunk_bytes=config.cuda_register_chunk_bytes,
                                  drain_timeout_s=config.flush_timeout_s)
    made: list[Arena] = []
    try:
        dram: Arena = (PinnedShmArena(Tier.DRAM, config.dram.capacity_bytes, config.shm_prefix,
                                      config.prefault, runtime, config.cuda_register_chunk_bytes)
                       if config.pin_dram else _shm(config, Tier.DRAM))
        made.append(dram)
        hbm = CudaArena(Tier.HBM, config.hbm.capacity_bytes, runtime)
        made.append(hbm)
        engine = CudaEngine(runtime, disk, config.disk.reader_threads, settings)
    except BaseException:
        for arena in made:
            arena.close()
        raise
    return Media({Tier.HBM: hbm, Tier.DRAM: dram}, engine)
