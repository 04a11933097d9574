"""A real CUDA IPC region on a GPU: this process plays the daemon (a raw cudaMalloc, exported),
a child process maps it through two views, writes a slot with torch and exits; the write is in the
parent's memory and the child opened and closed the handle once. Skipped without a GPU and CuPy."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from tierd_client import PageSpec

SPEC = PageSpec(model="m@1", dtype="bfloat16", num_layers=2, num_kv_heads=2, head_dim=64,
                page_tokens=16)
NUM_SLOTS = 4
CHILD_TIMEOUT_S = 120

CHILD = f"""
import gc, sys
from tierd.handles import HandleKind, RegionHandle
from tierd.tier import Tier
from tierd_client import PageSpec, cuda_ipc
from tierd_client.arena import ArenaView

spec = PageSpec(model="m@1", dtype="bfloat16", num_layers={SPEC.num_layers},
                num_kv_heads={SPEC.num_kv_heads}, head_dim={SPEC.head_dim}, page_tokens={SPEC.page_tokens})
handle = RegionHandle(tier=Tier.HBM, kind=HandleKind.CUDA_IPC, name="gpu-test", offset_bytes=0,
                      size_bytes=int(sys.argv[2]), page_bytes=spec.page_bytes, num_slots={NUM_SLOTS},
                      device="cuda:0", ipc_handle=bytes.fromhex(sys.argv[1]))
first, second = ArenaView(handle, spec), ArenaView(handle, spec)
tensor = second.torch()
assert tensor.is_cuda and tuple(tensor.shape) == second.shape, (tensor.device, tensor.shape)
tensor[1].fill_(1.5)
cuda_ipc.synchronize([0])
first.close()
second.close()
del tensor
gc.collect()
registry = cuda_ipc.registry()
print(f"opened={{registry.opened}}", f"closed={{registry.closed}}", f"open={{registry.num_open()}}")
"""


def _gpu_missing() -> str | None:
    if importlib.util.find_spec("cupy") is None:
        return "needs CuPy (pip install 'tierd[cuda]')"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False)"
    return None


@pytest.mark.cuda
@pytest.mark.skipif(_gpu_missing() is not None, reason=str(_gpu_missing()))
def test_a_child_process_maps_writes_and_unmaps_a_real_ipc_region() -> None:
    import cupy

    runtime = cupy.cuda.runtime
    size_bytes = NUM_SLOTS * SPEC.page_bytes
    with cupy.cuda.Device(0):
        ptr = runtime.malloc(size_bytes)
        try:
            runtime.memset(ptr, 0, size_bytes)
            ipc_handle = bytes(runtime.ipcGetMemHandle(ptr))
            child = subprocess.run([sys.executable, "-c", CHILD, ipc_handle.hex(), str(size_bytes)],
                                   capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
            assert child.returncode == 0, child.stderr
            assert child.stdout.split() == ["opened=1", "closed=1", "open=0"]
            host = np.empty(size_bytes, dtype=np.uint8)
            runtime.memcpy(host.ctypes.data, ptr, size_bytes, runtime.memcpyDeviceToHost)
        finally:
            runtime.free(ptr)  # only after the child, the importer, has exited
    slots = host.reshape(NUM_SLOTS, SPEC.page_bytes)
    written = torch.frombuffer(bytearray(slots[1].tobytes()), dtype=torch.bfloat16)
    assert written.eq(1.5).all()
    assert not slots[0].any() and not slots[2:].any()
