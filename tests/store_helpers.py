"""Shared builders for page-store tests: small configs, specs, keys and random pages."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tierd.config import DiskConfig, MemoryTierConfig, StoreConfig, StoreDevice, WritePolicy
from tierd.keys import chain_keys
from tierd.spec import Namespace, PageSpec

# The store tests run on all three: the CPU engine; the strict fake device (no host view of hbm,
# copies landing 0.2-2 ms after they are submitted, over sentinel-filled slots); and the CUDA
# arena, pinned dram and CUDA engine over the strict fake CUDA runtime (tests/cuda_fake_runtime.py:
# the device "cuda-fake" is cuda:0 with that runtime, see tests/store/conftest.py).
DEVICES = ("cpu", "fake", "cuda-fake")
CUDA_FAKE = "cuda-fake"

# 2 layers x 2 (K,V) x 16 tokens x 2 heads x 64 dims x fp16 = 16 KiB pages.
SPEC = PageSpec("tiny@r1", "float16", num_layers=2, num_kv_heads=2, head_dim=64, page_tokens=16)


def small_config(data_dir: Path, hbm_pages: int = 8, dram_pages: int = 16, disk_pages: int = 256,
                 write_policy: WritePolicy = WritePolicy.WRITE_BACK, device: str = "cpu",
                 **changes: object) -> StoreConfig:
    """A store whose first namespace gets exactly ``hbm_pages``/``dram_pages`` slots."""
    page = SPEC.page_bytes
    cfg = StoreConfig(
        data_dir=data_dir,
        hbm=MemoryTierConfig(hbm_pages * page, region_share=1.0),
        dram=MemoryTierConfig(dram_pages * page, region_share=1.0),
        disk=DiskConfig(disk_pages * (page + 64), fsync=False, writer_linger_s=0.0005),
        write_policy=write_policy,
        prefault=False,
        maintenance_interval_s=0.01,
        acquire_timeout_s=10.0,
        flush_timeout_s=30.0,
        device=StoreDevice.parse("cuda:0" if device == CUDA_FAKE else device),
    )
    return cfg.with_changes(**changes) if changes else cfg


def make_keys(ns: Namespace, num_pages: int, start_token: int = 0) -> list[bytes]:
    tokens = np.arange(start_token, start_token + num_pages * ns.spec.page_tokens, dtype=np.uint32)
    return chain_keys(ns.fingerprint, tokens, ns.spec.page_tokens)


def make_pages(ns: Namespace, num_pages: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, ns.page_bytes, dtype=np.uint8).tobytes() for _ in range(num_pages)]
