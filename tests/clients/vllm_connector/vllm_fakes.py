"""vLLM's objects as the connector reads them (requests, allocated blocks, scheduler outputs),
a small spec, and a scheduler + worker pair on a real served store (tests/server_harness.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from server_harness import ServerThread

from tierd_client.vllm.layout import EngineLayout, page_spec
from tierd_client.vllm.link import TierdLink
from tierd_client.vllm.scheduler import SchedulerSide
from tierd_client.vllm.settings import ConnectorSettings
from tierd_client.vllm.worker import WorkerSide

BLOCK = 4
NUM_BLOCKS = 32
LAYOUT = EngineLayout(engine_version="0.32.0", backend="cpu_attn-vec", dtype="float32", block_size=BLOCK)
# 2 layers x 2 kv heads x 4 tokens x 2 * 8 dims x 4 bytes = 1 KiB pages.
SPEC = page_spec("tiny@test", LAYOUT, num_layers=2, num_kv_heads=2, head_dim=8)


@dataclass
class FakeRequest:
    request_id: str
    prompt_token_ids: list[int]


@dataclass
class FakeBlocks:
    ids: list[int]

    def get_block_ids(self) -> tuple[list[int], ...]:
        return (self.ids,)


def new_req(req_id: str, prompt: list[int], block_ids: list[int], computed: int) -> SimpleNamespace:
    return SimpleNamespace(req_id=req_id, prompt_token_ids=prompt, block_ids=(block_ids,),
                           num_computed_tokens=computed)


def step(new: list[SimpleNamespace] | None = None, scheduled: dict[str, int] | None = None,
         cached: list[tuple[str, list[int] | None, int]] | None = None,
         resumed: set[str] | None = None) -> SimpleNamespace:
    """A SchedulerOutput: ``cached`` is (req_id, new block ids, num_computed_tokens) per request."""
    new, cached = new or [], cached or []
    cached_reqs = SimpleNamespace(
        req_ids=[c[0] for c in cached], resumed_req_ids=resumed or set(),
        new_block_ids=[None if c[1] is None else (c[1],) for c in cached],
        num_computed_tokens=[c[2] for c in cached])
    return SimpleNamespace(scheduled_new_reqs=new, scheduled_cached_reqs=cached_reqs,
                           num_scheduled_tokens=dict(scheduled or {}))


class Clock:
    """Monotonic seconds the test moves by hand (past ``retry_after_s``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Engine:
    """One engine's connector pair: its own links, as vLLM's two roles have."""

    scheduler: SchedulerSide
    worker: WorkerSide
    clock: Clock
    kv: dict[str, torch.Tensor] = field(default_factory=dict)

    def close(self) -> None:
        self.scheduler.close()
        self.worker.link.close()


def make_engine(socket: str, seed: int | None = 0, **settings: Any) -> Engine:
    """Caches of ``NUM_BLOCKS`` blocks per layer: random (``seed``) or zeros (``None``)."""
    config = ConnectorSettings(socket=socket, retry_after_s=5.0, rpc_timeout_s=2.0, **settings)
    clock = Clock()
    scheduler = SchedulerSide(TierdLink(config, SPEC, "scheduler", clock), BLOCK)
    worker = WorkerSide(TierdLink(config, SPEC, "worker", clock))
    shape = (NUM_BLOCKS, SPEC.num_kv_heads, BLOCK, 2 * SPEC.head_dim)
    generator = torch.Generator().manual_seed(seed or 0)
    kv = {f"model.layers.{i}.self_attn.attn": (torch.zeros(shape) if seed is None
                                               else torch.randn(shape, generator=generator))
          for i in range(SPEC.num_layers)}
    worker.register_kv_caches(kv, sorted(kv))
    return Engine(scheduler, worker, clock, kv)


def socket_of(server: ServerThread) -> str:
    return server.address.removeprefix("unix:")
