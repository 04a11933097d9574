"""Remote tier benchmark: tierd's Redis Cluster tier against plain redis-py on the same cluster,
and a two-node fleet sharing a prefix through it.

    python benchmarks/remote.py [--quick] [--nodes HOST:PORT,...] [--json FILE]

Without ``--nodes`` it starts a throwaway 3-master cluster on loopback (``tests/redis_cluster.py``,
redis-server from the OS). Rows, per page size (512 KiB, 2 MiB), measured side by side in one run:

- ``redis-py``: ``RedisCluster`` SET / GET of the same bytes, one key per page, one page per call
  and a pipeline of ``--batch`` pages per call (the ceiling of a plain client).
- ``tierd``: ``RemoteTier.store`` / ``fetch`` through the Redis Cluster backend (header, xxh3
  checksum, two keys per page, verified before it is returned), 1 and ``--batch`` pages per call.

GB/s counts page bytes; p50/p99 are per call; every figure is the median of ``--repeat`` runs;
every page read back is compared with what was written (after the timed calls, for both).

The fleet rows: node A computes ``--requests`` requests that share a ``--prefix-pages`` prefix
(puts) and its writer publishes them; node B then serves the same requests: the fraction of the
shared prefix it finds in the remote tier instead of recomputing it, and the time to bring the
prefix into dram from there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # redis_cluster: the cluster launcher the tests use

from benchmarks.machine_info import describe  # noqa: E402
from tierd.config import DiskConfig, MemoryTierConfig, RemoteConfig, StoreConfig  # noqa: E402
from tierd.keys import chain_keys  # noqa: E402
from tierd.remote.redis_cluster import open_redis_cluster  # noqa: E402
from tierd.remote.tier import RemoteTier  # noqa: E402
from tierd.spec import PageSpec  # noqa: E402
from tierd.store import PageStore  # noqa: E402
from tierd.tier import Tier  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
BYTES_PER_GB = 1e9
TARGET_RATIO = 1.0  # tierd vs redis-py, same bytes, same cluster (issue 13)


@dataclass(frozen=True)
class Row:
    page_bytes: int
    pages_per_call: int
    client: str       # "redis-py" or "tierd"
    op: str           # "put" or "get"
    gbps: float
    p50_ms: float
    p99_ms: float


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _timed(calls: Sequence[Callable[[], None]]) -> tuple[float, list[float]]:
    """Total seconds and per-call seconds of running ``calls`` one after another."""
    per_call: list[float] = []
    started = time.perf_counter()
    for call in calls:
        t0 = time.perf_counter()
        call()
        per_call.append(time.perf_counter() - t0)
    return time.perf_counter() - started, per_call


class Workload:
    """``num_pages`` random pages of ``page_bytes`` under fresh keys, in calls of ``per_call``."""

    def __init__(self, page_bytes: int, num_pages: int, per_call: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.page_bytes = page_bytes
        self.per_call = per_call
        self.fingerprint = rng.bytes(16)
        self.keys = [rng.bytes(16) for _ in range(num_pages)]
        self.pages = [rng.bytes(page_bytes) for _ in range(num_pages)]

    def calls(self) -> Iterator[slice]:
        for start in range(0, len(self.keys), self.per_call):
            yield slice(start, start + self.per_call)


def _redis_rows(cluster: Any, load: Workload) -> tuple[tuple[float, list[float]], tuple[float, list[float]]]:
    names = [b"bench:{" + load.fingerprint.hex().encode() + key.hex().encode() + b"}"
             for key in load.keys]

    def put(part: slice) -> Callable[[], None]:
        def run() -> None:
            if load.per_call == 1:
                cluster.set(names[part][0], load.pages[part][0])
                return
            pipe = cluster.pipeline(transaction=False)
            for name, page in zip(names[part], load.pages[part]):
                pipe.set(name, page)
            pipe.execute()
        return run

    read: list[bytes] = []

    def get(part: slice) -> Callable[[], None]:
        def run() -> None:
            if load.per_call == 1:
                read.append(cluster.get(names[part][0]))
                return
            pipe = cluster.pipeline(transaction=False)
            for name in names[part]:
                pipe.get(name)
            read.extend(pipe.execute())
        return run

    parts = list(load.calls())
    timings = _timed([put(p) for p in parts]), _timed([get(p) for p in parts])
    _check(read, load.pages, "redis-py")
    return timings


def _check(read: Sequence[bytes | memoryview], pages: Sequence[bytes], who: str) -> None:
    """Every page read back is the page written (checked after the timed calls, for both)."""
    if len(read) != len(pages) or any(bytes(got) != page for got, page in zip(read, pages)):
        raise AssertionError(f"{who} read back other bytes than it wrote")


def _tierd_rows(tier: RemoteTier, load: Workload) -> tuple[tuple[float, list[float]], tuple[float, list[float]]]:
    views = [memoryview(page) for page in load.pages]

    def put(part: slice) -> Callable[[], None]:
        def run() -> None:
            if tier.store(load.fingerprint, load.keys[part], views[part]) != len(views[part]):
                raise AssertionError("the remote tier did not store every page")
        return run

    read: list[memoryview] = []

    def get(part: slice) -> Callable[[], None]:
        def run() -> None:
            read.extend(tier.fetch(load.fingerprint, load.keys[part], load.page_bytes))
        return run

    parts = list(load.calls())
    timings = _timed([put(p) for p in parts]), _timed([get(p) for p in parts])
    _check(read, load.pages, "the remote tier")
    return timings


def _row(page_bytes: int, per_call: int, client: str, op: str, runs: list[tuple[float, list[float]]],
         total_bytes: int) -> Row:
    gbps = statistics.median(total_bytes / seconds / BYTES_PER_GB for seconds, _ in runs)
    p50 = statistics.median(_percentile(calls, 0.5) for _, calls in runs) * 1e3
    p99 = statistics.median(_percentile(calls, 0.99) for _, calls in runs) * 1e3
    return Row(page_bytes, per_call, client, op, gbps, p50, p99)


def _redis_py(nodes: list[str]) -> Any:
    """A plain redis-py cluster client (the peer of the rows)."""
    from redis.cluster import ClusterNode, RedisCluster

    seeds = [ClusterNode(n.rpartition(":")[0], int(n.rpartition(":")[2]))  # type: ignore[no-untyped-call]
             for n in nodes]
    return RedisCluster(startup_nodes=seeds)


def measure(nodes: list[str], flush: Callable[[], None], args: argparse.Namespace) -> list[Row]:
    config = RemoteConfig(nodes=tuple(nodes), timeout_s=10.0, batch_pages=args.batch,
                          batch_bytes=args.batch * 2 * MiB)
    tier = RemoteTier(config, open_redis_cluster(config))
    cluster = _redis_py(nodes)
    rows: list[Row] = []
    try:
        for page_bytes in args.page_sizes:
            num_pages = max(args.batch, args.total_mib * MiB // page_bytes)
            for per_call in (1, args.batch):
                runs: dict[tuple[str, str], list[tuple[float, list[float]]]] = {}
                for repeat in range(args.repeat):
                    for client in ("redis-py", "tierd"):
                        load = Workload(page_bytes, num_pages, per_call, seed=repeat)
                        flush()
                        put, get = (_redis_rows(cluster, load) if client == "redis-py"
                                    else _tierd_rows(tier, load))
                        runs.setdefault((client, "put"), []).append(put)
                        runs.setdefault((client, "get"), []).append(get)
                for (client, op), measured in runs.items():
                    rows.append(_row(page_bytes, per_call, client, op, measured, num_pages * page_bytes))
                print(f"  done: {page_bytes // KiB} KiB, {per_call} page(s) per call", file=sys.stderr)
    finally:
        tier.close()
        cluster.close()
    return rows


@dataclass(frozen=True)
class Fleet:
    prefix_pages: int
    requests: int
    page_bytes: int
    remote_fraction_first: float   # of the shared prefix, on B's first request
    remote_fraction_all: float     # over all of B's requests (after the first it is local)
    restore_remote_ms: float       # B's first request: the prefix into dram from the remote tier
    restore_local_ms: float        # median of B's later requests: the prefix already local


def _node(root: Path, name: str, nodes: list[str], page_bytes: int, pages: int) -> PageStore:
    room = pages * page_bytes * 2
    return PageStore(StoreConfig(
        data_dir=root / name, hbm=MemoryTierConfig(room), dram=MemoryTierConfig(room),
        disk=DiskConfig(room * 2, fsync=False), prefault=False, shm_prefix=f"tdbench{name}{os.getpid()}",
        remote=RemoteConfig(nodes=tuple(nodes), timeout_s=10.0)))


def fleet(nodes: list[str], args: argparse.Namespace) -> Fleet:
    spec = PageSpec("bench-fleet@r1", "bfloat16", num_layers=8, num_kv_heads=8, head_dim=128,
                    page_tokens=16)  # 512 KiB pages
    rng = np.random.default_rng(7)
    shared = rng.integers(0, 32000, args.prefix_pages * spec.page_tokens).tolist()
    prompts = [shared + rng.integers(0, 32000, 4 * spec.page_tokens).tolist()
               for _ in range(args.requests)]
    total_pages = args.prefix_pages + 4 * args.requests
    with tempfile.TemporaryDirectory(prefix="td-fleet-") as root, \
            _node(Path(root), "a", nodes, spec.page_bytes, total_pages) as a, \
            _node(Path(root), "b", nodes, spec.page_bytes, total_pages) as b:
        ns_a, ns_b = a.register(spec), b.register(spec)
        for prompt in prompts:  # node A computes every request: its pages reach the cluster
            keys = chain_keys(ns_a.fingerprint, np.asarray(prompt, dtype=np.uint32), spec.page_tokens)
            a.put(ns_a.ns_id, keys, [rng.bytes(spec.page_bytes) for _ in keys])
        if not a.wait_remote_writes(600.0):
            raise RuntimeError("node A's remote writer did not finish")
        remote_hits, restore_ms = [], []
        for prompt in prompts:
            keys = chain_keys(ns_b.fingerprint, np.asarray(prompt, dtype=np.uint32), spec.page_tokens)
            tiers = b.lookup(ns_b.ns_id, keys[:args.prefix_pages]).tiers
            remote_hits.append(tiers.count(Tier.REMOTE))
            started = time.perf_counter()
            b.prefetch(ns_b.ns_id, keys[:args.prefix_pages], Tier.DRAM)  # fills dram from the cluster
            restore_ms.append((time.perf_counter() - started) * 1e3)
            b.put(ns_b.ns_id, keys, [rng.bytes(spec.page_bytes) for _ in keys])  # the rest: computed
    later = restore_ms[1:] or restore_ms
    return Fleet(args.prefix_pages, args.requests, spec.page_bytes,
                 remote_hits[0] / args.prefix_pages, sum(remote_hits) / (args.prefix_pages * len(prompts)),
                 restore_ms[0], statistics.median(later))


@contextmanager
def cluster_nodes(args: argparse.Namespace) -> Iterator[tuple[list[str], Callable[[], None]]]:
    """The cluster's nodes and a function that empties it (a local one is started if not given)."""
    if args.nodes:
        nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
        client = _redis_py(nodes)

        def flush() -> None:
            client.flushall(target_nodes=client.PRIMARIES)
        try:
            yield nodes, flush
        finally:
            client.close()
        return
    from redis_cluster import RedisClusterFixture, missing_reason  # type: ignore[import-not-found]
    reason = missing_reason()
    if reason is not None:
        raise SystemExit(f"cannot start a local Redis Cluster: {reason}")
    with RedisClusterFixture(maxmemory=f"{max(256, args.total_mib * 3)}mb") as local:
        yield local.nodes, local.flushall


