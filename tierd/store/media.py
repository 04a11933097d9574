"""The one factory of arenas and transfer engine, keyed by the resolved device.

``cpu`` -> shm arenas for hbm and dram, the CPU engine; ``fake`` -> the fake device arena for hbm
(no host view), shm for dram, the fake device engine; ``cuda:N`` -> until the CUDA arena lands,
hbm is host shared memory as on ``cpu`` (and the start-up checks count it as host memory, from
``host_tiers`` here, so they never disagree with what is built).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tierd.config import DeviceType, StoreConfig, StoreDevice
from tierd.store.transfer.base import TransferEngine
from tierd.store.transfer.cpu import CpuEngine
from tierd.store.transfer.fake import FakeDeviceEngine
from tierd.tier import MEMORY_TIERS, Tier
from tierd.tiers.base import Arena
from tierd.tiers.disk import DiskTier
from tierd.tiers.fake_device import FakeDeviceArena
from tierd.tiers.shm_arena import ShmArena

log = logging.getLogger(__name__)


def shm_tiers(device: StoreDevice) -> tuple[Tier, ...]:
    """The memory tiers whose regions are host shared memory (memfd) on this device."""
    return (Tier.DRAM,) if device.type is DeviceType.FAKE else MEMORY_TIERS


def host_tiers(device: StoreDevice) -> tuple[Tier, ...]:
    """The memory tiers whose bytes take host RAM on this device."""
    return MEMORY_TIERS


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


def open_media(config: StoreConfig, disk: DiskTier) -> Media:
    """The arenas and engine of ``config.device``, over the (open) disk tier."""
    device = config.device
    readers = config.disk.reader_threads
    dram = _shm(config, Tier.DRAM)
    if device.type is DeviceType.FAKE:
        hbm = FakeDeviceArena(Tier.HBM, config.hbm.capacity_bytes)
        engine: TransferEngine = FakeDeviceEngine(disk, readers, hbm, device.fake_min_delay_s,
                                                  device.fake_max_delay_s, device.fake_seed)
        return Media({Tier.HBM: hbm, Tier.DRAM: dram}, engine)
    if device.type is DeviceType.CUDA:
        log.warning("hbm of %s is host shared memory: the CUDA arena and engine are not built yet",
                    device)
    return Media({Tier.HBM: _shm(config, Tier.HBM), Tier.DRAM: dram}, CpuEngine(disk, readers))
