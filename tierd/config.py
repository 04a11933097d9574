"""Store configuration: one frozen value, built once and passed to every component.

Every threshold, size, batch limit and policy the store uses comes from here; the daemon's
config (TOML, ``TIERD_*`` environment, flags) composes a ``StoreConfig``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tierd.errors import ConfigError
from tierd.spec import MAX_PAGE_BYTES
from tierd.tier import Tier

MAX_PORT = 65535


class WritePolicy(enum.Enum):
    """When committed pages reach disk."""

    WRITE_BACK = "write_back"        # on eviction from dram (and on flush/close)
    WRITE_THROUGH = "write_through"  # queued for disk as soon as committed


class EvictionPolicy(enum.Enum):
    """How victims are chosen inside one tier (``tierd.policies``)."""

    LRU = "lru"
    # Leaves of cached chains first (broken chains before them), LRU among them (tierd.policies.prefix_aware).
    PREFIX_AWARE = "prefix_aware"


class DeviceType(enum.Enum):
    """What holds ``hbm``: picks the arenas and the transfer engine (``tierd.store.media``)."""

    CPU = "cpu"    # host shared memory, memcpy
    FAKE = "fake"  # the strict fake device of the tests: no host view, delayed completion
    CUDA = "cuda"  # GPU memory on CUDA streams


@dataclass(frozen=True)
class StoreDevice:
    """The resolved device of the store: ``cpu``, ``fake`` or ``cuda:N``.

    The ``fake_*`` fields matter for ``fake`` only: each batch of device copies completes after a
    delay drawn uniformly from ``[fake_min_delay_s, fake_max_delay_s]`` with ``fake_seed``.
    """

    type: DeviceType = DeviceType.CPU
    index: int = 0
    fake_min_delay_s: float = 0.0002
    fake_max_delay_s: float = 0.002
    fake_seed: int = 0

    @classmethod
    def parse(cls, text: str) -> StoreDevice:
        """``cpu``, ``fake``, ``cuda`` or ``cuda:N``; ``ValueError`` names the forms."""
        name, sep, index = str(text).strip().lower().partition(":")
        if name == "cuda" and (not sep or index.isdigit()):
            return cls(DeviceType.CUDA, int(index or 0))
        if not sep and name in ("cpu", "fake"):
            return cls(DeviceType(name))
        raise ValueError(f"expected cpu, fake, cuda or cuda:N, got {text!r}")

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.type is DeviceType.CUDA else self.type.value


@dataclass(frozen=True)
class MemoryTierConfig:
    """An ``hbm`` or ``dram`` tier: a byte budget shared by per-namespace regions.

    Watermarks are fractions of a region's slots: above ``high_watermark`` used, background
    eviction demotes least-recently-used pages until ``low_watermark`` is reached.
    """

    capacity_bytes: int
    high_watermark: float = 0.90
    low_watermark: float = 0.75
    # A namespace without a tenant quota gets this share of the tier's still unassigned bytes.
    region_share: float = 0.5


@dataclass(frozen=True)
class DiskConfig:
    """The ``disk`` tier: one LMDB environment under ``StoreConfig.data_dir``."""

    capacity_bytes: int
    high_watermark: float = 0.95
    low_watermark: float = 0.85
    # LMDB's map is larger than the budget: B-tree pages, headers and free-list fragmentation.
    map_headroom: float = 0.5
    map_min_extra_bytes: int = 64 << 20
    # Group commit: one transaction takes up to this many pages / bytes, or waits this long.
    writer_batch_pages: int = 256
    writer_batch_bytes: int = 256 << 20
    writer_linger_s: float = 0.002
    writer_queue_pages: int = 4096
    reader_threads: int = 4
    # When LMDB's map fills before the byte budget does (fragmentation), the budget drops to this
    # fraction of the bytes stored and eviction brings the disk under it.
    map_full_budget_factor: float = 0.9
    # fsync on every commit (durability of acknowledged pages); False only for throwaway caches.
    fsync: bool = True


def require_positive(values: dict[str, float]) -> None:
    """``ConfigError`` naming the first setting (by its config name) that is not above 0."""
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")


def require_non_negative(values: dict[str, float]) -> None:
    """``ConfigError`` naming the first setting (by its config name) that is below 0."""
    for name, value in values.items():
        if value < 0:
            raise ConfigError(f"{name} must not be negative, got {value}")


class RemoteWriteOn(enum.Enum):
    """When pages are queued for the remote tier."""

    COMMIT = "commit"  # when a put or commit publishes them
    DEMOTE = "demote"  # when they leave dram (read back from disk by the remote writer)


@dataclass(frozen=True)
class RemoteConfig:
    """The ``remote`` tier: a Redis Cluster (or Valkey) shared by nodes; off while ``nodes`` is empty.

    ``timeout_s`` bounds every batch of remote reads or writes; after a failure the tier answers
    misses for ``retry_after_s`` without trying. The password is read from ``password_file`` when
    the store opens (never written in the TOML).
    """

    nodes: tuple[str, ...] = ()           # seed nodes, HOST:PORT
    write_on: RemoteWriteOn = RemoteWriteOn.COMMIT
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    connect_timeout_s: float = 1.0
    timeout_s: float = 0.5
    retry_after_s: float = 2.0
    # A page found missing is not asked about again for this long (0: always ask), at most
    # miss_cache_pages of them remembered.
    miss_cache_s: float = 1.0
    miss_cache_pages: int = 65536
    # Pages waiting to be written; when full, new ones are dropped (and counted).
    queue_pages: int = 1024
    # One backend call moves at most this many pages / bytes.
    batch_pages: int = 16
    batch_bytes: int = 64 << 20
    writer_threads: int = 2

    @property
    def enabled(self) -> bool:
        return bool(self.nodes)

    def validate(self, disk_capacity_bytes: int) -> None:
        """Raise ``ConfigError`` naming the first ``remote.*`` setting that cannot work."""
        for node in self.nodes:
            host, sep, port = node.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) <= MAX_PORT:
                raise ConfigError(f"remote.nodes: {node!r} is not HOST:PORT (e.g. 10.0.0.5:6379)")
        positive = {"remote.connect_timeout_s": self.connect_timeout_s,
                    "remote.timeout_s": self.timeout_s, "remote.queue_pages": self.queue_pages,
                    "remote.batch_pages": self.batch_pages, "remote.batch_size": self.batch_bytes,
                    "remote.writer_threads": self.writer_threads,
                    "remote.miss_cache_pages": self.miss_cache_pages}
        require_positive(positive)
        require_non_negative({"remote.retry_after_s": self.retry_after_s,
                              "remote.miss_cache_s": self.miss_cache_s})
        if not self.tls and any(f is not None for f in (self.tls_ca_file, self.tls_cert_file,
                                                        self.tls_key_file)):
            raise ConfigError("remote.tls_ca_file / tls_cert_file / tls_key_file need remote.tls = true")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("remote.tls_cert_file and remote.tls_key_file go together: set both or neither")
        if self.enabled and self.write_on is RemoteWriteOn.DEMOTE and disk_capacity_bytes == 0:
            raise ConfigError("remote.write_on = \"demote\" reads pages back from disk, but the disk "
                              "tier is off (disk.capacity = 0): use write_on = \"commit\"")


@dataclass(frozen=True)
class StoreConfig:
    """Everything the page store needs; see the README's config reference for each field."""

    data_dir: Path
    hbm: MemoryTierConfig
    dram: MemoryTierConfig
    disk: DiskConfig
    write_policy: WritePolicy = WritePolicy.WRITE_BACK
    eviction_policy: EvictionPolicy = EvictionPolicy.LRU
    # What holds hbm (the daemon resolves --device into this before opening the store).
    device: StoreDevice = StoreDevice()
    lease_ttl_s: float = 30.0
    max_lease_ttl_s: float = 600.0
    # Acquire/Allocate wait at most this long for pages to move or slots to free (unless told).
    acquire_timeout_s: float = 30.0
    # A put copies and publishes at most this many pages per step, so a large put never needs
    # more free slots at once than a region can make.
    put_batch_pages: int = 256
    # Background maintenance (eviction to watermarks, lease expiry) wakes at least this often.
    maintenance_interval_s: float = 0.05
    # Copies between memory tiers and disk reads run on this many threads.
    mover_threads: int = 4
    # Per-tenant byte quotas per tier: {"tenant": {Tier.HBM: bytes, ...}}.
    tenant_quotas: dict[str, dict[Tier, int]] = field(default_factory=dict)
    # Names of shared-memory segments start with this (one per store instance and region).
    shm_prefix: str = "tierd"
    # Touch every arena page at region creation: fresh shm pages write 3-5x slower than touched ones.
    prefault: bool = True
    # Close waits this long for the flush of dirty pages to disk.
    flush_timeout_s: float = 120.0
    # Register refuses specs of larger pages (at most tierd.spec.MAX_PAGE_BYTES).
    max_page_bytes: int = 256 << 20
    # Namespaces are kept for good (on disk too): how many one tenant, and all together, may register.
    max_namespaces_per_tenant: int = 64
    max_namespaces: int = 1024
    remote: RemoteConfig = RemoteConfig()
    # On a CUDA device: page-lock dram (cudaHostRegister) so dram <-> hbm copies run at DMA speed.
    pin_dram: bool = True
    # cudaHostRegister takes a region at most this many bytes per call (r580+ drivers refuse
    # single calls of 512 GiB and more).
    cuda_register_chunk_bytes: int = 16 << 30
    # Page-locked bytes the CUDA engine stages hbm pages through on their way to disk.
    cuda_staging_bytes: int = 64 << 20
    # The CUDA engine merges at most this many queued copies of a lane into one submission.
    cuda_batch_pages: int = 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        self.validate()

    def tier_capacity_bytes(self, tier: Tier) -> int:
        """The tier's byte budget; 0 for ``remote``, whose size is the cluster's business."""
        return {Tier.HBM: self.hbm.capacity_bytes, Tier.DRAM: self.dram.capacity_bytes,
                Tier.DISK: self.disk.capacity_bytes}.get(tier, 0)

    def memory_tier(self, tier: Tier) -> MemoryTierConfig:
        if tier is Tier.HBM:
            return self.hbm
        if tier is Tier.DRAM:
            return self.dram
        raise ValueError(f"{tier.label} is not a memory tier")

    def with_changes(self, **changes: Any) -> StoreConfig:
        """A copy with ``changes`` (field names as keywords), validated again."""
        return replace(self, **changes)

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first field that cannot work."""
        for name, tier in (("hbm", self.hbm), ("dram", self.dram), ("disk", self.disk)):
            if tier.capacity_bytes < 0:
                raise ConfigError(f"{name} capacity must not be negative, got {tier.capacity_bytes}")
            if not 0.0 < tier.low_watermark <= tier.high_watermark <= 1.0:
                raise ConfigError(f"{name} watermarks need 0 < low <= high <= 1, got low="
                                  f"{tier.low_watermark} high={tier.high_watermark}")
        if not 0.0 < self.disk.map_full_budget_factor < 1.0:
            raise ConfigError(f"disk.map_full_budget_factor must be in (0, 1), got "
                              f"{self.disk.map_full_budget_factor}")
        for name, mem in (("hbm", self.hbm), ("dram", self.dram)):
            if not 0.0 < mem.region_share <= 1.0:
                raise ConfigError(f"{name}.region_share must be in (0, 1], got {mem.region_share}")
        if self.dram.capacity_bytes == 0:
            raise ConfigError("dram capacity must be above 0: every page passes through dram")
        positive = {"lease_ttl_s": self.lease_ttl_s, "max_lease_ttl_s": self.max_lease_ttl_s,
                    "acquire_timeout_s": self.acquire_timeout_s,
                    "put_batch_pages": self.put_batch_pages,
                    "maintenance_interval_s": self.maintenance_interval_s,
                    "mover_threads": self.mover_threads, "flush_timeout_s": self.flush_timeout_s,
                    "max_page_bytes": self.max_page_bytes,
                    "max_namespaces_per_tenant": self.max_namespaces_per_tenant,
                    "max_namespaces": self.max_namespaces,
                    "disk.writer_batch_pages": self.disk.writer_batch_pages,
                    "disk.writer_batch_bytes": self.disk.writer_batch_bytes,
                    "disk.writer_queue_pages": self.disk.writer_queue_pages,
                    "disk.reader_threads": self.disk.reader_threads,
                    "cuda_register_chunk_bytes": self.cuda_register_chunk_bytes,
                    "cuda_staging_bytes": self.cuda_staging_bytes,
                    "cuda_batch_pages": self.cuda_batch_pages}
        require_positive(positive)
        require_non_negative({"disk.map_headroom": self.disk.map_headroom,
                              "disk.map_min_extra_bytes": self.disk.map_min_extra_bytes,
                              "disk.writer_linger_s": self.disk.writer_linger_s})
        if not 0 <= self.device.fake_min_delay_s <= self.device.fake_max_delay_s:
            raise ConfigError(f"device fake delays need 0 <= min <= max, got "
                              f"{self.device.fake_min_delay_s} and {self.device.fake_max_delay_s}")
        if self.max_page_bytes > MAX_PAGE_BYTES:
            raise ConfigError(f"store.max_page_size ({self.max_page_bytes} bytes) exceeds the "
                              f"largest page tierd takes ({MAX_PAGE_BYTES} bytes): lower it")
        if self.lease_ttl_s > self.max_lease_ttl_s:
            raise ConfigError(f"lease_ttl_s ({self.lease_ttl_s}) exceeds max_lease_ttl_s "
                              f"({self.max_lease_ttl_s})")
        self.remote.validate(self.disk.capacity_bytes)
        if not self.shm_prefix.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"shm_prefix may hold letters, digits, '-' and '_' only, got "
                              f"{self.shm_prefix!r}")
