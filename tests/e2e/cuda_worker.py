"""A worker of the two-process data-path tests (test_cuda_e2e.py), run as its own process.

It maps its namespace's hbm region with ``client.arena(ns, Tier.HBM).torch()`` and runs the
tierd_kernels ops straight over it: on a ``--device cuda:N`` daemon that is a CUDA tensor (CUDA IPC)
and the CUDA kernels run; on ``--device cpu`` a CPU tensor and the torch reference runs. The
script is the same on both.

``python cuda_worker.py SOCKET MODE JOB``; JOB is a JSON object (``Job``), MODE one of:

- ``fill``: Allocate FILL slots, write each sequence's seeded K/V with ``store_kv``, Commit them
  under the sequence's chained keys; then fill and commit ``filler_pages`` more pages (in
  Allocates of ``batch_pages``), more than the region holds, so the daemon demotes the first ones.
- ``verify``: Acquire every sequence back into hbm, run ``paged_attention_decode`` over the
  acquired slots and compare it with the reference attention over the ORIGINAL K/V (regenerated
  from the seed, never read from the daemon), and the pages bit for bit.
- ``hold``: commit and READ-lease ``hold_pages`` pages, FILL-lease every other hbm slot and write
  into it, report, then wait (until stdin closes) holding both leases and the mapping.

Each mode prints one JSON line on stdout; a failure raises (traceback on stderr, exit status 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch

import tierd_kernels as tk
from tierd_client import Lease, NamespaceHandle, PageSpec, Tier, TierClient
from tierd_kernels.tolerances import attention_tolerance

MODES = ("fill", "verify", "hold")
ACQUIRE_TIMEOUT_S = 60.0  # a failure guard: pages come back from disk well before
HOLD_TTL_S = 600.0        # the held leases must outlive the test (the kill ends them, not the TTL)
# Token ids (u32) of sequence s start at seed * SEED_STRIDE + s * TOKEN_STRIDE: no two chains meet
# (seeds 0..15, sequences of up to 4096 pages of 16 tokens).
TOKEN_STRIDE = 1 << 16
SEED_STRIDE = 1 << 28
MAX_SEED = 15
FILLER_SEQUENCE = 1 << 10  # filler pages are "sequences" from this index on


@dataclass(frozen=True)
class Job:
    """What a worker does. ``seq_pages[s]``: pages of sequence s (one key chain each);
    ``seq_lens[s]``: tokens of it the decode attends to (at most ``seq_pages[s] * page_tokens``)."""

    spec: PageSpec
    seed: int
    seq_pages: tuple[int, ...]
    seq_lens: tuple[int, ...]
    query_heads: int      # a multiple of spec.num_kv_heads (GQA)
    filler_pages: int = 0
    batch_pages: int = 1
    hold_pages: int = 0

    @classmethod
    def from_json(cls, text: str) -> Job:
        data = json.loads(text)
        spec = PageSpec(**data.pop("spec"))
        job = cls(spec=spec, seq_pages=tuple(data.pop("seq_pages")), seq_lens=tuple(data.pop("seq_lens")),
                  **data)
        for pages, seq_len in zip(job.seq_pages, job.seq_lens):
            if not 0 < seq_len <= pages * spec.page_tokens:
                raise argparse.ArgumentTypeError(f"seq_len {seq_len} does not fit {pages} pages of "
                                 f"{spec.page_tokens} tokens; give 1..{pages * spec.page_tokens}")
        if len(job.seq_pages) != len(job.seq_lens) or job.batch_pages < 1 or not 0 <= job.seed <= MAX_SEED:
            raise argparse.ArgumentTypeError(f"seq_pages and seq_lens need one entry per sequence, "
                                             f"batch_pages >= 1, seed in 0..{MAX_SEED}")
        return job

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype: torch.dtype = getattr(torch, self.spec.dtype)
        return dtype


def token_ids(job: Job, seq: int, num_pages: int) -> list[int]:
    start = job.seed * SEED_STRIDE + seq * TOKEN_STRIDE
    return list(range(start, start + num_pages * job.spec.page_tokens))


def sequence_kv(job: Job, seq: int, num_pages: int) -> torch.Tensor:
    """The ORIGINAL K/V of a sequence, from the seed alone: CPU ``[num_layers, 2, tokens, Hkv, D]``."""
    spec = job.spec
    generator = torch.Generator().manual_seed(job.seed * 1_000_003 + seq)
    shape = (spec.num_layers, 2, num_pages * spec.page_tokens, spec.num_kv_heads, spec.head_dim)
    return torch.randn(shape, generator=generator).to(job.torch_dtype)


def slot_mapping(slots: Sequence[int], page_tokens: int, device: torch.device) -> torch.Tensor:
    """int64 flat positions of a sequence laid over ``slots`` in order (token i of page j)."""
    pages = torch.tensor(list(slots), dtype=torch.int64)
    offsets = torch.arange(page_tokens, dtype=torch.int64)
    return (pages[:, None] * page_tokens + offsets[None, :]).reshape(-1).to(device)


def store_pages(arena: torch.Tensor, slots: Sequence[int], kv: torch.Tensor, backend: tk.Backend) -> None:
    """Write ``kv`` (``[num_layers, 2, len(slots) * page_tokens, Hkv, D]``) into ``slots`` with store_kv."""
    mapping = slot_mapping(slots, arena.shape[3], arena.device)
    on_device = kv.to(arena.device)
    for layer in range(kv.shape[0]):
        tk.store_kv(arena, layer, on_device[layer, 0], on_device[layer, 1], mapping, backend=backend)


def synchronize(device: torch.device) -> None:
    """Finish this process's device work before the daemon may copy the slots (Commit, Release)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def commit_new_pages(client: TierClient, ns: NamespaceHandle, arena: torch.Tensor, job: Job, seq: int,
                     num_pages: int) -> list[bytes]:
    """Allocate, fill (the sequence's seeded K/V) and commit ``num_pages`` pages; their keys."""
    keys = ns.keys(token_ids(job, seq, num_pages))
    with client.allocate(ns, num_pages) as lease:
        store_pages(arena, lease.slots, sequence_kv(job, seq, num_pages), tk.Backend.AUTO)
        synchronize(arena.device)
        committed = lease.commit(keys, list(lease.slots)).num_committed
    if committed != num_pages:
        raise RuntimeError(f"committed {committed} of {num_pages} pages of sequence {seq}")
    return keys


