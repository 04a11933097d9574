"""Chains of pages: each page's parent (when known), its cached children per tier, broken chains.

The pages of one put or commit are consecutive (key i-1 is the parent of key i), and a put or
commit may name the parent of its first page. A lookup stops at the first missing page, so a page
whose chain is broken (an ancestor cached in no tier: deleted, dropped from disk, or a parent a put
named that was not cached) is unreachable by lookups while it takes space.

``ChainIndex`` is one namespace's; the manager owns it (in the namespace's book) and calls it under
its lock only. The residency tables tell it which tier a page entered or left; the eviction
orders and the manager's eviction decisions read it (``TierChains`` and ``DiskChains`` are the
views the orders get). A link exists while its page is cached in some tier or has a cached child;
a child cached nowhere that outlives its parent's link reads the missing parent as a broken chain.
Disk pages found at start-up get the parent stored with them (the disk tier's ``parents``
database); pages without one (written by an older tierd) are roots until a put names their parent.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping

from tierd.attention_window import WindowRule
from tierd.keys import KEY_BYTES, PageKey
from tierd.tier import Tier

# Bits of ``_Link.state``: the tiers holding the page, and whether its chain is broken.
_HBM, _DRAM, _DISK, _BROKEN = 1, 2, 4, 8
_CACHED = _HBM | _DRAM | _DISK
_MEMORY = _HBM | _DRAM
_TIER_BITS = {Tier.HBM: _HBM, Tier.DRAM: _DRAM, Tier.DISK: _DISK}


class _Link:
    """One page's place in its chain; ``children`` is None, one key, or a set (a shared prefix).

    Counts: children resident in hbm, in dram, on disk, and cached in any tier (slots, no dict).
    ``reach`` (windowed namespaces): pages from this one to the nearest end of a cached chain
    through it (0: no cached child), capped at the window's ``reach_pages``.
    """

    __slots__ = ("parent", "children", "in_hbm", "in_dram", "on_disk", "cached", "state", "reach")

    def __init__(self) -> None:
        self.parent: PageKey | None = None
        self.children: PageKey | set[PageKey] | None = None
        self.in_hbm = 0
        self.in_dram = 0
        self.on_disk = 0
        self.cached = 0
        self.state = 0
        self.reach = 0

    def child_keys(self) -> Iterator[PageKey]:
        children = self.children
        if children is None:
            return iter(())
        if isinstance(children, bytes):
            return iter((children,))
        return iter(list(children))


class ChainIndex:
    """One namespace's chains: parents, cached-children counts, broken pages, and (``window``:
    a sliding-window namespace) the pages outside every window its cached chains can still need."""

    def __init__(self, window: WindowRule | None = None) -> None:
        self._links: dict[PageKey, _Link] = {}
        self._window = window
        self.num_broken = 0  # links whose chain is broken (cached pages, and a few uncached ones)
        self.num_far = 0     # links whose reach is the window's (a hint: sink pages count too)

    def __len__(self) -> int:
        return len(self._links)

    # -- reads ----------------------------------------------------------------------------------------
    def parent_of(self, key: PageKey) -> PageKey | None:
        link = self._links.get(key)
        return None if link is None else link.parent

    def children_in(self, key: PageKey, tier: Tier) -> int:
        """Children of ``key`` resident in ``tier``."""
        link = self._links.get(key)
        if link is None:
            return 0
        if tier is Tier.HBM:
            return link.in_hbm
        if tier is Tier.DRAM:
            return link.in_dram
        return link.on_disk

    def cached_children(self, key: PageKey) -> int:
        """Children of ``key`` cached in any tier."""
        link = self._links.get(key)
        return 0 if link is None else link.cached

    def is_broken(self, key: PageKey) -> bool:
        link = self._links.get(key)
        return link is not None and bool(link.state & _BROKEN)

    def in_memory(self, key: PageKey) -> bool:
        link = self._links.get(key)
        return link is not None and bool(link.state & _MEMORY)

    def outside_windows(self, key: PageKey) -> bool:
        """A cached page of a windowed namespace that no continuation of a cached chain through
        it attends to: every such chain runs ``reach_pages`` or more past it, and it is not a
        sink page. Chains that grow later start from their ends, so it stays outside."""
        window, link = self._window, self._links.get(key)
        if window is None or link is None or link.reach < window.reach_pages or not link.state & _CACHED:
            return False
        return not self._within_sinks(link, window.sink_pages)

    # -- changes --------------------------------------------------------------------------------------
    def name_parent(self, key: PageKey, parent: PageKey | None) -> None:
        """A put or commit says ``parent`` comes before ``key``. The first parent named is kept
        (keys hash their whole prefix, so a page has one parent); a page is not its own."""
        if parent is None or parent == key:
            return
        link = self._links.get(key)
        if link is None:
            link = self._links[key] = _Link()
        if link.parent is not None:
            return
        link.parent = parent
        if link.state & _CACHED:
            self._count(self._parent_link(key, parent), link.state, +1)
            self._update_reach(parent)
        self._recheck([key])
        self._forget_if_unused(key)

    def entered(self, key: PageKey, tier: Tier, parent: PageKey | None = None) -> None:
        """``key`` was published in ``tier``; ``parent``: the parent its put or commit named."""
        link = self._links.get(key)
        if link is None:
            link = self._links[key] = _Link()
        bit = _TIER_BITS[tier]
        if not link.state & bit:
            was_cached = bool(link.state & _CACHED)
            link.state |= bit
            if link.parent is not None:
                self._count(self._parent_link(key, link.parent), bit, +1,
                            newly_cached=not was_cached)
            if not was_cached:
                # Cached again: its own chain may be whole now, and its children's too.
                self._recheck([key, *link.child_keys()])
                if link.parent is not None:
                    self._update_reach(link.parent)
        self.name_parent(key, parent)

    def left(self, key: PageKey, tier: Tier) -> None:
        """``key`` left ``tier`` (evicted, deleted, or its disk read failed)."""
        link = self._links.get(key)
        bit = _TIER_BITS[tier]
        if link is None or not link.state & bit:
            return
        link.state &= ~bit
        gone = not link.state & _CACHED
        plink = None if link.parent is None else self._links.get(link.parent)
        if plink is not None:
            self._count(plink, bit, -1, newly_cached=gone)
            if gone and link.parent is not None:
                self._update_reach(link.parent)
        if gone:
            self._recheck(list(link.child_keys()))
            self._forget_if_unused(key)
            if link.parent is not None:
                self._forget_if_unused(link.parent)

    # -- internals ------------------------------------------------------------------------------------
    def _parent_link(self, key: PageKey, parent: PageKey) -> _Link:
        """The link of ``parent`` (of ``key``), made (cached nowhere) if it was forgotten or
        never cached, with ``key`` among its children."""
        plink = self._links.get(parent)
        if plink is None:
            plink = self._links[parent] = _Link()
        _add_child(plink, key)
        return plink

    @staticmethod
    def _count(plink: _Link, bits: int, delta: int, newly_cached: bool = True) -> None:
        """Count a child's tiers ``bits`` in (+1) or out (-1) of its parent's counts."""
        if bits & _HBM:
            plink.in_hbm += delta
        if bits & _DRAM:
            plink.in_dram += delta
        if bits & _DISK:
            plink.on_disk += delta
        if bits & _CACHED and newly_cached:
            plink.cached += delta

    def _broken_now(self, link: _Link) -> bool:
        if link.parent is None:
            return False
        plink = self._links.get(link.parent)
        return plink is None or not plink.state & _CACHED or bool(plink.state & _BROKEN)

    def _recheck(self, keys: list[PageKey]) -> None:
        """Recompute brokenness from ``keys`` down their chains, as far as it changes. A flip
        only ever spreads the value its parent implies, so parents a client named in a cycle
        settle too; the bound is a second guard."""
        todo = collections.deque(keys)
        steps_left = 2 * (len(self._links) + len(keys))
        while todo and steps_left > 0:
            steps_left -= 1
            link = self._links.get(todo.popleft())
            if link is None:
                continue
            broken = self._broken_now(link)
            if broken != bool(link.state & _BROKEN):
                link.state ^= _BROKEN
                self.num_broken += 1 if broken else -1
                todo.extend(link.child_keys())

    def _update_reach(self, key: PageKey) -> None:
        """The cached children of ``key`` changed: recompute reach up its chain while it
        changes. Each level adds one page and the value is capped, so a change dies out within
        ``reach_pages + 1`` levels (the bound also ends a cycle of named parents)."""
        window = self._window
        if window is None:
            return
        cap = window.reach_pages
        for _ in range(cap + 2):
            link = self._links.get(key)
            if link is None:
                return
            reach = self._reach_below(link, cap)
            if reach == link.reach:
                return
            self.num_far += (reach >= cap) - (link.reach >= cap)
            link.reach = reach
            if link.parent is None or not link.state & _CACHED:
                return  # a page cached nowhere is no continuation of its parent
            key = link.parent

    def _reach_below(self, link: _Link, cap: int) -> int:
        reach: int | None = None
        for child in link.child_keys():
            clink = self._links.get(child)
            if clink is not None and clink.state & _CACHED:
                reach = clink.reach + 1 if reach is None else min(reach, clink.reach + 1)
        return 0 if reach is None else min(reach, cap)

    def _within_sinks(self, link: _Link, sink_pages: int) -> bool:
        """Whether ``link`` is among the first ``sink_pages`` pages of its chain (a page whose
        parent is not known counts as a chain's first, so a sink is never taken for another)."""
        for _ in range(sink_pages):
            if link.parent is None:
                return True
            parent = self._links.get(link.parent)
            if parent is None:
                return True
            link = parent
        return False

    def _forget_if_unused(self, key: PageKey) -> None:
        """Drop the link of a page cached nowhere with no cached child: nothing reads it (a
        child cached nowhere that outlives it reads a missing parent as a broken chain)."""
        link = self._links.get(key)
        if link is None or link.state & _CACHED or link.cached:
            return
        del self._links[key]
        if link.state & _BROKEN:
            self.num_broken -= 1
        if self._window is not None and link.reach >= self._window.reach_pages:
            self.num_far -= 1
        plink = None if link.parent is None else self._links.get(link.parent)
        if plink is not None:
            _remove_child(plink, key)


def _add_child(plink: _Link, key: PageKey) -> None:
    children = plink.children
    if children is None:
        plink.children = key
    elif isinstance(children, bytes):
        if children != key:
            plink.children = {children, key}
    else:
        children.add(key)


def _remove_child(plink: _Link, key: PageKey) -> None:
    children = plink.children
    if isinstance(children, bytes):
        if children == key:
            plink.children = None
    elif children is not None:
        children.discard(key)
        if len(children) == 1:
            plink.children = next(iter(children))
        elif not children:
            plink.children = None


class TierChains:
    """What an eviction order of one memory tier of a namespace reads of its chains. ``final``:
    a page leaving this tier leaves the cache (dram without a disk tier)."""

    def __init__(self, chains: ChainIndex, tier: Tier, final: bool = False) -> None:
        self._chains = chains
        self._tier = tier
        self._final = final

    def children(self, key: PageKey) -> int:
        return self._chains.children_in(key, self._tier)

    def children_here(self, key: PageKey) -> int:
        return self._chains.children_in(key, self._tier)

    def parent(self, key: PageKey) -> PageKey | None:
        return self._chains.parent_of(key)

    def first_victim(self, key: PageKey) -> bool:
        """Pages that go before every other (broken chains)."""
        return self._chains.is_broken(key)

    def any_first_victims(self) -> bool:
        return self._chains.num_broken > 0

    def outside_windows(self, key: PageKey) -> bool:
        """Pages no window needs go down first (they stay cached below, so chains stay whole),
        unless leaving this tier would drop them."""
        return not self._final and self._chains.outside_windows(key)

    def any_outside_windows(self) -> bool:
        return not self._final and self._chains.num_far > 0

    def frees_parent(self, key: PageKey) -> bool:
        """Taking ``key`` out of a memory tier always takes a child of its parent out of it."""
        return True


class DiskChains:
    """What the disk's eviction order (over every namespace, by disk key) reads of the chains
    of ``by_namespace`` (namespace id -> its chains; the manager adds to it)."""

    def __init__(self, by_namespace: Mapping[int, ChainIndex]) -> None:
        self._by_namespace = by_namespace

    def chains_of(self, dkey: bytes) -> ChainIndex | None:
        # A disk key is the namespace id (4 bytes, big-endian) then the page key.
        return self._by_namespace.get(int.from_bytes(dkey[:-KEY_BYTES], "big"))

    def children(self, dkey: bytes) -> int:
        """Children cached in any tier: a drop from disk is final, so the disk keeps a page
        while any child of it is cached."""
        chains = self.chains_of(dkey)
        return 0 if chains is None else chains.cached_children(dkey[-KEY_BYTES:])

    def children_here(self, dkey: bytes) -> int:
        chains = self.chains_of(dkey)
        return 0 if chains is None else chains.children_in(dkey[-KEY_BYTES:], Tier.DISK)

    def parent(self, dkey: bytes) -> bytes | None:
        chains = self.chains_of(dkey)
        parent = None if chains is None else chains.parent_of(dkey[-KEY_BYTES:])
        return None if parent is None else dkey[:-KEY_BYTES] + parent

    def first_victim(self, dkey: bytes) -> bool:
        chains = self.chains_of(dkey)
        return chains is not None and chains.is_broken(dkey[-KEY_BYTES:])

    def any_first_victims(self) -> bool:
        return any(chains.num_broken for chains in self._by_namespace.values())

    def outside_windows(self, dkey: bytes) -> bool:
        """Never on disk: a drop from disk is final, and a lookup stops at the first missing page."""
        return False

    def any_outside_windows(self) -> bool:
        return False

    def frees_parent(self, dkey: bytes) -> bool:
        """A page dropped from disk stops being a cached child only when memory lacks it too."""
        chains = self.chains_of(dkey)
        return chains is None or not chains.in_memory(dkey[-KEY_BYTES:])

    def entered(self, dkey: bytes) -> None:
        chains = self.chains_of(dkey)
        if chains is not None:
            chains.entered(dkey[-KEY_BYTES:], Tier.DISK)

    def left(self, dkey: bytes) -> None:
        chains = self.chains_of(dkey)
        if chains is not None:
            chains.left(dkey[-KEY_BYTES:], Tier.DISK)
