#!/usr/bin/env python3
"""What the fp8 cold tier costs in accuracy: a prefix restored from disk as fp8 vs exactly.

A Llama-shaped model with random weights (fixed seed, built from a config: no model hub) computes
the KV of a prompt prefix once per dtype (float32, bfloat16, float16); the pages are saved to a
tierd daemon in three namespaces that differ only in ``cold_format``: exact, ``fp8_e4m3`` (scales
per layer, K/V and kv head) and ``fp8_e4m3_kivi`` (keys per channel, values per token). The
daemon restarts (SIGTERM writes dram to disk), so every restore (``tierd_client.hf.
restore_prefix``) reads its pages from the disk tier: exact bytes, or fp8 decoded to the dtype.
From each restored cache the model computes the last prompt token and then decodes greedily:

- next-token logits of each fp8 restore vs the exact restore: max abs diff and KL(exact || fp8);
- greedy tokens over ``--steps`` (64) steps: how many agree with the exact restore's, position
  by position, and the first step where they differ.

The exact restore is also compared with a plain recompute of the whole prompt (``recompute``):
it shows the noise floor of the dtype itself (a different order of the same sums).

    python benchmarks/fp8_error.py            # the default model, seconds to a minute on 2 cores
    python benchmarks/fp8_error.py --quick    # a tiny model, a short prompt, 8 steps
    python benchmarks/fp8_error.py --json out.json
    python benchmarks/fp8_error.py --init-range 0.1   # peakier logits, as a trained model has
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from llama_shape import ModelShape
from local_servers import machine, start_tierd
from transformers import DynamicCache, LlamaForCausalLM

from tierd.tier import Tier
from tierd_client import NamespaceHandle, TierClient
from tierd_client.hf import cache_argument, restore_prefix, save_prefix, spec_for

REVISION = "fp8-error-seed0"
SEED = 0
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FORMATS = ("", "fp8_e4m3", "fp8_e4m3_kivi")
TIER_BYTES = 256 << 20
REGION_SHARE = 0.1  # nine namespaces (3 dtypes x 3 formats) share hbm and dram


FULL = ModelShape(vocab=4096, hidden=512, intermediate=1024, layers=6, heads=8, kv_heads=2)
QUICK = ModelShape(vocab=256, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2)


@dataclass
class Comparison:
    """One restore (a cold format, or ``recompute``) against the exact restore of one dtype."""

    dtype: str
    form: str
    restored_tokens: int
    restored_from: dict[str, int]
    logits_max_abs_diff: float
    logits_kl: float
    greedy_agree: int
    greedy_steps: int
    first_divergence: int | None  # the first step whose token differs (None: all agree)
    # The exact restore's gap between its two largest next-token logits: how close to a tie the
    # argmax was (a random-weight model's logits are nearly flat, so greedy decoding is fragile).
    exact_top2_margin: float = 0.0
    restore_ms: float = 0.0  # the restore (lookup + get_into from disk, decode included)


@dataclass
class Outcome:
    """A restored cache's results: next-token logits (float32) and the greedy tokens after."""

    logits: torch.Tensor
    tokens: list[int]
    restored_tokens: int = 0
    restored_from: dict[str, int] | None = None
    restore_ms: float = 0.0


def build_model(shape: ModelShape, dtype: torch.dtype, init_range: float) -> LlamaForCausalLM:
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(shape.config(4096, init_range))
    torch.nn.Module.to(model, dtype)  # in place; transformers' typed wrappers refuse these
    torch.nn.Module.eval(model)
    return model


def prefix_cache(model: LlamaForCausalLM, ids: torch.Tensor) -> DynamicCache:
    """The KV of every token of ``ids`` (the model's own prefill)."""
    cache = DynamicCache(config=model.config)
    model(ids, use_cache=True, **{cache_argument(model): cache})
    return cache


