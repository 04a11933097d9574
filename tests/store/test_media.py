"""The arena factory and the start-up checks give one answer: which tiers live where."""

from __future__ import annotations

from pathlib import Path

import pytest
from cuda_fake_runtime import FakeCudaRuntime
from store_helpers import small_config

from tierd.config import StoreDevice
from tierd.store.media import host_tiers, open_media, shm_tiers
from tierd.store.transfer.cpu import CpuEngine
from tierd.store.transfer.cuda import CudaEngine
from tierd.store.transfer.fake import FakeDeviceEngine
from tierd.tier import MEMORY_TIERS, Tier
from tierd.tiers.base import Medium
from tierd.tiers.disk import DiskTier
from tierd.tiers.pinned import PinnedShmArena
from tierd.tiers.shm_arena import ShmArena

ENGINES = {"cpu": CpuEngine, "fake": FakeDeviceEngine, "cuda:0": CudaEngine}


@pytest.mark.parametrize("device", ["cpu", "fake", "cuda:0"])
def test_what_is_built_is_what_the_checks_count(tmp_path: Path, device: str) -> None:
    config = small_config(tmp_path).with_changes(device=StoreDevice.parse(device))
    disk = DiskTier(config)
    disk.open()
    runtime = FakeCudaRuntime()
    media = open_media(config, disk, runtime)
    try:
        built_shm = {tier for tier, arena in media.arenas.items() if isinstance(arena, ShmArena)}
        assert built_shm == set(shm_tiers(config.device))
        assert set(shm_tiers(config.device)) <= set(host_tiers(config.device)) <= set(MEMORY_TIERS)
        region = media.arenas[MEMORY_TIERS[0]].create_region(1, 1, 64)
        assert (region.medium is Medium.DEVICE) == (device != "cpu")
        assert isinstance(media.engine, ENGINES[device])
        assert media.engine.name == device.partition(":")[0]
        # Only on a GPU is dram page-locked, and hbm takes no host memory.
        assert isinstance(media.arenas[Tier.DRAM], PinnedShmArena) == (device == "cuda:0")
        assert (Tier.HBM in host_tiers(config.device)) == (device != "cuda:0")
    finally:
        media.close()
        disk.close()
        runtime.close()
    assert runtime.allocations() == {} and runtime.registered() == {}


def test_pin_dram_off_leaves_dram_pageable(tmp_path: Path) -> None:
    config = small_config(tmp_path, device="cuda:0", pin_dram=False)
    disk = DiskTier(config)
    disk.open()
    runtime = FakeCudaRuntime()
    media = open_media(config, disk, runtime)
    try:
        dram = media.arenas[Tier.DRAM]
        assert isinstance(dram, ShmArena) and not isinstance(dram, PinnedShmArena)
        assert isinstance(media.engine, CudaEngine)
    finally:
        media.close()
        disk.close()
        runtime.close()


@pytest.mark.parametrize("text, expected", [("cpu", "cpu"), ("fake", "fake"), ("cuda", "cuda:0"),
                                            ("CUDA:3", "cuda:3")])
def test_devices_parse_and_print(text: str, expected: str) -> None:
    assert str(StoreDevice.parse(text)) == expected


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "cpu:1", ""])
def test_unknown_devices_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected cpu, fake, cuda or cuda:N"):
        StoreDevice.parse(text)
