#!/usr/bin/env python3
"""Tier throughput next to its raw ceiling, measured side by side in one run.

For 512 KiB and 2 MiB pages: dram put/get GB/s against numpy memcpy of the same bytes, and disk
put (flush: LMDB group commit + fsync) / get (LMDB read + checksum + one copy) against a plain file
written with write + fsync and read back on the same filesystem. Each figure is the median of
``--reps`` runs; ratios are tierd / ceiling. Also the index's memory per page at 1M entries and
the time to look up an 8192-key prefix.

    python benchmarks/tiers.py --quick          # < 1 minute
    python benchmarks/tiers.py --json           # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine_info import describe

from tierd.config import DiskConfig, MemoryTierConfig, StoreConfig
from tierd.index.residency import DiskResidency, MemoryResidency
from tierd.keys import chain_keys
from tierd.spec import PageSpec
from tierd.store import PageStore
from tierd.tier import Tier

KiB, MiB, GiB = 1024, 1024**2, 1024**3
TARGETS = {"dram_put": 0.7, "dram_get": 0.7, "disk_put": 0.6, "disk_get": 0.7}


def spec_for(page_bytes: int) -> PageSpec:
    """A spec whose pages are ``page_bytes``: 8 kv heads x 128 dims in bf16, layers to fit."""
    per_layer_token = 2 * 8 * 128 * 2
    page_tokens = 16
    return PageSpec("bench@r1", "bfloat16", page_bytes // (per_layer_token * page_tokens), 8, 128,
                    page_tokens)


def median_s(fn: Callable[[], None], reps: int, setup: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(reps):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_s(a: Callable[[], None], b: Callable[[], None], reps: int,
             setup_a: Callable[[], None] | None = None,
             setup_b: Callable[[], None] | None = None) -> tuple[float, float]:
    """Medians of ``a`` and ``b`` run alternately (a b, b a, ...), so both see the same machine."""
    times: dict[int, list[float]] = {0: [], 1: []}
    runs = [(0, a, setup_a), (1, b, setup_b)]
    for rep in range(reps):
        for which, fn, setup in (runs if rep % 2 == 0 else runs[::-1]):
            if setup is not None:
                setup()
            start = time.perf_counter()
            fn()
            times[which].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def steady_state_flush(store: PageStore, ns_id: int, keys: list[bytes], views: list[memoryview],
                       spec: PageSpec, file_write: Callable[[], None], reps: int) -> tuple[float, float]:
    """Disk put as a cache in steady state sees it: one flush writes ``keys``' pages from dram
    into LMDB pages freed by evictions two commits earlier (LMDB reuses freed pages from the
    second commit after the free on). Three key sets rotate; round ``r`` writes set ``r % 3`` and
    first deletes set ``(r + 1) % 3``, which round ``r + 1`` then writes into the freed space."""
    num_sets = 3
    sets = [keys] + [chain_keys(store.namespace(ns_id).fingerprint,
                                np.arange(len(keys) * spec.page_tokens) + (i + 1) * 10**7,
                                spec.page_tokens) for i in range(num_sets - 1)]
    state = {"round": 0}

    def setup() -> None:
        r = state["round"]
        store.delete(ns_id, sets[(r + 1) % num_sets])
        store.put(ns_id, sets[r % num_sets], views, Tier.DRAM)
        state["round"] = r + 1

    for _ in range(num_sets):  # warm-up: the file reaches its working size
        setup()
        store.flush()
    result = paired_s(store.flush, file_write, reps, setup_a=setup)
    for key_set in sets[1:]:
        store.delete(ns_id, key_set)
    return result


def store_config(data_dir: Path, dram_bytes: int, disk_bytes: int) -> StoreConfig:
    return StoreConfig(data_dir=data_dir, hbm=MemoryTierConfig(0),
                       dram=MemoryTierConfig(dram_bytes, high_watermark=1.0, low_watermark=1.0,
                                             region_share=1.0),
                       disk=DiskConfig(disk_bytes, fsync=True), prefault=True,
                       maintenance_interval_s=3600.0)


def bench_page_size(page_bytes: int, total_bytes: int, reps: int, root: Path) -> dict[str, float | str]:
    spec = spec_for(page_bytes)
    num_pages = total_bytes // page_bytes
    rng = np.random.default_rng(0)
    pages = rng.integers(0, 256, (num_pages, page_bytes), dtype=np.uint8)
    outs = np.empty_like(pages)
    outs.fill(1)  # touched, like the arena after prefault
    views = [memoryview(p) for p in pages]
    out_views = [memoryview(o) for o in outs]
    data_dir = root / f"store-{page_bytes}"
    raw_path = root / f"raw-{page_bytes}.bin"
    shutil.rmtree(data_dir, ignore_errors=True)

    def memcpy() -> None:
        for src, dst in zip(pages, outs):
            np.copyto(dst, src)

    def file_write() -> None:  # in place, like a cache file reusing its space
        with open(raw_path, "r+b" if raw_path.exists() else "wb", buffering=0) as f:
            for page in pages:
                f.write(page)
            os.fsync(f.fileno())

    def file_read() -> None:
        with open(raw_path, "rb", buffering=0) as f:
            for out in outs:
                f.readinto(out)

    cfg = store_config(data_dir, num_pages * page_bytes, 4 * total_bytes)
    with PageStore(cfg) as store:
        ns = store.register(spec)
        keys = chain_keys(ns.fingerprint, np.arange(num_pages * spec.page_tokens), spec.page_tokens)
        put_s, put_copy_s = paired_s(lambda: store.put(ns.ns_id, keys, views, Tier.DRAM), memcpy, reps,
                                     setup_a=lambda: store.delete(ns.ns_id, keys))
        get_s, get_copy_s = paired_s(lambda: store.get_into(ns.ns_id, keys, out_views), memcpy, reps)

        flush_s, write_s = steady_state_flush(store, ns.ns_id, keys, views, spec, file_write, reps)
    with PageStore(cfg) as store:
        ns = store.register(spec)  # after the restart every page is on disk only
        store.put(ns.ns_id, keys, views, Tier.DRAM)
        store.close()
    with PageStore(cfg) as store:
        ns = store.register(spec)
        assert store.lookup(ns.ns_id, keys).tiers == (Tier.DISK,) * num_pages
        disk_get_s, read_s = paired_s(lambda: store.get_into(ns.ns_id, keys, out_views), file_read, reps)
    assert bytes(outs[-1]) == bytes(pages[-1])
    shutil.rmtree(data_dir, ignore_errors=True)
    raw_path.unlink(missing_ok=True)
    timed = {"dram_put": (put_s, put_copy_s, "memcpy"), "dram_get": (get_s, get_copy_s, "memcpy"),
             "disk_put": (flush_s, write_s, "file_write"), "disk_get": (disk_get_s, read_s, "file_read")}
    res: dict[str, float | str] = {}
    for op, (tierd_s, ceiling_s, ceiling) in timed.items():
        res[f"{op}_gbps"] = total_bytes / tierd_s / 1e9
        res[f"{op}_ceiling_gbps"] = total_bytes / ceiling_s / 1e9
        res[f"{op}_ceiling"] = ceiling
        res[f"{op}_ratio"] = ceiling_s / tierd_s
    return res


def index_bytes_per_page(num_entries: int) -> dict[str, float]:
    """Bytes of index (keys included) per page, for pages on disk and pages in a memory tier."""
    out = {}
    gc.collect()
    tracemalloc.start()
    disk = DiskResidency()
    for i in range(num_entries):
        disk.add(i.to_bytes(4, "big") + os.urandom(16), 528 * KiB)
    out["index_disk_bytes_per_page"] = tracemalloc.get_traced_memory()[0] / num_entries
    tracemalloc.stop()
    del disk
    gc.collect()
    tracemalloc.start()
    mem = MemoryResidency(num_entries)
    slots = mem.reserve(num_entries)
    for slot in slots:
        mem.begin_store(os.urandom(16), slot)
    for key in list(mem.pending):
        mem.complete_store(key, True)
    out["index_memory_bytes_per_page"] = tracemalloc.get_traced_memory()[0] / num_entries
    tracemalloc.stop()
    return out


def lookup_ms(root: Path, num_keys: int, reps: int) -> float:
    spec = PageSpec("bench-lookup@r1", "float16", 1, 1, 8, 16)  # 512-byte pages
    cfg = store_config(root / "lookup", 2 * num_keys * spec.page_bytes, 64 * MiB)
    with PageStore(cfg) as store:
        ns = store.register(spec)
        keys = chain_keys(ns.fingerprint, np.arange(num_keys * spec.page_tokens), spec.page_tokens)
        store.put(ns.ns_id, keys, [bytes(spec.page_bytes)] * num_keys)
        result = median_s(lambda: store.lookup(ns.ns_id, keys), reps) * 1e3
    shutil.rmtree(root / "lookup", ignore_errors=True)
    return result


def machine() -> str:
    return describe()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer runs (< 1 min)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--data-dir", type=Path, default=Path("var/bench"),
                        help="scratch directory on the filesystem to measure (default var/bench)")
    parser.add_argument("--reps", type=int, default=None, help="runs per figure (median taken)")
    args = parser.parse_args(argv)
    total_bytes = (64 if args.quick else 512) * MiB
    reps = args.reps or (3 if args.quick else 5)
    entries = 200_000 if args.quick else 1_000_000
    args.data_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {"machine": machine(), "filesystem_dir": str(args.data_dir.resolve()),
                                 "bytes_per_measurement": total_bytes, "reps": reps, "targets": TARGETS}
    for page_bytes in (512 * KiB, 2 * MiB):
        report[f"page_{page_bytes // KiB}KiB"] = bench_page_size(page_bytes, total_bytes, reps, args.data_dir)
    report.update(index_bytes_per_page(entries))
    report["index_entries"] = entries
    report["lookup_8192_ms"] = lookup_ms(args.data_dir, 8192, 21)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)
    return 0


def print_table(report: dict) -> None:
    print(f"machine: {report['machine']}\nscratch: {report['filesystem_dir']}  "
          f"({report['bytes_per_measurement'] // MiB} MiB per figure, median of {report['reps']})\n")
    print(f"{'page':>8} {'op':>9} {'tierd GB/s':>11} {'ceiling GB/s':>13} {'ratio':>6} {'target':>7}")
    for page_key in ("page_512KiB", "page_2048KiB"):
        row = report[page_key]
        for op, target in TARGETS.items():
            ratio = row[f"{op}_ratio"]
            mark = "ok" if ratio >= target else "BELOW"
            print(f"{page_key[5:]:>8} {op:>9} {row[f'{op}_gbps']:>11.2f} {row[f'{op}_ceiling_gbps']:>13.2f} "
                  f"{ratio:>6.2f} {target:>5.2f} {mark}  (ceiling: {row[f'{op}_ceiling']})")
    print(f"\nindex memory per page ({report['index_entries']:,} entries): "
          f"{report['index_disk_bytes_per_page']:.0f} B on disk, "
          f"{report['index_memory_bytes_per_page']:.0f} B in a memory tier (target <= 256)")
    print(f"lookup of an 8192-key prefix: {report['lookup_8192_ms']:.2f} ms (target <= 5 ms)")


if __name__ == "__main__":
    sys.exit(main())