def continue_from(model: LlamaForCausalLM, ids: torch.Tensor, cache: DynamicCache, steps: int) -> Outcome:
    """The next-token logits after ``ids`` with ``cache`` covering its first tokens, then
    ``steps`` greedy tokens (the cache grows in place)."""
    start = cache.get_seq_length()
    out = model(ids[:, start:], use_cache=True, **{cache_argument(model): cache})
    logits = out.logits[0, -1].float()
    tokens = [int(logits.argmax())]
    for _ in range(steps - 1):
        step = torch.tensor([[tokens[-1]]])
        logits_step = model(step, use_cache=True, **{cache_argument(model): cache}).logits[0, -1]
        tokens.append(int(logits_step.argmax()))
    return Outcome(logits, tokens)


def compare(dtype: str, form: str, exact: Outcome, other: Outcome) -> Comparison:
    log_p = torch.log_softmax(exact.logits, dim=-1)
    log_q = torch.log_softmax(other.logits, dim=-1)
    kl = float(torch.sum(log_p.exp() * (log_p - log_q)))
    agree = [a == b for a, b in zip(exact.tokens, other.tokens)]
    top2 = torch.topk(exact.logits, 2).values
    return Comparison(dtype=dtype, form=form or "exact", restored_tokens=other.restored_tokens,
                      restored_from=other.restored_from or {},
                      logits_max_abs_diff=float((exact.logits - other.logits).abs().max()),
                      logits_kl=max(kl, 0.0), greedy_agree=sum(agree), greedy_steps=len(agree),
                      first_divergence=agree.index(False) if not all(agree) else None,
                      exact_top2_margin=float(top2[0] - top2[1]), restore_ms=other.restore_ms)


def register_all(client: TierClient, models: dict[str, LlamaForCausalLM], page_tokens: int
                 ) -> dict[tuple[str, str], NamespaceHandle]:
    return {(dtype, form): client.register(spec_for(model, page_tokens=page_tokens, revision=REVISION,
                                                    cold_format=form))
            for dtype, model in models.items() for form in FORMATS}


def restored(client: TierClient, ns: NamespaceHandle, model: LlamaForCausalLM, ids: torch.Tensor,
             steps: int) -> Outcome:
    cache, info = restore_prefix(client, ns, model, ids)
    outcome = continue_from(model, ids, cache, steps)
    outcome.restored_tokens = info.tokens
    outcome.restored_from = {tier.label: n for tier, n in sorted(info.pages_by_tier.items())}
    outcome.restore_ms = info.seconds * 1e3
    return outcome


def run_all(args: argparse.Namespace) -> tuple[list[Comparison], dict[str, Any]]:
    shape = QUICK if args.quick else FULL
    models = {name: build_model(shape, DTYPES[name], args.init_range) for name in args.dtypes}
    prompt = args.pages * args.page_tokens + 1  # every page restorable, one token left to compute
    ids = torch.randint(0, shape.vocab, (1, prompt), generator=torch.Generator().manual_seed(SEED))
    rows: list[Comparison] = []
    with tempfile.TemporaryDirectory(prefix="tierd-fp8-", dir=args.tmp_dir) as tmp, torch.no_grad():
        work = Path(tmp) / "tierd"
        server = start_tierd(work, TIER_BYTES, REGION_SHARE)
        try:
            with TierClient(server.socket_path) as client:
                namespaces = register_all(client, models, args.page_tokens)
                for dtype, model in models.items():
                    cache = prefix_cache(model, ids[:, :prompt - 1])
                    for form in FORMATS:
                        save_prefix(client, namespaces[(dtype, form)], cache, ids[:, :prompt - 1])
            server.stop()  # SIGTERM: dram is flushed to disk; the restores below read the disk
            server = start_tierd(work, TIER_BYTES, REGION_SHARE)
            with TierClient(server.socket_path) as client:
                namespaces = register_all(client, models, args.page_tokens)
                for dtype, model in models.items():
                    exact = restored(client, namespaces[(dtype, "")], model, ids, args.steps)
                    rows.append(compare(dtype, "", exact, exact))
                    for form in FORMATS[1:]:
                        rows.append(compare(dtype, form, exact, restored(client, namespaces[(dtype, form)],
                                                                         model, ids, args.steps)))
                    recompute = continue_from(model, ids, DynamicCache(config=model.config), args.steps)
                    rows.append(compare(dtype, "recompute", exact, recompute))
                disk = client.stats().tiers[Tier.DISK]
        finally:
            server.stop()
    report = {"benchmark": "fp8_error", "machine": machine(), "torch_threads": torch.get_num_threads(),
              "model": shape.describe(), "init_range": args.init_range, "prompt_tokens": prompt,
              "page_tokens": args.page_tokens, "pages": args.pages, "steps": args.steps,
              "disk": {"pages": disk.pages, "used_bytes": disk.used_bytes,
                       "quantized_pages": disk.quantized_pages,
                       "quantized_bytes_saved": disk.quantized_bytes_saved},
              "rows": [asdict(row) for row in rows]}
    return rows, report


