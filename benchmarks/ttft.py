#!/usr/bin/env python3
"""Time to first token of a transformers decoder with and without tierd, prefix from dram and disk.

A Llama-shaped model with random weights (fixed seed, no model hub; big enough on CPU that the
prefill dominates) answers one token to a prompt of each length, three ways: recomputed by plain
``model.generate``; through ``tiered_generation`` with the prompt's pages in tierd's dram (saved by
an earlier turn); and the same after a daemon restart, so the pages come from its disk tier (the
data files are dropped from the OS page cache first, unless ``--warm-disk``). TTFT runs from the
call to ``generate`` until its streamer receives the first new token, so a restore, the prefill of
the uncached tail and the first decode step are all inside it; the save of new pages after it is
not. Every figure is the median of ``--reps`` rounds, each round one run of every way (so a
load that comes and goes weighs on all three alike); the first token of every run is checked
against the recompute's, and each tierd run's restore against the tier it was meant to read.

    python benchmarks/ttft.py --quick            # smoke test, seconds
    python benchmarks/ttft.py                    # 1K, 4K and 16K tokens: minutes on 2 cores
    python benchmarks/ttft.py --json out.json    # the table, and the numbers in out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from llama_shape import ModelShape
from local_servers import Server, machine, start_tierd
from transformers import LlamaForCausalLM
from transformers.generation.streamers import BaseStreamer

from tierd.spec import PageSpec
from tierd.tier import Tier
from tierd_client import NamespaceHandle, TierClient
from tierd_client.hf import RestoreInfo, spec_for, tiered_generation
from tierd_client.hf.model_spec import torch_dtype

REVISION = "ttft-bench-seed0"
SEED = 0
PATHS = ("recompute", "dram", "disk")
EXPECTED_TIER = {"dram": Tier.DRAM, "disk": Tier.DISK}
TIER_HEADROOM = 1.25  # dram holds every prompt's pages with room to spare: no run evicts
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PREFETCH_POLLS, PREFETCH_POLL_S = 3000, 0.01
GOALS = ((4096, "dram", 10.0), (4096, "disk", 5.0))  # issue 12's CPU targets: TTFT ratio at 4K


FULL = ModelShape(vocab=8192, hidden=512, intermediate=1536, layers=8, heads=8, kv_heads=2)
QUICK = ModelShape(vocab=256, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2)
FULL_LENGTHS = [1024, 4096, 16384]
QUICK_LENGTHS = [64, 256]


class FirstToken(BaseStreamer):
    """A streamer that notes when ``generate`` hands it the first new token (its first ``put``
    is the prompt), and the token; the clock starts when it is made."""

    def __init__(self) -> None:
        self.started_s = time.perf_counter()
        self.at_s: float | None = None
        self.token: int | None = None
        self._puts = 0

    def put(self, value: torch.Tensor) -> None:
        self._puts += 1
        if self._puts == 2 and self.at_s is None:
            self.at_s = time.perf_counter()
            self.token = int(value.reshape(-1)[0])

    def end(self) -> None:
        pass

    def ttft_ms(self) -> float:
        if self.at_s is None:
            raise RuntimeError("generate produced no token")
        return (self.at_s - self.started_s) * 1e3


@dataclass
class Measurement:
    """One way of answering one prompt: every run's TTFT (ms) and first token; for tierd runs
    what each restore took (ms), restored (tokens) and read from which tier (pages)."""

    ttft_ms: list[float] = field(default_factory=list)
    first_tokens: list[int] = field(default_factory=list)
    restore_ms: list[float] = field(default_factory=list)
    restored_tokens: list[int] = field(default_factory=list)
    tiers: list[dict[str, int]] = field(default_factory=list)

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.ttft_ms) if self.ttft_ms else None

    @property
    def median_restore_ms(self) -> float | None:
        return statistics.median(self.restore_ms) if self.restore_ms else None

    def add(self, clock: FirstToken, restore: RestoreInfo | None = None) -> None:
        self.ttft_ms.append(clock.ttft_ms())
        assert clock.token is not None
        self.first_tokens.append(clock.token)
        if restore is not None:
            self.restore_ms.append(restore.seconds * 1e3)
            self.restored_tokens.append(restore.tokens)
            self.tiers.append({tier.label: n for tier, n in sorted(restore.pages_by_tier.items())})


@dataclass
class Row:
    """One prompt length, the three ways; ``check``: ``ok`` or what went wrong."""

    prompt_tokens: int
    paths: dict[str, Measurement] = field(default_factory=lambda: {p: Measurement() for p in PATHS})
    check: str = "not run"

    def ratio(self, path: str) -> float | None:
        """How many times lower the TTFT of ``path`` is than the recompute's (medians)."""
        base, ours = self.paths["recompute"].median_ms, self.paths[path].median_ms
        return base / ours if base is not None and ours else None

    def verify(self, page_tokens: int) -> None:
        """Same first token everywhere; every tierd run restored all but the last partial page
        (at least one token left) from the tier it was meant to."""
        problems: list[str] = []
        want = self.paths["recompute"].first_tokens[0]
        restorable = (self.prompt_tokens - 1) // page_tokens * page_tokens
        for path, m in self.paths.items():
            if any(token != want for token in m.first_tokens):
                problems.append(f"{path}: first tokens {m.first_tokens}, recompute's {want}")
            if path in EXPECTED_TIER:
                if any(tokens != restorable for tokens in m.restored_tokens):
                    problems.append(f"{path}: restored {m.restored_tokens} tokens, not {restorable}")
                if any(set(t) != {EXPECTED_TIER[path].label} for t in m.tiers):
                    problems.append(f"{path}: pages came from {m.tiers}")
        self.check = "ok" if not problems else "FAILED: " + "; ".join(problems)

    def summary(self) -> dict[str, object]:
        return {"prompt_tokens": self.prompt_tokens, "check": self.check,
                "ttft_ms": {p: m.median_ms for p, m in self.paths.items()},
                "restore_ms": {p: self.paths[p].median_restore_ms for p in EXPECTED_TIER},
                "ratio": {p: self.ratio(p) for p in EXPECTED_TIER},
                "runs": {p: asdict(m) for p, m in self.paths.items()}}


