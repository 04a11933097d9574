#!/usr/bin/env python3
"""Benchmark the tierd paged-attention kernels on a GPU (Llama-3-8B attention shapes, bf16).

Decode, batch 1..64 x context 1K..128K: the achieved KV read bandwidth (K and V bytes of every
context token / kernel time) as a ratio to a device-to-device copy measured in the same run (copy
bandwidth counts bytes read + written, as memcpy benchmarks do; target >= 0.7 at long contexts),
and the time against torch SDPA on K/V gathered from the same pages (gather + SDPA; target: the
kernel is faster at every size). Prefill (causal, whole prompts): TFLOP/s against gather + SDPA.

Usage: python benchmarks/kernels.py [--quick] [--json]. Needs a CUDA GPU and CuPy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tierd_kernels as tk

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, PAGE_TOKENS = 32, 8, 128, 16  # Llama-3-8B attention, vLLM page size
DTYPE = torch.bfloat16
DECODE_BATCHES, DECODE_CONTEXTS = (1, 4, 16, 64), (1024, 8192, 32768, 131072)
QUICK_BATCHES, QUICK_CONTEXTS = (1, 16), (1024, 32768)
PREFILL_SHAPES = ((1, 1024), (1, 4096), (4, 2048), (1, 16384))  # (sequences, tokens each)
QUICK_PREFILL_SHAPES = ((1, 1024), (1, 4096))
# Keep the arena (and, for the baseline, its gathered copy) well inside free memory.
ARENA_SHARE_OF_FREE = 0.45
COPY_BYTES = 1 << 30
WARMUP, ITERATIONS = 3, 20


@dataclass(frozen=True)
class DecodeRow:
    batch: int
    context: int
    kernel_ms: float
    kv_gb_per_s: float
    ratio_to_copy: float
    sdpa_ms: float | None  # gather + SDPA; None when the gathered copy does not fit
    speedup: float | None
    max_abs_diff: float | None


@dataclass(frozen=True)
class PrefillRow:
    sequences: int
    tokens: int
    kernel_ms: float
    kernel_tflops: float
    sdpa_ms: float | None
    sdpa_tflops: float | None
    max_abs_diff: float | None


def time_ms(fn: Callable[[], object], iterations: int = ITERATIONS) -> float:
    """Median time of ``fn`` in milliseconds, by CUDA events, after a warm-up."""
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_gb_per_s(device: torch.device) -> float:
    """Device-to-device copy bandwidth, (read + written bytes) / time."""
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src))
    return 2 * COPY_BYTES / (ms * 1e-3) / 1e9


def make_pages(num_seqs: int, context: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer of an arena holding ``num_seqs`` contexts on shuffled slots, and their block tables."""
    pages = -(-context // PAGE_TOKENS)
    arena = torch.empty((num_seqs * pages, 1, 2, PAGE_TOKENS, NUM_KV_HEADS, HEAD_DIM), dtype=DTYPE, device=device)
    arena.normal_()
    tables = torch.randperm(num_seqs * pages, device=device).to(torch.int32).view(num_seqs, pages)
    return arena, tables


def gathered_sdpa(q: torch.Tensor, arena: torch.Tensor, tables: torch.Tensor, context: int,
                  causal: bool) -> torch.Tensor:
    """The baseline: gather each sequence's K/V into dense tensors, then torch SDPA (GQA native).
    q ``[num_seqs, num_heads, q_len, head_dim]``."""
    kv = arena[tables.long(), 0]  # [S, pages, 2, P, Hkv, D]
    num_seqs = tables.shape[0]
    k = kv[:, :, 0].reshape(num_seqs, -1, NUM_KV_HEADS, HEAD_DIM)[:, :context].transpose(1, 2)
    v = kv[:, :, 1].reshape(num_seqs, -1, NUM_KV_HEADS, HEAD_DIM)[:, :context].transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


def arena_bytes(num_seqs: int, context: int) -> int:
    return num_seqs * -(-context // PAGE_TOKENS) * PAGE_TOKENS * 2 * NUM_KV_HEADS * HEAD_DIM * DTYPE.itemsize


def free_bytes(device: torch.device) -> int:
    """Free device memory once torch's cache of earlier sizes is released."""
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info(device)[0]


def bench_decode(batch: int, context: int, copy_bw: float, device: torch.device) -> DecodeRow | None:
    free = free_bytes(device)
    if arena_bytes(batch, context) > ARENA_SHARE_OF_FREE * free:
        return None
    arena, tables = make_pages(batch, context, device)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    q = torch.randn((batch, NUM_HEADS, HEAD_DIM), dtype=DTYPE, device=device)
    out = torch.empty_like(q)
    kernel_ms = time_ms(lambda: tk.paged_attention_decode(q, arena, tables, seq_lens, 0, out=out,
                                                          max_seq_len=context))
    kv_bytes = batch * context * 2 * NUM_KV_HEADS * HEAD_DIM * DTYPE.itemsize
    kv_bw = kv_bytes / (kernel_ms * 1e-3) / 1e9
    sdpa_ms = diff = None
    if 2 * arena_bytes(batch, context) <= ARENA_SHARE_OF_FREE * free:
        q4 = q.unsqueeze(2)
        sdpa_ms = time_ms(lambda: gathered_sdpa(q4, arena, tables, context, causal=False))
        diff = (gathered_sdpa(q4, arena, tables, context, False).squeeze(2) - out).abs().max().item()
    return DecodeRow(batch, context, kernel_ms, kv_bw, kv_bw / copy_bw, sdpa_ms,
                     None if sdpa_ms is None else sdpa_ms / kernel_ms, diff)


def bench_prefill(num_seqs: int, tokens: int, device: torch.device) -> PrefillRow | None:
    free = free_bytes(device)
    if 3 * arena_bytes(num_seqs, tokens) > ARENA_SHARE_OF_FREE * free:
        return None
    arena, tables = make_pages(num_seqs, tokens, device)
    seq_lens = torch.full((num_seqs,), tokens, dtype=torch.int32, device=device)
    cu = torch.arange(0, (num_seqs + 1) * tokens, tokens, dtype=torch.int32, device=device)
    q = torch.randn((num_seqs * tokens, NUM_HEADS, HEAD_DIM), dtype=DTYPE, device=device)
    out = torch.empty_like(q)
    kernel_ms = time_ms(lambda: tk.paged_attention_prefill(q, cu, arena, tables, seq_lens, 0, out=out,
                                                           max_q_len=tokens), iterations=5)
    flops = 4 * num_seqs * NUM_HEADS * HEAD_DIM * tokens * tokens / 2  # QK^T and PV, causal half
    q4 = q.view(num_seqs, tokens, NUM_HEADS, HEAD_DIM).transpose(1, 2)
    sdpa_ms = time_ms(lambda: gathered_sdpa(q4, arena, tables, tokens, causal=True), iterations=5)
    expected = gathered_sdpa(q4, arena, tables, tokens, True).transpose(1, 2).reshape_as(out)
    diff = (expected - out).abs().max().item()
    return PrefillRow(num_seqs, tokens, kernel_ms, flops / (kernel_ms * 1e-3) / 1e12, sdpa_ms,
                      flops / (sdpa_ms * 1e-3) / 1e12, diff)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_tables(device_name: str, copy_bw: float, decode: list[DecodeRow], prefill: list[PrefillRow]) -> None:
    print(f"device: {device_name}; device-to-device copy: {copy_bw:.0f} GB/s (read + write)")
    print(f"\ndecode, Llama-3-8B attention ({NUM_HEADS} q / {NUM_KV_HEADS} kv heads, d={HEAD_DIM}, bf16, "
          f"{PAGE_TOKENS}-token pages)")
    print(f"{'batch':>5} {'context':>8} {'kernel ms':>10} {'KV GB/s':>8} {'/copy':>6} {'gather+SDPA ms':>15} "
          f"{'speedup':>8} {'max|diff|':>10}")
    for r in decode:
        print(f"{r.batch:>5} {r.context:>8} {r.kernel_ms:>10.3f} {r.kv_gb_per_s:>8.0f} {r.ratio_to_copy:>6.2f} "
              f"{_fmt(r.sdpa_ms, '.3f'):>15} {_fmt(r.speedup, '.2f'):>8} {_fmt(r.max_abs_diff, '.1e'):>10}")
    print("\nprefill (causal, whole prompts)")
    print(f"{'seqs':>5} {'tokens':>8} {'kernel ms':>10} {'TFLOP/s':>8} {'gather+SDPA ms':>15} {'TFLOP/s':>8} "
          f"{'max|diff|':>10}")
    for p in prefill:
        print(f"{p.sequences:>5} {p.tokens:>8} {p.kernel_ms:>10.3f} {p.kernel_tflops:>8.1f} "
              f"{_fmt(p.sdpa_ms, '.3f'):>15} {_fmt(p.sdpa_tflops, '.1f'):>8} {_fmt(p.max_abs_diff, '.1e'):>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few sizes only (about a minute)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA GPU: torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    try:
        from tierd_kernels import cuda

        cuda.import_cupy()
    except tk.KernelUnavailableError as exc:
        print(f"benchmarks/kernels.py: {exc}", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    copy_bw = copy_gb_per_s(device)
    batches, contexts = (QUICK_BATCHES, QUICK_CONTEXTS) if args.quick else (DECODE_BATCHES, DECODE_CONTEXTS)
    decode = [r for b in batches for c in contexts if (r := bench_decode(b, c, copy_bw, device)) is not None]
    shapes = QUICK_PREFILL_SHAPES if args.quick else PREFILL_SHAPES
    prefill = [r for s, t in shapes if (r := bench_prefill(s, t, device)) is not None]
    name = torch.cuda.get_device_name(device)
    if args.json:
        print(json.dumps({"device": name, "copy_gb_per_s": copy_bw, "decode": [asdict(r) for r in decode],
                          "prefill": [asdict(p) for p in prefill]}, indent=2))
    else:
        print_tables(name, copy_bw, decode, prefill)
    return 0


if __name__ == "__main__":
    sys.exit(main())