def problems(rows: list[Comparison], pages: int, page_tokens: int) -> list[str]:
    """Every restore must have read all its pages from the disk tier."""
    out = []
    for row in rows:
        if row.form != "recompute" and (row.restored_tokens != pages * page_tokens
                                        or row.restored_from != {"disk": pages}):
            out.append(f"{row.dtype}/{row.form}: restored {row.restored_tokens} tokens from {row.restored_from}")
    return out


def print_table(report: dict[str, Any], rows: list[Comparison]) -> None:
    print(f"machine: {report['machine']['description']}, torch {torch.__version__} "
          f"({report['torch_threads']} threads)")
    print(f"model: {report['model']}, weights ~ N(0, {report['init_range']}); "
          f"prompt {report['prompt_tokens']} tokens, {report['pages']} pages of "
          f"{report['page_tokens']} restored from the disk tier; greedy {report['steps']} steps")
    disk = report["disk"]
    print(f"disk: {disk['pages']} pages, {disk['quantized_pages']} of them fp8, "
          f"{disk['quantized_bytes_saved']} bytes saved\n")
    print("| dtype | restore vs exact restore | logits max abs diff | KL(exact‖this) | greedy tokens agreeing "
          "| first divergence | exact top-2 logit gap | restore ms (one run, page cache warm) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        div = "-" if r.first_divergence is None else str(r.first_divergence)
        ms = "-" if r.form == "recompute" else f"{r.restore_ms:.1f}"
        print(f"| {r.dtype} | {r.form} | {r.logits_max_abs_diff:.3g} | {r.logits_kl:.3g} "
              f"| {r.greedy_agree}/{r.greedy_steps} | {div} | {r.exact_top2_margin:.3g} | {ms} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, 2 pages, 8 steps (seconds)")
    parser.add_argument("--pages", type=int, default=None, help="prefix pages restored (default 16, quick 2)")
    parser.add_argument("--page-tokens", type=int, default=16, help="tokens per page (default 16)")
    parser.add_argument("--steps", type=int, default=None, help="greedy steps (default 64, quick 8)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--init-range", type=float, default=0.02,
                        help="std of the random weights (transformers' default 0.02 gives nearly flat "
                             "logits, where greedy decoding flips on any noise; 0.1 gives peakier ones)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                        help="write the numbers to FILE; without FILE print JSON instead of the table")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the daemon's files go")
    args = parser.parse_args(argv)
    args.pages = args.pages or (2 if args.quick else 16)
    args.steps = args.steps or (8 if args.quick else 64)
    if min(args.pages, args.page_tokens, args.steps) < 1:
        parser.error("--pages, --page-tokens and --steps must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows, report = run_all(args)
    report["problems"] = problems(rows, args.pages, args.page_tokens)
    if args.json == "-":
        print(json.dumps(report, indent=1))
    else:
        print_table(report, rows)
        for line in report["problems"]:
            print(f"FAILED: {line}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if not report["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
