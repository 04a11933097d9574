"""tierd: a node-local tiered KV-cache page store (GPU HBM, host DRAM, NVMe via LMDB).

Importing this package needs no GPU and starts nothing; CUDA code is imported lazily by the
components that use it.
"""

from tierd.config import DiskConfig, EvictionPolicy, MemoryTierConfig, StoreConfig, WritePolicy
from tierd.keys import KEY_BYTES, chain_keys, namespace_fingerprint
from tierd.spec import DType, Namespace, PageSpec
from tierd.tier import Tier

__all__ = [
    "KEY_BYTES", "DType", "DiskConfig", "EvictionPolicy", "MemoryTierConfig", "Namespace",
    "PageSpec", "StoreConfig", "Tier", "WritePolicy", "chain_keys", "namespace_fingerprint",
]
__version__ = "0.1.0"
