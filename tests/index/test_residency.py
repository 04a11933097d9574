"""Index bookkeeping: LRU order, pins, pending stores, disk budget accounting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierd.errors import InvalidArgument
from tierd.index.residency import DiskResidency, MemoryResidency


def _publish(res: MemoryResidency, keys: list[bytes]) -> dict[bytes, int]:
    slots = res.reserve(len(keys))
    assert slots is not None
    for key, slot in zip(keys, slots):
        res.begin_store(key, slot)
        assert res.complete_store(key, True) == slot
    return dict(zip(keys, slots))


def test_victims_are_least_recently_used_and_never_pinned() -> None:
    res = MemoryResidency(4)
    where = _publish(res, [b"a" * 16, b"b" * 16, b"c" * 16, b"d" * 16])
    res.touch(b"a" * 16)                 # order now b, c, d, a
    res.pin(where[b"b" * 16])
    assert [k for k, _ in res.victims(2)] == [b"c" * 16, b"d" * 16]
    res.unpin(where[b"b" * 16])
    assert [k for k, _ in res.victims(1)] == [b"b" * 16]
    with pytest.raises(InvalidArgument):
        res.unpin(where[b"b" * 16])


def test_pending_pages_are_invisible_and_cancelled_ones_never_publish() -> None:
    res = MemoryResidency(2)
    (slot,) = res.reserve(1)
    res.begin_store(b"k" * 16, slot)
    assert res.slot_of(b"k" * 16) is None and res.victims(2) == []
    assert res.cancel_pending(b"k" * 16)
    assert res.complete_store(b"k" * 16, True) is None
    assert res.slot_of(b"k" * 16) is None and res.used_slots == 0


def test_duplicate_store_frees_the_second_slot() -> None:
    res = MemoryResidency(2)
    _publish(res, [b"k" * 16])
    (slot,) = res.reserve(1)
    res.begin_store(b"k" * 16, slot)
    assert res.complete_store(b"k" * 16, True) is None
    assert res.used_slots == 1


def test_remove_of_a_pinned_page_keeps_its_slot_until_unpinned() -> None:
    res = MemoryResidency(1)
    slot = _publish(res, [b"k" * 16])[b"k" * 16]
    res.pin(slot)
    assert res.remove(b"k" * 16) == slot
    assert res.used_slots == 1          # the pinned slot is not handed out again
    assert res.reserve(1) is None


@given(st.lists(st.tuples(st.sampled_from(["touch", "pin", "unpin"]), st.integers(0, 7)), max_size=60))
def test_victims_follow_recency_among_unpinned_pages(ops: list[tuple[str, int]]) -> None:
    keys = [bytes([i]) * 16 for i in range(8)]
    res = MemoryResidency(8)
    where = _publish(res, keys)
    order = list(keys)          # the model: least recent first
    pins = {k: 0 for k in keys}
    for op, i in ops:
        key = keys[i]
        if op == "touch":
            res.touch(key)
            order.remove(key)
            order.append(key)
        elif op == "pin":
            res.pin(where[key])
            pins[key] += 1
        elif pins[key]:
            res.unpin(where[key])
            pins[key] -= 1
    expected = [k for k in order if not pins[k]]
    assert [k for k, _ in res.victims(8)] == expected


def test_disk_residency_accounts_bytes_and_picks_lru_victims() -> None:
    disk = DiskResidency()
    for i in range(4):
        disk.add(bytes([i]) * 20, 100)
    assert disk.begin_write(b"w" * 20, 50) and not disk.begin_write(b"w" * 20, 50)
    assert disk.used_bytes == 450
    disk.complete_write(b"w" * 20, success=False)
    assert disk.used_bytes == 400 and b"w" * 20 not in disk
    disk.touch(bytes([0]) * 20)
    assert disk.victims(150) == [bytes([1]) * 20, bytes([2]) * 20]
    assert disk.victims(150, exclude={bytes([1]) * 20}) == [bytes([2]) * 20, bytes([3]) * 20]
    assert disk.remove(bytes([1]) * 20) and disk.used_bytes == 300
