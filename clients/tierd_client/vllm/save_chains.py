"""A step's saves as pieces of page chains: each page keeps the key of the page before it in
its prompt, so every put or commit names the right parent (prefix-aware eviction then sees one
chain however many steps, requests or parts saved it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tierd_client.vllm.plan import BlockSave


@dataclass
class StepSaves:
    """The blocks and keys a step saves, each key once; ``before[i]`` is the key of the page
    just before ``keys[i]`` in its prompt (``None``: ``keys[i]`` is a prompt's first page)."""

    block_ids: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    before: list[bytes | None] = field(default_factory=list)

    def pieces(self, start: int, stop: int) -> list[tuple[int, int, bytes | None]]:
        """``keys[start:stop]`` cut into runs of consecutive pages: ``(first, end, parent)``,
        ``parent`` the key before ``keys[first]`` (it may lie before ``start``)."""
        runs: list[tuple[int, int, bytes | None]] = []
        first = start
        for i in range(start + 1, stop):
            if self.before[i] != self.keys[i - 1]:  # another prompt, or a page saved already
                runs.append((first, i, self.before[first]))
                first = i
        if start < stop:
            runs.append((first, stop, self.before[first]))
        return runs


def unique_saves(saves: Sequence[BlockSave]) -> StepSaves:
    """The pages of ``saves`` in order, each key once (two requests with one prefix in a step):
    a page after a skipped one keeps the skipped one, saved earlier in the step, as its parent."""
    out = StepSaves()
    seen: set[bytes] = set()
    for save in saves:
        previous = save.parent
        for block_id, key in zip(save.block_ids, save.keys):
            if key not in seen:
                seen.add(key)
                out.block_ids.append(block_id)
                out.keys.append(key)
                out.before.append(previous)
            previous = key
    return out
