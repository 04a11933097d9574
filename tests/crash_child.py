"""Child process of the crash test: puts pages in write_through mode forever and prints the index
of every page once ``wait_durable`` says it is on disk. The parent SIGKILLs it at random."""

from __future__ import annotations

import sys
from pathlib import Path

from store_helpers import SPEC, small_config
from tierd.config import WritePolicy
from tierd.store import PageStore

from test_crash import BATCH_PAGES, DISK_PAGES, page_bytes_for, page_key


def main() -> None:
    data_dir, start = Path(sys.argv[1]), int(sys.argv[2])
    cfg = small_config(data_dir, hbm_pages=4, dram_pages=24, disk_pages=DISK_PAGES,
                       write_policy=WritePolicy.WRITE_THROUGH)
    cfg = cfg.with_changes(disk=cfg.disk.__class__(**{**cfg.disk.__dict__, "fsync": True}))
    store = PageStore(cfg)
    store.open()
    ns = store.register(SPEC)
    print("ready", flush=True)
    i = start
    while True:
        idx = list(range(i, i + BATCH_PAGES))
        result = store.put(ns.ns_id, [page_key(ns, k) for k in idx], [page_bytes_for(k) for k in idx])
        if store.wait_durable(result.durable_ticket, timeout_s=30):
            print(" ".join(map(str, idx)), flush=True)
        i += BATCH_PAGES


if __name__ == "__main__":
    main()