def fill(client: TierClient, ns: NamespaceHandle, job: Job) -> dict[str, Any]:
    arena = client.arena(ns, Tier.HBM).torch()
    keys = [commit_new_pages(client, ns, arena, job, seq, pages) for seq, pages in enumerate(job.seq_pages)]
    filler = 0
    while filler < job.filler_pages:
        batch = min(job.batch_pages, job.filler_pages - filler)
        commit_new_pages(client, ns, arena, job, FILLER_SEQUENCE + filler, batch)
        filler += batch
    return {"device": str(arena.device), "keys": [[key.hex() for key in chain] for chain in keys],
            "committed": sum(len(chain) for chain in keys), "filler_committed": filler}


def reference_arena(job: Job) -> tuple[torch.Tensor, torch.Tensor]:
    """The ORIGINAL K/V in a CPU arena of their own, one sequence after another, and its
    ``[num_seqs, max_pages]`` int32 block tables."""
    spec = job.spec
    page_shape = (spec.num_layers, 2, spec.page_tokens, spec.num_kv_heads, spec.head_dim)
    arena = torch.zeros((sum(job.seq_pages), *page_shape), dtype=job.torch_dtype)
    tables = torch.zeros((len(job.seq_pages), max(job.seq_pages)), dtype=torch.int32)
    first = 0
    for seq, pages in enumerate(job.seq_pages):
        slots = list(range(first, first + pages))
        store_pages(arena, slots, sequence_kv(job, seq, pages), tk.Backend.REFERENCE)
        tables[seq, :pages] = torch.tensor(slots, dtype=torch.int32)
        first += pages
    return arena, tables


def acquired_tables(leases: Sequence[Lease], max_pages: int) -> torch.Tensor:
    tables = torch.zeros((len(leases), max_pages), dtype=torch.int32)
    for seq, lease in enumerate(leases):
        tables[seq, :lease.num_pages] = torch.tensor(list(lease.slots), dtype=torch.int32)
    return tables


