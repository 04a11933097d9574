"""The scheduler side: which prompt blocks tierd has (pinned until loaded) and which to save.

Works on vLLM's objects by their attributes only (``request.request_id``,
``request.prompt_token_ids``, ``blocks.get_block_ids()``, the ``SchedulerOutput`` fields), so it is
tested without vLLM. Only full prompt blocks are looked up and saved, and never the whole prompt
is reported cached: at most ``(num_prompt_tokens - 1) // block_size`` blocks, so vLLM always
computes the last prompt token itself.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tierd.tier import Tier
from tierd_client.errors import TierdRpcError
from tierd_client.sync import Lease, TierClient
from tierd_client.types import NamespaceHandle
from tierd_client.vllm.link import TierdLink
from tierd_client.vllm.plan import BlockLoad, BlockSave, StepPlan

log = logging.getLogger("tierd_client.vllm")
# A step's hit leases are given back when the step two steps later is scheduled: by then its
# forward (and so its loads) is done, with vLLM's async scheduling too (one step in flight).
LEASE_STEPS = 2


@dataclass
class _Hit:
    """The answer for a waiting request: ``lease`` pins the pages of ``keys[:num_blocks]``."""

    keys: list[bytes]
    lease: Lease
    region: str
    on_disk: tuple[bool, ...]  # per hit page: it was on disk only at the lookup

    @property
    def num_blocks(self) -> int:
        return len(self.lease.slots)


@dataclass
class _Tracked:
    """A running request: its prompt, its vLLM block ids, and how many leading prompt blocks are
    in tierd (loaded from it or saved to it) already."""

    prompt: list[int]
    block_ids: list[int]
    done_blocks: int
    keys: list[bytes] | None = None


@dataclass
class SchedulerSide:
    """Scheduler-side state of ``TierdConnector``; ``link`` is this role's connection."""

    link: TierdLink
    block_size: int
    _hits: dict[str, _Hit] = field(default_factory=dict)
    _loads: list[BlockLoad] = field(default_factory=list)
    _step_leases: list[Lease] = field(default_factory=list)
    _old_leases: deque[list[Lease]] = field(default_factory=deque)
    _tracked: dict[str, _Tracked] = field(default_factory=dict)
    _hit_blocks: dict[str, int] = field(default_factory=dict)
    _sources: dict[str, dict[str, int]] = field(default_factory=dict)

    def lookup_blocks(self, prompt: list[int]) -> int:
        """Blocks that may be reported cached: full blocks of the prompt but its last token."""
        return max(0, (len(prompt) - 1) // self.block_size)

    def num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int, bool]:
        """Tokens beyond ``num_computed_tokens`` tierd can fill (whole blocks), loaded synchronously."""
        req_id = request.request_id
        hit = self._hits.get(req_id)
        if hit is None:
            prompt = list(request.prompt_token_ids or ())
            max_blocks = self.lookup_blocks(prompt)
            if max_blocks * self.block_size <= num_computed_tokens:
                return 0, False
            hit = self.link.call("lookup", lambda c, ns: self._lookup(c, ns, prompt, max_blocks))
            if hit is None:
                return 0, False
            self._hits[req_id] = hit  # vLLM may ask again (no blocks free yet): same answer
        external = hit.num_blocks * self.block_size - num_computed_tokens
        if external <= 0:
            self._drop_hit(req_id)
            return 0, False
        return external, False

    def _lookup(self, client: TierClient, ns: NamespaceHandle, prompt: list[int],
                max_blocks: int) -> _Hit | None:
        # A pin takes at most half the region: a longer hit is cut (vLLM computes the rest).
        max_blocks = min(max_blocks, self.link.max_pages(ns))
        keys = ns.keys(prompt[:max_blocks * self.block_size])
        result = client.lookup_result(ns, keys)
        found = result.num_hits
        if found == 0:
            return None
        settings = self.link.settings
        lease = client.acquire(ns, keys[:found], target_tier=self.link.tier,
                               timeout_s=settings.acquire_timeout_s, ttl_s=settings.lease_ttl_s)
        if not lease.slots:  # gone between the lookup and the pin
            lease.release()
            return None
        region = ns.region(self.link.tier)
        return _Hit(keys=keys, lease=lease, region="" if region is None else region.name,
                    on_disk=tuple(tier is Tier.DISK for tier in result.tiers))

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        """Plan the load of the hit blocks into the blocks vLLM just allocated."""
        req_id = request.request_id
        if num_external_tokens == 0:
            self._drop_hit(req_id)
            return
        hit = self._hits.pop(req_id, None)
        if hit is None:
            return
        block_ids = list(blocks.get_block_ids()[0])
        last = hit.num_blocks
        first = last - num_external_tokens // self.block_size
        self._loads.append(BlockLoad(req_id=req_id, block_ids=tuple(block_ids[first:last]),
                                     keys=tuple(hit.keys[first:last]),
                                     slots=tuple(hit.lease.slots[first:last]), region=hit.region))
        self._step_leases.append(hit.lease)
        self._hit_blocks[req_id] = last
        disk = sum(hit.on_disk[first:last]) * self.block_size
        self._sources[req_id] = {"disk": disk, "host": (last - first) * self.block_size - disk}

    def hit_sources(self, req_id: str) -> dict[str, int]:
        """Tokens of the planned load that came from tierd's memory (``host``) and its disk."""
        return self._sources.pop(req_id, {})

    def build_plan(self, scheduler_output: Any) -> StepPlan:
        """This step's loads (planned since the last step) and the saves of the prompt blocks
        that this step completes; gives back the hit leases of two steps ago."""
        plan = StepPlan(loads=self._loads)
        self._loads = []
        scheduled: dict[str, int] = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            prompt = list(new.prompt_token_ids or ())
            done = max(self._hit_blocks.pop(new.req_id, 0), new.num_computed_tokens // self.block_size)
            self._tracked[new.req_id] = _Tracked(prompt, list(new.block_ids[0]), done)
            self._plan_save(plan, new.req_id, new.num_computed_tokens + scheduled.get(new.req_id, 0))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            tracked = self._tracked.get(req_id)
            if tracked is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                tracked.block_ids = [] if new_ids is None else list(new_ids[0])
                tracked.done_blocks = max(self._hit_blocks.pop(req_id, 0), tracked.done_blocks)
            elif new_ids is not None:
                tracked.block_ids.extend(new_ids[0])
            self._plan_save(plan, req_id, cached.num_computed_tokens[i] + scheduled.get(req_id, 0))
        self._rotate_leases()
        return plan

    def _plan_save(self, plan: StepPlan, req_id: str, computed_after: int) -> None:
        tracked = self._tracked[req_id]
        upto = min(len(tracked.prompt) // self.block_size, computed_after // self.block_size,
                   len(tracked.block_ids))
        if upto <= tracked.done_blocks:
            return
        if tracked.keys is None:
            prompt = tracked.prompt[:len(tracked.prompt) // self.block_size * self.block_size]
            tracked.keys = self.link.call("keys", lambda _c, ns: ns.keys(prompt))
        if tracked.keys is not None:
            first = tracked.done_blocks
            parent = tracked.keys[first - 1] if first else None  # the chain goes on from there
            plan.saves.append(BlockSave(req_id, tuple(tracked.block_ids[first:upto]),
                                        tuple(tracked.keys[first:upto]), parent))
        tracked.done_blocks = upto  # tierd down: those blocks are simply not cached

    def _rotate_leases(self) -> None:
        self._old_leases.append(self._step_leases)
        self._step_leases = []
        while len(self._old_leases) > LEASE_STEPS:
            for lease in self._old_leases.popleft():
                self._release(lease)

    def _release(self, lease: Lease) -> None:
        # Not through ``link.call``: a lease of a daemon that restarted ended with its session,
        # and failing to give it back says nothing about the daemon now.
        if not self.link.is_up:
            return
        try:
            lease.release()
        except (TierdRpcError, OSError) as exc:
            log.debug("giving back a hit lease: %s", exc)

    def _drop_hit(self, req_id: str) -> None:
        hit = self._hits.pop(req_id, None)
        if hit is not None:
            self._release(hit.lease)

    def request_finished(self, request: Any) -> None:
        """Forget a request (finished or aborted); a pin not yet used goes back."""
        self._drop_hit(request.request_id)
        self._tracked.pop(request.request_id, None)
        self._hit_blocks.pop(request.request_id, None)
        self._sources.pop(request.request_id, None)

    def close(self) -> None:
        for req_id in list(self._hits):
            self._drop_hit(req_id)
        for leases in (*self._old_leases, self._step_leases):
            for lease in leases:
                self._release(lease)
        self._old_leases.clear()
        self._step_leases = []
        self.link.close()