def report(rows: list[Row], fleet_row: Fleet | None) -> dict[str, Any]:
    ratios = []
    for row in rows:
        if row.client != "tierd":
            continue
        peer = next(r for r in rows if r.client == "redis-py" and r.op == row.op
                    and r.page_bytes == row.page_bytes and r.pages_per_call == row.pages_per_call)
        ratios.append({"page_bytes": row.page_bytes, "pages_per_call": row.pages_per_call, "op": row.op,
                       "ratio": row.gbps / peer.gbps, "target": TARGET_RATIO})
    return {"machine": describe(), "rows": [asdict(r) for r in rows], "ratios": ratios,
            "fleet": None if fleet_row is None else asdict(fleet_row)}


def print_report(data: dict[str, Any]) -> None:
    print(f"machine: {data['machine']}")
    print("\n| page | pages/call | op | redis-py GB/s | tierd GB/s | tierd/redis-py | redis-py p50/p99 ms "
          "| tierd p50/p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [Row(**r) for r in data["rows"]]
    for mine in (r for r in rows if r.client == "tierd"):
        peer = next(r for r in rows if r.client == "redis-py" and r.op == mine.op
                    and r.page_bytes == mine.page_bytes and r.pages_per_call == mine.pages_per_call)
        print(f"| {mine.page_bytes // KiB} KiB | {mine.pages_per_call} | {mine.op} | {peer.gbps:.2f} | "
              f"{mine.gbps:.2f} | {mine.gbps / peer.gbps:.2f}x | {peer.p50_ms:.2f} / {peer.p99_ms:.2f} | "
              f"{mine.p50_ms:.2f} / {mine.p99_ms:.2f} |")
    fleet_row = data["fleet"]
    if fleet_row is not None:
        print(f"\nfleet: {fleet_row['requests']} requests sharing a {fleet_row['prefix_pages']}-page prefix "
              f"({fleet_row['page_bytes'] // KiB} KiB pages), computed on node A, then served on node B")
        print(f"  shared prefix served from the remote tier on B's first request: "
              f"{100 * fleet_row['remote_fraction_first']:.0f}% (recomputed: "
              f"{100 * (1 - fleet_row['remote_fraction_first']):.0f}%)")
        print(f"  prefix into B's dram: {fleet_row['restore_remote_ms']:.1f} ms from the remote tier, "
              f"{fleet_row['restore_local_ms']:.1f} ms once local")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--nodes", default="", help="HOST:PORT,... of an existing cluster (it is flushed)")
    parser.add_argument("--total-mib", type=int, default=64, help="MiB of pages per row and repeat")
    parser.add_argument("--batch", type=int, default=16, help="pages per call of the batched rows")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (the median is reported)")
    parser.add_argument("--prefix-pages", type=int, default=32, help="shared prefix of the fleet rows")
    parser.add_argument("--requests", type=int, default=8, help="requests of the fleet rows")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every row")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    args.page_sizes = [512 * KiB, 2 * MiB]
    if args.quick:
        args.total_mib, args.batch, args.repeat, args.prefix_pages, args.requests = 4, 4, 1, 4, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with cluster_nodes(args) as (nodes, flush):
        rows = measure(nodes, flush, args)
        flush()
        fleet_row = fleet(nodes, args)
    data = report(rows, fleet_row)
    print_report(data)
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
