"""``PageStore.read_pinned``: the page socket sends pages from their own slots, so while the ``with``
lasts a slot must not be evicted, overwritten or freed, whatever else happens to its key; where a
page is not in host memory the pages are copies. Both engines (the fake device's hbm has no host
view: its pages are always copies)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_helpers import make_keys, make_pages

from tierd.spec import Namespace
from tierd.store import PageStore
from tierd.tier import Tier

DRAM_PAGES = 16  # small_config's dram slots for the first namespace


def test_pinned_pages_survive_delete_and_slot_reuse(store: PageStore, ns: Namespace) -> None:
    keys, pages = make_keys(ns, 4), make_pages(ns, 4, seed=1)
    store.put(ns.ns_id, keys, pages, Tier.DRAM)
    flood_keys = make_keys(ns, 3 * DRAM_PAGES, start_token=10_000)
    flood = make_pages(ns, len(flood_keys), seed=2)
    with store.read_pinned(ns.ns_id, keys + make_keys(ns, 1, start_token=99_000)) as got:
        assert [bytes(page) for page in got] == pages  # the cached prefix, not the miss after it
        assert store.delete(ns.ns_id, keys) == 4
        for start in range(0, len(flood_keys), 4):  # every dram slot is wanted, again and again
            store.put(ns.ns_id, flood_keys[start:start + 4], flood[start:start + 4], Tier.DRAM)
        assert [bytes(page) for page in got] == pages  # still the bytes read, not the flood's
    assert store.get(ns.ns_id, keys) == []
    # Once the with has ended, every slot is free to take again.
    store.put(ns.ns_id, flood_keys[:DRAM_PAGES], flood[:DRAM_PAGES], Tier.DRAM)
    assert store.get(ns.ns_id, flood_keys[:DRAM_PAGES]) == flood[:DRAM_PAGES]


def test_pages_on_disk_or_device_are_copies(store: PageStore, ns: Namespace) -> None:
    keys, pages = make_keys(ns, 3), make_pages(ns, 3, seed=3)
    store.put(ns.ns_id, keys[:1], pages[:1], Tier.HBM)  # device memory on the fake engine
    store.put(ns.ns_id, keys[1:], pages[1:], Tier.DRAM, parent=keys[0])
    store.flush()
    flood_keys = make_keys(ns, 3 * DRAM_PAGES, start_token=10_000)
    for start in range(0, len(flood_keys), 4):  # dram's pages go to disk
        store.put(ns.ns_id, flood_keys[start:start + 4], make_pages(ns, 4, seed=start), Tier.DRAM)
    assert store.peek(ns.ns_id, keys[2:])[0].tier is Tier.DISK  # type: ignore[union-attr]
    with store.read_pinned(ns.ns_id, keys) as got:
        assert [bytes(page) for page in got] == pages
    assert store.get(ns.ns_id, keys) == pages  # reading pinned left the pages readable


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["delete", "rewrite", "flood"]), st.integers(0, 3)),
                    min_size=1, max_size=12))
def test_nothing_done_meanwhile_changes_pinned_bytes(store: PageStore, ns: Namespace,
                                                     ops: list[tuple[str, int]]) -> None:
    keys = make_keys(ns, 4, start_token=50_000)
    originals = make_pages(ns, 4, seed=4)
    store.delete(ns.ns_id, keys)
    store.put(ns.ns_id, keys, originals, Tier.DRAM)
    with store.read_pinned(ns.ns_id, keys) as got:
        for n, (op, index) in enumerate(ops):
            if op in ("delete", "rewrite"):
                store.delete(ns.ns_id, [keys[index]])
            if op == "rewrite":
                store.put(ns.ns_id, [keys[index]], make_pages(ns, 1, seed=100 + n), Tier.DRAM)
            if op == "flood":
                # Every slot but the pinned four: a put takes all of its slots or none.
                flood_keys = make_keys(ns, DRAM_PAGES - 4, start_token=60_000 + n * 10_000)
                store.put(ns.ns_id, flood_keys, make_pages(ns, DRAM_PAGES - 4, seed=200 + n), Tier.DRAM)
        assert [bytes(page) for page in got] == originals
