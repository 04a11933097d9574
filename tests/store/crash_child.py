"""Child process of the crash test: puts ``num_pages`` pages from index ``start`` in write_through
mode, printing the indices of each batch once ``wait_durable`` says it is on disk, then prints
``done`` and waits to be killed. The parent SIGKILLs it after a random number of batches."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from cuda_fake_runtime import FakeCudaRuntime
from store_helpers import CUDA_FAKE, SPEC, small_config
from test_crash import BATCH_PAGES, DISK_PAGES, page_bytes_for, page_key

from tierd.config import WritePolicy
from tierd.store import PageStore

IDLE_S = 3600.0


def main() -> None:
    data_dir, start, num_pages, device = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    cfg = small_config(data_dir, hbm_pages=4, dram_pages=24, disk_pages=DISK_PAGES,
                       write_policy=WritePolicy.WRITE_THROUGH, device=device)
    cfg = cfg.with_changes(disk=replace(cfg.disk, fsync=True))
    # cuda-fake: the strict fake CUDA runtime in this process (the parent's patch is not here).
    store = PageStore(cfg, cuda_runtime=FakeCudaRuntime() if device == CUDA_FAKE else None)
    store.open()
    ns = store.register(SPEC)
    print("ready", flush=True)
    for i in range(start, start + num_pages, BATCH_PAGES):
        idx = list(range(i, min(i + BATCH_PAGES, start + num_pages)))
        result = store.put(ns.ns_id, [page_key(ns, k) for k in idx], [page_bytes_for(k) for k in idx])
        if store.wait_durable(result.durable_ticket, timeout_s=60):
            print(" ".join(map(str, idx)), flush=True)
    print("done", flush=True)
    time.sleep(IDLE_S)


if __name__ == "__main__":
    main()