def compare_decode(job: Job, arena: torch.Tensor, leases: Sequence[Lease]) -> dict[str, Any]:
    """Decode over the acquired slots vs the reference over the original K/V, every layer."""
    spec, device = job.spec, arena.device
    expected_arena, expected_tables = reference_arena(job)
    tables = acquired_tables(leases, max(job.seq_pages))
    seq_lens = torch.tensor(job.seq_lens, dtype=torch.int32)
    generator = torch.Generator().manual_seed(job.seed + 7)
    q = torch.randn((len(job.seq_pages), job.query_heads, spec.head_dim), generator=generator).to(job.torch_dtype)
    tolerance = attention_tolerance(job.torch_dtype)
    close, max_error = True, 0.0
    for layer in range(spec.num_layers):
        got = tk.paged_attention_decode(q.to(device), arena, tables.to(device), seq_lens.to(device), layer)
        synchronize(device)
        expected = tk.paged_attention_decode(q, expected_arena, expected_tables, seq_lens, layer,
                                             backend=tk.Backend.REFERENCE)
        got_f, expected_f = got.cpu().float(), expected.float()
        close = close and torch.allclose(got_f, expected_f, atol=tolerance.atol, rtol=tolerance.rtol)
        max_error = max(max_error, float((got_f - expected_f).abs().max()))
    slots = torch.tensor([slot for lease in leases for slot in lease.slots], dtype=torch.int64)
    pages_exact = torch.equal(arena[slots.to(device)].cpu(), expected_arena)
    return {"decode_close": close, "max_abs_error": max_error, "pages_exact": pages_exact,
            "atol": tolerance.atol, "rtol": tolerance.rtol}


def verify(client: TierClient, ns: NamespaceHandle, job: Job) -> dict[str, Any]:
    chains = [ns.keys(token_ids(job, seq, pages)) for seq, pages in enumerate(job.seq_pages)]
    tiers = [tier.label for chain in chains for tier in client.lookup_result(ns, chain).tiers]
    arena = client.arena(ns, Tier.HBM).torch()
    with ExitStack() as held:
        leases = [held.enter_context(client.acquire(ns, chain, Tier.HBM, timeout_s=ACQUIRE_TIMEOUT_S))
                  for chain in chains]
        acquired = [lease.num_pages for lease in leases]
        if acquired != list(job.seq_pages) or {lease.tier for lease in leases} != {Tier.HBM}:
            raise RuntimeError(f"acquired {acquired} pages of {list(job.seq_pages)} "
                               f"(tiers {[lease.tier.label for lease in leases]}); expected all, in hbm")
        result = compare_decode(job, arena, leases)
        synchronize(arena.device)  # before the Releases let the daemon reuse the slots
    return {"device": str(arena.device), "tiers_at_acquire": tiers, "acquired_pages": sum(acquired), **result}


def hold(client: TierClient, ns: NamespaceHandle, job: Job) -> dict[str, Any]:
    """Hold a READ and a FILL lease covering every hbm slot, with the region mapped; then wait."""
    arena = client.arena(ns, Tier.HBM).torch()
    keys = commit_new_pages(client, ns, arena, job, 0, job.hold_pages)
    read = client.acquire(ns, keys, Tier.HBM, timeout_s=ACQUIRE_TIMEOUT_S, ttl_s=HOLD_TTL_S)
    region = ns.region(Tier.HBM)
    num_slots = 0 if region is None else region.num_slots
    fill_lease = client.allocate(ns, num_slots - job.hold_pages, ttl_s=HOLD_TTL_S)
    store_pages(arena, fill_lease.slots, sequence_kv(job, 1, fill_lease.num_pages), tk.Backend.AUTO)
    synchronize(arena.device)
    print(json.dumps({"device": str(arena.device), "read_pages": read.num_pages,
                      "fill_pages": fill_lease.num_pages, "num_slots": num_slots}), flush=True)
    sys.stdin.read()  # until the test closes stdin, or kills this process (what it is for)
    return {"released": True}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="tierd data-path test worker")
    parser.add_argument("socket")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("job", type=Job.from_json, help="the Job as a JSON object")
    args = parser.parse_args(argv)
    job: Job = args.job
    with TierClient(args.socket) as client:
        ns = client.register(job.spec)
        run = {"fill": fill, "verify": verify, "hold": hold}[args.mode]
        result = run(client, ns, job)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
