"""The page index: a reader finds exactly the published pages, never a wrong slot, and a copy
that raced a change of its key is always refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.page_index import (
    HEADER_BYTES,
    PageIndexReader,
    PageIndexWriter,
    index_bytes_for,
    num_buckets_for,
    read_header,
)

NUM_SLOTS = 16


def make_index(num_slots: int = NUM_SLOTS, page_bytes: int = 4096) -> tuple[PageIndexWriter, PageIndexReader]:
    buffer = bytearray(index_bytes_for(num_slots))
    return (PageIndexWriter(memoryview(buffer), num_slots, page_bytes, 7),
            PageIndexReader(memoryview(buffer)))


def key_with_home(home: int, tag: int) -> bytes:
    """A 16-byte key whose bucket is ``home`` (of a small table), told apart by ``tag``."""
    return home.to_bytes(8, "little") + tag.to_bytes(8, "little")


# Keys crowd into few homes, so probe runs overlap, wrap around the table's end, and deletions
# shift entries back: the cases a uniform hash would rarely reach.
keys = st.builds(key_with_home, st.integers(0, 7) | st.integers(num_buckets_for(NUM_SLOTS) - 3,
                                                                 num_buckets_for(NUM_SLOTS) - 1),
                 st.integers(0, 5))
ops = st.lists(st.tuples(st.booleans(), keys), max_size=120)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_reader_finds_exactly_the_published_pages(program: list[tuple[bool, bytes]]) -> None:
    writer, reader = make_index()
    truth: dict[bytes, int] = {}
    free = list(range(NUM_SLOTS))
    for publish, key in program:
        if publish and key not in truth and free:
            truth[key] = free.pop()
            writer.published(key, truth[key])
        elif not publish and key in truth:
            writer.unpublished(key)
            free.append(truth.pop(key))
        for probe in {k for _, k in program}:
            found = reader.find(probe)
            if probe in truth:
                assert found is not None and found.slot == truth[probe]
            else:
                assert found is None
    assert len(writer) == len(truth)


@settings(max_examples=200, deadline=None)
@given(ops, keys)
def test_a_change_to_the_key_between_find_and_check_is_seen(program: list[tuple[bool, bytes]],
                                                             victim: bytes) -> None:
    writer, reader = make_index()
    slots = iter(range(NUM_SLOTS))
    live: set[bytes] = set()
    for publish, key in program[:NUM_SLOTS]:
        if publish and key not in live:
            writer.published(key, next(slots))
            live.add(key)
    if victim not in live:
        return
    found = reader.find(victim)
    assert found is not None and reader.unchanged(found)
    # Other keys coming and going may or may not move the victim; its own removal always counts.
    writer.unpublished(victim)
    assert not reader.unchanged(found)
    assert reader.find(victim) is None


def test_closing_tells_readers_and_later_changes_do_nothing() -> None:
    writer, reader = make_index()
    key = key_with_home(3, 1)
    writer.published(key, 5)
    assert reader.is_open and reader.find(key) is not None
    writer.close()
    writer.close()
    assert not reader.is_open
    writer.published(key_with_home(4, 1), 6)  # after close: ignored, no error


def test_header_describes_the_region_and_bad_buffers_are_refused() -> None:
    buffer = bytearray(index_bytes_for(10))
    PageIndexWriter(memoryview(buffer), 10, 8192, 3)
    header = read_header(memoryview(buffer))
    assert (header.num_slots, header.page_bytes, header.num_buckets, header.ns_id) == (10, 8192, 32, 3)
    with pytest.raises(ValueError, match="not a version-1 page index"):
        PageIndexReader(memoryview(bytearray(len(buffer))))
    with pytest.raises(ValueError, match="does not fit"):
        PageIndexReader(memoryview(buffer)[:HEADER_BYTES + 8])
    with pytest.raises(ValueError, match="needs"):
        PageIndexWriter(memoryview(bytearray(64)), 10, 8192, 3)
