#!/usr/bin/env python3
"""tierd's local data paths next to Redis and the shared-memory copy ceiling, in one run.

Starts a real tierd daemon (the venv's ``tierd``, a temp config, CPU arenas), a ``redis-server``
(unix socket only, persistence off) and client processes, then measures for each page size and
client count, one page per call: the shm copy ceiling (a page copied out of / into a mapped
memfd), Redis GET/SET, tierd's byte path (``ClientOptions(local_data_path=False)``), its zero-copy
lease path (Acquire + copy + Release; Allocate + copy + Commit) and its local path (default
``TierClient``: ``get_into``, ``get``, ``put``). Per row: aggregate GB/s, p50/p99 ms per call, the
server's CPU-seconds per GB (utime+stime from /proc around each timed loop), ratios vs Redis and
vs the ceiling. Every figure is the median of ``--reps`` runs; every run is checked bit-exact
after its timed loop. A row that fails is reported as failed and the others go on.

    python benchmarks/local.py --quick            # smoke test, seconds
    python benchmarks/local.py --json out.json    # table, and the numbers in out.json
    python benchmarks/local.py --json             # one JSON object on stdout instead of the table

Redis rows need ``apt-get install redis-server`` and ``pip install 'redis[hiredis]'``; without
them they are skipped (or, when asked for with ``--paths redis``, the run exits 2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from local_servers import Server, cpu_seconds, machine, redis_missing, start_redis, start_tierd
from local_worker import Pool, Timing, WorkerError

KiB, MiB = 1024, 1024**2
ALL_PATHS = ("ceiling", "redis", "byte", "byte-grpc", "zero-copy", "local")
OPS = {"ceiling": ("put", "get"), "redis": ("put", "get"), "byte": ("put", "get"),
       "byte-grpc": ("put", "get"), "zero-copy": ("put", "get"), "local": ("put", "get_into", "get")}
LABELS = {"ceiling": "shm copy (ceiling)", "redis": "Redis GET/SET", "byte": "tierd byte path",
          "byte-grpc": "tierd byte path, gRPC", "zero-copy": "tierd zero-copy", "local": "tierd local"}
QUICK_TOTAL_MIB = 8
TIER_HEADROOM = 2  # dram and hbm hold twice the working set: no timed put waits on an eviction


@dataclass
class Row:
    """One (path, op, page size, clients) figure: medians over the runs; ``error`` when it failed."""

    path: str
    op: str
    page_bytes: int
    clients: int
    bytes_per_run: int = 0
    gbps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_cpu_s_per_gb: float | None = None
    client_cpu_s_per_gb: float | None = None
    vs_redis: float | None = None
    vs_ceiling: float | None = None
    check: str = "not run"
    error: str | None = None
    runs_gbps: list[float] = field(default_factory=list)

    @property
    def direction(self) -> str:
        return "put" if self.op == "put" else "get"

    @property
    def ok(self) -> bool:
        return self.error is None and self.gbps is not None


def measure_run(pool: Pool, k: int, op: str, rep: int, server: Server | None,
                bytes_per_run: int) -> tuple[dict[str, float | None], list[str]]:
    """One timed run on ``k`` workers: its figures and the problems its check found."""
    pool.call(k, "prepare", (op, rep))
    pids = pool.pids[:k]
    server_0 = cpu_seconds(server.pid) if server else 0.0
    client_0 = sum(cpu_seconds(pid) for pid in pids)
    timings: list[Timing] = pool.call(k, "run", op)
    server_1 = cpu_seconds(server.pid) if server else 0.0
    client_1 = sum(cpu_seconds(pid) for pid in pids)
    problems = [p for p in pool.call(k, "check", op) if p]  # after the CPU sample: not counted
    seconds = max(t.end_s for t in timings) - min(t.start_s for t in timings)
    latencies_ms = np.concatenate([t.latencies_ns for t in timings]) / 1e6
    gb = bytes_per_run / 1e9
    return {"gbps": gb / seconds, "p50_ms": float(np.percentile(latencies_ms, 50)),
            "p99_ms": float(np.percentile(latencies_ms, 99)),
            "server_cpu_s_per_gb": (server_1 - server_0) / gb if server else None,
            "client_cpu_s_per_gb": (client_1 - client_0) / gb}, problems


def measure_op(pool: Pool, row: Row, reps: int, server: Server | None) -> None:
    """Fill ``row`` with the medians of ``reps`` runs (``row.error`` if a command failed)."""
    runs: list[dict[str, float | None]] = []
    failed: list[str] = []
    try:
        for rep in range(reps):
            figures, problems = measure_run(pool, row.clients, row.op, rep, server, row.bytes_per_run)
            runs.append(figures)
            failed += [f"run {rep + 1}: {p}" for p in problems]
    except WorkerError as exc:
        row.error = str(exc)
        return
    for name in ("gbps", "p50_ms", "p99_ms", "server_cpu_s_per_gb", "client_cpu_s_per_gb"):
        values = [run[name] for run in runs]
        setattr(row, name, None if None in values else statistics.median(v for v in values if v is not None))
    row.runs_gbps = [run["gbps"] or 0.0 for run in runs]
    row.check = "ok" if not failed else f"FAILED: {failed[0]}" + (f" (+{len(failed) - 1} more)"
                                                                 if len(failed) > 1 else "")


def measure_path(pool: Pool, path: str, page_bytes: int, clients: int, total_bytes: int, reps: int,
                 server: Server | None) -> list[Row]:
    """Every op of ``path``: puts first, so the gets read pages the puts left resident."""
    pages_per_client = max(1, total_bytes // clients // page_bytes)
    rows = [Row(path, op, page_bytes, clients, bytes_per_run=pages_per_client * clients * page_bytes)
            for op in OPS[path]]
    socket = str(server.socket_path) if server else None
    try:
        pool.call(clients, "open", (path, page_bytes, pages_per_client, socket))
    except WorkerError as exc:
        for row in rows:
            row.error = str(exc)
    else:
        for row in rows:
            measure_op(pool, row, reps, server)
    try:
        pool.call(clients, "close")
    except WorkerError as exc:
        print(f"warning: closing {path} ({page_bytes // KiB} KiB, {clients} clients): {exc}", file=sys.stderr)
    return rows


def measure_size(pool: Pool, page_bytes: int, args: argparse.Namespace, redis: Server | None,
                 work_dir: Path) -> tuple[list[Row], str]:
    """All rows of one page size, against a daemon of its own sized for that working set."""
    total_bytes = args.total_mib * MiB
    rows: list[Row] = []
    tierd: Server | None = None
    version = ""
    if {"byte", "byte-grpc", "zero-copy", "local"} & set(args.paths):
        tier_bytes = TIER_HEADROOM * (total_bytes + max(args.clients) * page_bytes)
        try:
            tierd = start_tierd(work_dir / f"tierd-{page_bytes // KiB}k", tier_bytes)
            version = tierd.version
        except RuntimeError as exc:
            print(f"tierd did not start: {exc}", file=sys.stderr)
    try:
        for clients in args.clients:
            for path in args.paths:
                server = {"ceiling": None, "redis": redis}.get(path, tierd)
                if server is None and path != "ceiling":
                    error = f"{'redis-server' if path == 'redis' else 'tierd'} did not start (see stderr)"
                    rows += [Row(path, op, page_bytes, clients, error=error) for op in OPS[path]]
                    continue
                rows += measure_path(pool, path, page_bytes, clients, total_bytes, args.reps, server)
                print(f"  done: {page_bytes // KiB} KiB, {clients} client(s), {path}", file=sys.stderr)
    finally:
        if tierd is not None:
            tierd.stop()
    return rows, version


def add_ratios(rows: list[Row]) -> None:
    """vs Redis / vs the ceiling: same direction, page size and client count."""
    def base(path: str, row: Row) -> Row | None:
        return next((r for r in rows if r.path == path and r.direction == row.direction
                     and r.page_bytes == row.page_bytes and r.clients == row.clients and r.ok), None)

    for row in rows:
        if not row.ok or row.gbps is None:
            continue
        for path, attr in (("redis", "vs_redis"), ("ceiling", "vs_ceiling")):
            other = base(path, row)
            if other is not None and other.gbps:
                setattr(row, attr, row.gbps / other.gbps)


def find(rows: list[Row], path: str, op: str, page_bytes: int, clients: int) -> Row | None:
    return next((r for r in rows if (r.path, r.op, r.page_bytes, r.clients) == (path, op, page_bytes, clients)
                 and r.ok), None)


def goals(rows: list[Row]) -> list[dict[str, object]]:
    """The issue's targets for the page sizes this run measured, each with its value (None: a row
    it needs failed or is absent)."""
    out: list[dict[str, object]] = []
    measured = {r.page_bytes for r in rows}

    def goal(page: int, text: str, value: float | None, target: float, at_most: bool = False) -> None:
        if page in measured:
            met = None if value is None else (value <= target if at_most else value >= target)
            out.append({"goal": f"{page // KiB} KiB, {text}", "value": value, "target": target,
                        "at_most": at_most, "met": met})

    def attr(path: str, op: str, page: int, clients: int, name: str) -> float | None:
        row = find(rows, path, op, page, clients)
        value = getattr(row, name) if row else None
        return float(value) if value is not None else None

    big, small = 2 * MiB, 512 * KiB
    goal(big, "1 client: local get_into vs Redis GET", attr("local", "get_into", big, 1, "vs_redis"), 3.0)
    goal(big, "1 client: local get_into vs ceiling", attr("local", "get_into", big, 1, "vs_ceiling"), 0.7)
    goal(big, "1 client: local put vs Redis SET", attr("local", "put", big, 1, "vs_redis"), 2.0)
    for op in ("get_into", "put"):
        goal(small, f"1 client: local {op} vs Redis", attr("local", op, small, 1, "vs_redis"), 1.0)
    for page in (small, big):
        one, four = attr("local", "get_into", page, 1, "gbps"), attr("local", "get_into", page, 4, "gbps")
        goal(page, "local get_into GB/s, 4 clients / 1 client", four / one if one and four else None, 1.0)
        for op in ("get", "put"):
            goal(page, f"1 client: byte {op} vs Redis", attr("byte", op, page, 1, "vs_redis"), 1.0)
            ours, theirs = (attr(p, op, page, 1, "server_cpu_s_per_gb") for p in ("byte", "redis"))
            goal(page, f"1 client: byte {op} daemon CPU/GB / Redis's",
                 ours / theirs if ours is not None and theirs else None, 2.0, at_most=True)
    return out


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(report: dict[str, object], rows: list[Row]) -> None:
    print(f"machine: {report['machine']['description']}")  # type: ignore[index]
    print(f"{report['tierd_version']} (cpu arenas), {report['redis_version'] or 'no Redis'}; "
          f"{report['total_mib']} MiB per figure and direction, median of {report['reps']}, one page per call")
    if report["redis_skipped"]:
        print(f"Redis rows skipped: {report['redis_skipped']}")
    header = (f"  {'path':<20} {'op':<9} {'GB/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'srv CPU':>8} "
              f"{'cli CPU':>8} {'vs Redis':>9} {'vs ceil':>8}  check")
    for page, clients in dict.fromkeys((r.page_bytes, r.clients) for r in rows):
        print(f"\n{page // KiB} KiB pages, {clients} client{'s' if clients > 1 else ''}  "
              f"(CPU: seconds per GB)\n{header}")
        for direction in ("get", "put"):
            for r in rows:
                if (r.page_bytes, r.clients, r.direction) != (page, clients, direction):
                    continue
                if r.error is not None:
                    print(f"  {LABELS[r.path]:<20} {r.op:<9} FAILED: {r.error}")
                    continue
                print(f"  {LABELS[r.path]:<20} {r.op:<9} {_fmt(r.gbps):>7} {_fmt(r.p50_ms, '.3f'):>8} "
                      f"{_fmt(r.p99_ms, '.3f'):>8} {_fmt(r.server_cpu_s_per_gb):>8} "
                      f"{_fmt(r.client_cpu_s_per_gb):>8} {_fmt(r.vs_redis, '.2f'):>9} "
                      f"{_fmt(r.vs_ceiling, '.2f'):>8}  {r.check}")
    print("\ngoals (issue 11):")
    for g in report["goals"]:  # type: ignore[attr-defined]
        mark = {True: "ok", False: "BELOW" if not g["at_most"] else "ABOVE", None: "n/a"}[g["met"]]
        sign = "<=" if g["at_most"] else ">="
        print(f"  {g['goal']:<58} {_fmt(g['value']):>6}  target {sign} {g['target']:<4} {mark}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_TOTAL_MIB} MiB per figure (seconds)")
    parser.add_argument("--total-mib", type=int, default=None,
                        help="MiB moved per figure and direction, split over the clients (default 1024)")
    parser.add_argument("--reps", type=int, default=3, help="runs per figure (median taken; default 3)")
    parser.add_argument("--page-kib", type=int, nargs="+", default=[512, 2048], help="page sizes in KiB")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4], help="client process counts")
    parser.add_argument("--paths", nargs="+", choices=ALL_PATHS, default=None,
                        help=f"paths to measure (default all: {' '.join(ALL_PATHS)})")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                        help="write the numbers to FILE; without FILE print JSON instead of the table")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the servers' files go")
    args = parser.parse_args(argv)
    args.redis_asked = args.paths is not None and "redis" in args.paths
    args.paths = list(args.paths or ALL_PATHS)
    if args.total_mib is None:
        args.total_mib = QUICK_TOTAL_MIB if args.quick else 1024
    if args.total_mib < 1 or args.reps < 1 or min(args.clients) < 1 or min(args.page_kib) < 1:
        parser.error("--total-mib, --reps, --clients and --page-kib must be positive")
    return args


def run_all(args: argparse.Namespace) -> tuple[list[Row], str, str]:
    """Every row; the client processes and redis-server live for the whole run, a daemon per page size."""
    rows: list[Row] = []
    tierd_version = ""
    with tempfile.TemporaryDirectory(prefix="tierd-bench-", dir=args.tmp_dir) as tmp:
        pool = Pool(max(args.clients))
        redis: Server | None = None
        try:
            if "redis" in args.paths:
                try:
                    redis = start_redis(Path(tmp) / "redis")
                except RuntimeError as exc:
                    print(f"redis-server did not start: {exc}", file=sys.stderr)
            for page_kib in args.page_kib:
                size_rows, version = measure_size(pool, page_kib * KiB, args, redis, Path(tmp))
                rows += size_rows
                tierd_version = tierd_version or version
        finally:
            pool.stop()
            if redis is not None:
                redis.stop()
    return rows, tierd_version, redis.version if redis else ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    redis_skipped = redis_missing() if "redis" in args.paths else None
    if redis_skipped is not None:
        if args.redis_asked:
            print(f"cannot run the Redis rows: {redis_skipped}", file=sys.stderr)
            return 2
        print(f"skipping the Redis rows: {redis_skipped}", file=sys.stderr)
        args.paths.remove("redis")
    rows, tierd_version, redis_version = run_all(args)
    add_ratios(rows)
    report: dict[str, object] = {
        "benchmark": "local", "machine": machine(), "tierd_version": tierd_version,
        "redis_version": redis_version, "redis_skipped": redis_skipped, "total_mib": args.total_mib,
        "reps": args.reps, "page_bytes": [k * KiB for k in args.page_kib], "clients": args.clients,
        "paths": args.paths, "goals": goals(rows),
        "rows": [asdict(r) | {"direction": r.direction, "ok": r.ok, "check_ok": r.check == "ok"} for r in rows]}
    if args.json == "-":
        print(json.dumps(report, indent=1))
    else:
        print_table(report, rows)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
