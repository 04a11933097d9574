"""What the scheduler-side connector tells the worker-side one each step (pickled between the
engine core and the worker processes, so plain values only)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BlockLoad:
    """Fill vLLM blocks ``block_ids[i]`` with the pages ``keys[i]`` (in token order).

    ``slots[i]`` holds ``keys[i]`` in the region named ``region``, pinned by the scheduler's
    lease until the load is done; empty ``slots`` (or another region than the worker's): read
    the pages by key instead (the byte path)."""

    req_id: str
    block_ids: tuple[int, ...]
    keys: tuple[bytes, ...]
    slots: tuple[int, ...] = ()
    region: str = ""


@dataclass(frozen=True)
class BlockSave:
    """Store vLLM blocks ``block_ids[i]`` as the pages ``keys[i]`` once this step wrote them.

    ``parent``: the key of the prompt's page just before ``keys[0]`` (saved by an earlier step,
    or the reused prefix's last page); ``None`` when ``keys[0]`` is the prompt's first page."""

    req_id: str
    block_ids: tuple[int, ...]
    keys: tuple[bytes, ...]
    parent: bytes | None = None


@dataclass
class StepPlan:
    """One step's loads (before the forward) and saves (after every layer is written)."""

    loads: list[BlockLoad] = field(default_factory=list)
    saves: list[BlockSave] = field(default_factory=list)

    @property
    def num_load_blocks(self) -> int:
        return sum(len(load.block_ids) for load in self.loads)

    @property
    def num_save_blocks(self) -> int:
        return sum(len(save.block_ids) for save in self.saves)