def drop_page_cache(data_dir: Path) -> int:
    """Write back and drop the daemon's files from the OS page cache (``posix_fadvise``
    DONTNEED: no root needed), so the next reads come from the device; how many files."""
    count = 0
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            count += 1
        finally:
            os.close(fd)
    return count


class Daemon:
    """The tierd under test (``local_servers.start_tierd``: cpu arenas, one namespace owns them
    all, write_back), restartable on its data dir."""

    def __init__(self, work_dir: Path, tier_bytes: int) -> None:
        self.work_dir, self.tier_bytes = work_dir, tier_bytes
        self.server: Server = start_tierd(work_dir, tier_bytes)

    def restart(self, drop_cache: bool) -> None:
        """Stop (SIGTERM: dram is written to disk), optionally drop the page cache, start."""
        self.server.stop()
        if drop_cache:
            drop_page_cache(self.work_dir / "data")
        self.server = start_tierd(self.work_dir, self.tier_bytes)

    def stop(self) -> None:
        self.server.stop()


def build_model(shape: ModelShape, max_tokens: int, dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(shape.config(max_tokens))
    # Both in place; called as nn.Module's: transformers' typed wrappers of .to/.eval refuse these.
    torch.nn.Module.to(model, dtype)
    torch.nn.Module.eval(model)
    return model


def measure_length(model: LlamaForCausalLM, client: TierClient, daemon: Daemon, length: int,
                   args: argparse.Namespace) -> Row:
    """One row: the prompt's pages saved by a first (untimed) tierd turn, then ``reps`` rounds of
    recompute, dram and disk runs. Rounds interleave the three ways, so that a load which comes
    and goes on a shared machine weighs on all of them alike."""
    row = Row(length)
    # Token 0 never appears: the page of 16 zeros is reconnect()'s own.
    ids = torch.randint(1, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(length))
    greedy: dict[str, Any] = {"max_new_tokens": 1, "do_sample": False}
    with torch.no_grad(), tiered_generation(client, model, page_tokens=args.page_tokens,
                                            revision=REVISION) as gen:
        def tierd_run(path: str) -> None:
            clock = FirstToken()
            gen.generate(ids, streamer=clock, **greedy)
            row.paths[path].add(clock, gen.last_restore)

        gen.generate(ids, **greedy)  # the first turn: computes the prompt, saves its pages
        keys = gen.ns.keys(ids[0].numpy())
        for _ in range(args.reps):
            clock = FirstToken()
            model.generate(ids, attention_mask=torch.ones_like(ids), streamer=clock, **greedy)
            row.paths["recompute"].add(clock)
            tierd_run("dram")
            daemon.restart(drop_cache=not args.warm_disk)
            reconnect(client, gen.ns)
            tierd_run("disk")
            back_to_dram(client, gen.ns, keys)  # reads do not promote: the next dram run needs it
    row.verify(args.page_tokens)
    return row


def back_to_dram(client: TierClient, ns: NamespaceHandle, keys: list[bytes]) -> None:
    """Prefetch the cached prefix of ``keys`` into dram and wait until it is all there."""
    cached = client.lookup(ns, keys)
    client.prefetch(ns, keys[:cached], Tier.DRAM)
    for _ in range(PREFETCH_POLLS):
        if client.lookup_result(ns, keys[:cached]).tiers == (Tier.DRAM,) * cached:
            return
        time.sleep(PREFETCH_POLL_S)
    raise RuntimeError(f"{cached} pages did not reach dram within {PREFETCH_POLLS * PREFETCH_POLL_S:.0f} s")


def reconnect(client: TierClient, ns: NamespaceHandle) -> None:
    """After a restart, before a clock starts: the client reconnects and maps the new daemon's
    regions (a put and a get of one page of its own), as a worker that talks to a running
    daemon has done already. The prompt's pages stay untouched, on disk."""
    client.stats()
    keys = ns.keys([0] * ns.spec.page_tokens)  # prompts hold no token 0: not one of their pages
    page = torch.zeros((1, *ns.spec.page_shape), dtype=torch_dtype(ns.spec))
    client.put(ns, keys, page)
    client.get_into(ns, keys, page)


def kv_bytes(spec: PageSpec, tokens: int) -> int:
    return -(-tokens // spec.page_tokens) * spec.page_bytes


def run_all(args: argparse.Namespace, progress: Callable[[str], None]) -> tuple[list[Row], PageSpec]:
    shape = QUICK if args.quick else FULL
    model = build_model(shape, max(args.lengths) + 64, DTYPES[args.dtype])
    spec = spec_for(model, page_tokens=args.page_tokens, revision=REVISION)
    tier_bytes = int(sum(kv_bytes(spec, n) for n in args.lengths) * TIER_HEADROOM) + (16 << 20)
    with torch.no_grad():  # the first generate of a process is slower: not timed
        warm = torch.zeros((1, 8), dtype=torch.long)
        model.generate(warm, attention_mask=torch.ones_like(warm), max_new_tokens=1, do_sample=False)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tierd-ttft-", dir=args.tmp_dir) as tmp:
        daemon = Daemon(Path(tmp) / "tierd", tier_bytes)
        try:
            with TierClient(daemon.server.socket_path) as client:
                for length in args.lengths:
                    progress(f"prompt of {length} tokens ...")
                    rows.append(measure_length(model, client, daemon, length, args))
        finally:
            daemon.stop()
    return rows, spec


def goals(rows: list[Row]) -> list[dict[str, object]]:
    """The issue's targets for the lengths this run measured (value None: no figure)."""
    out: list[dict[str, object]] = []
    for length, path, target in GOALS:
        row = next((r for r in rows if r.prompt_tokens == length), None)
        if row is not None:
            value = row.ratio(path)
            out.append({"goal": f"{length} tokens: TTFT recompute / tierd {path}", "value": value,
                        "target": target, "met": None if value is None else value >= target})
    return out


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(report: dict[str, Any], rows: list[Row]) -> None:
    """The markdown table (and the lines that say what it measured)."""
    print(f"machine: {report['machine']['description']}, torch {torch.__version__} "
          f"({report['torch_threads']} thread{'s' if report['torch_threads'] > 1 else ''})")
    print(f"model: {report['model']}, {report['dtype']}; pages of {report['page_tokens']} tokens "
          f"({report['page_bytes'] // 1024} KiB); disk: {report['disk']}; median of {report['reps']}")
    print("\n| prompt tokens | recompute TTFT ms | tierd dram TTFT ms | ratio | tierd disk TTFT ms | ratio "
          "| restore ms (dram / disk) | check |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        m = r.paths
        print(f"| {r.prompt_tokens} | {_fmt(m['recompute'].median_ms)} | {_fmt(m['dram'].median_ms, '.1f')} "
              f"| {_fmt(r.ratio('dram'), '.1f')}x | {_fmt(m['disk'].median_ms, '.1f')} "
              f"| {_fmt(r.ratio('disk'), '.1f')}x | {_fmt(m['dram'].median_restore_ms, '.1f')} / "
              f"{_fmt(m['disk'].median_restore_ms, '.1f')} | {r.check} |")
    if report["goals"]:
        print("\ngoals (issue 12, CPU):")
    for g in report["goals"]:
        mark = {True: "ok", False: "BELOW", None: "n/a"}[g["met"]]
        print(f"  {g['goal']:<40} {_fmt(g['value'], '.1f'):>6}x  target >= {g['target']:.0f}x  {mark}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: a tiny model, prompts of {QUICK_LENGTHS} tokens, 1 run (seconds)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help=f"prompt lengths in tokens (default {FULL_LENGTHS})")
    parser.add_argument("--reps", type=int, default=None, help="runs per figure (median; default 3, quick 1)")
    parser.add_argument("--page-tokens", type=int, default=16, help="tokens per tierd page (default 16)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="model dtype (default float32)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default torch's: one per core); 1 keeps a small forward "
                             "from stalling on a core that other processes hold")
    parser.add_argument("--warm-disk", action="store_true",
                        help="keep the daemon's files in the OS page cache for the disk runs")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                        help="write the numbers to FILE; without FILE print JSON instead of the table")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the daemon's files go")
    args = parser.parse_args(argv)
    args.lengths = args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    args.reps = args.reps or (1 if args.quick else 3)
    if args.reps < 1 or args.page_tokens < 1 or min(args.lengths) < 2 or (args.threads or 1) < 1:
        parser.error("--reps, --page-tokens and --threads must be positive and every length at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet = args.json == "-"
    rows, spec = run_all(args, lambda text: None if quiet else print(text, file=sys.stderr))
    report: dict[str, Any] = {
        "benchmark": "ttft", "machine": machine(), "torch_threads": torch.get_num_threads(),
        "model": (QUICK if args.quick else FULL).describe(), "dtype": args.dtype,
        "page_tokens": args.page_tokens, "page_bytes": spec.page_bytes, "reps": args.reps,
        "disk": "page cache warm" if args.warm_disk else "page cache dropped before each run",
        "goals": goals(rows), "rows": [r.summary() for r in rows]}
    if args.json == "-":
        print(json.dumps(report, indent=1))
    else:
        print_table(report, rows)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if all(r.check == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
