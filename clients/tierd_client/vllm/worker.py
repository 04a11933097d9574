"""The worker side: loads and saves whole vLLM blocks, through the mapped region when the
daemon is local (one copy per block and layer, no page bytes over gRPC), by key otherwise.

A load that cannot be done (tierd gone, a page evicted since the lookup) reports its blocks in
``load_errors`` and vLLM recomputes them; a save that cannot be done is dropped (a later miss).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tierd.spec import PageSpec
from tierd_client.errors import TierdRpcError
from tierd_client.sync import Lease, TierClient
from tierd_client.types import NamespaceHandle
from tierd_client.vllm.kv_copy import blocks_to_pages, pages_to_blocks, pages_view
from tierd_client.vllm.layout import check_kv_caches
from tierd_client.vllm.link import TierdLink
from tierd_client.vllm.plan import BlockLoad, StepPlan
from tierd_client.vllm.save_chains import StepSaves, unique_saves

log = logging.getLogger("tierd_client.vllm")


class WorkerSide:
    """Worker-side state of ``TierdConnector``. ``layers`` (vLLM's caches, in page order) are set
    by ``register_kv_caches``; ``link`` is this role's connection."""

    def __init__(self, link: TierdLink) -> None:
        self.link = link
        self.layers: list[torch.Tensor] = []
        self._errors: set[int] = set()
        self.blocks_loaded = 0  # counters for tests and logs
        self.blocks_saved = 0

    @property
    def spec(self) -> PageSpec:
        return self.link.spec

    def register_kv_caches(self, kv_caches: Mapping[str, torch.Tensor], names: Sequence[str]) -> None:
        """Keep the caches of ``names`` (page order) once they fit the spec."""
        tensors = [kv_caches[name] for name in names]
        check_kv_caches(self.spec, names, [tuple(t.shape) for t in tensors], [str(t.dtype) for t in tensors])
        self.layers = tensors
        self.link.connect()

    # -- loads ---------------------------------------------------------------------------------
    def load(self, plan: StepPlan) -> None:
        """Fill the blocks of ``plan.loads``; the ones that could not be filled go to ``load_errors``."""
        for load in plan.loads:
            done = self.link.call("load", _bind_load(self._load_one, load)) or 0
            self.blocks_loaded += done
            self._errors.update(load.block_ids[done:])
            if done < len(load.block_ids):
                log.info("tierd: %d of %d blocks of request %s not loaded: vLLM recomputes them",
                         len(load.block_ids) - done, len(load.block_ids), load.req_id)

    def _load_one(self, client: TierClient, ns: NamespaceHandle, load: BlockLoad) -> int:
        arena = self.link.arena(client, ns)
        if arena is not None and load.slots and arena.handle.name == load.region and not arena.is_stale():
            # The scheduler's lease pins these slots until this step is over.
            pages_to_blocks(pages_view(arena.bytes(), self.spec), load.slots, self.layers, load.block_ids)
            return len(load.block_ids)
        staging = np.empty((len(load.keys), self.spec.page_bytes), np.uint8)
        found = client.get_into(ns, list(load.keys), staging)
        pages_to_blocks(pages_view(staging, self.spec), range(found), self.layers, load.block_ids[:found])
        return found

    def load_errors(self) -> set[int]:
        """Blocks that failed to load since the last call (then forgotten)."""
        errors, self._errors = self._errors, set()
        return errors

    # -- saves ---------------------------------------------------------------------------------
    def save(self, plan: StepPlan) -> None:
        """Store the blocks of ``plan.saves`` (every layer of this step is written by now)."""
        saves = unique_saves(plan.saves)
        if not saves.keys:
            return
        saved = self.link.call("save", lambda c, ns: self._save(c, ns, saves))
        self.blocks_saved += saved or 0

    def _save(self, client: TierClient, ns: NamespaceHandle, saves: StepSaves) -> int:
        # One put or commit per run of consecutive pages, each naming the page before its run.
        keys = saves.keys
        arena = self.link.arena(client, ns)
        if arena is None:
            pages = torch.empty((len(keys), self.spec.page_bytes), dtype=torch.uint8)
            blocks_to_pages(self.layers, saves.block_ids, pages_view(pages, self.spec), range(len(keys)))
            for first, end, parent in saves.pieces(0, len(keys)):
                client.put(ns, keys[first:end], pages[first:end].numpy(), tier=self.link.tier, parent=parent)
            return len(keys)
        view = pages_view(arena.bytes(), self.spec)
        part = self.link.max_pages(ns)
        for start in range(0, len(keys), part):
            stop = min(start + part, len(keys))
            lease = client.allocate(ns, stop - start, ttl_s=self.link.settings.lease_ttl_s, tier=self.link.tier)
            try:
                blocks_to_pages(self.layers, saves.block_ids[start:stop], view, lease.slots)
                self._commit_pieces(client, lease, saves, start, stop)
            except BaseException:
                with contextlib.suppress(TierdRpcError, OSError):
                    lease.release()
                raise
        return len(keys)

    @staticmethod
    def _commit_pieces(client: TierClient, lease: Lease, saves: StepSaves, start: int, stop: int) -> None:
        """Commit ``saves.keys[start:stop]`` (in ``lease.slots`` from its first), the last run
        ending the lease."""
        pieces = saves.pieces(start, stop)
        for n, (first, end, parent) in enumerate(pieces):
            client.commit(lease, saves.keys[first:end], lease.slots[first - start:end - start],
                          release=n == len(pieces) - 1, parent=parent)


def _bind_load(fn: Callable[[TierClient, NamespaceHandle, BlockLoad], int],
               load: BlockLoad) -> Callable[[TierClient, NamespaceHandle], int]:
    return lambda client, ns: fn(client, ns, load)


def layer_order(kv_caches: Mapping[str, Any]) -> list[str]:
    """Layer names in page order (by vLLM's layer index; vLLM imported only here)."""
    from vllm.model_executor.models.utils import extract_layer_index  # type: ignore[import-not-found, unused-ignore]

    from tierd_client.vllm.layout import order_layers
    return order_layers(kv_caches, extract_layer_index)
