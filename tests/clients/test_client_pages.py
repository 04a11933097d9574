"""Client-side page checks: every accepted payload type gives the same bytes, bad ones fail early."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.errors import InvalidArgument
from tierd_client import InvalidArgumentError, PageSpec
from tierd_client.pages import checked_key_list, checked_keys_and_pages, page_views

SPEC = PageSpec(model="m@1", dtype="bfloat16", num_layers=2, num_kv_heads=2, head_dim=8,
                page_tokens=4)
PAGE_BYTES = SPEC.page_bytes


def _pages(num_pages: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, PAGE_BYTES, dtype=np.uint8).tobytes() for _ in range(num_pages)]


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "numpy_u8", "numpy_f16",
                                  "numpy_stack", "torch_bf16", "torch_stack", "numpy_strided"])
def test_every_payload_type_gives_the_callers_bytes(kind: str) -> None:
    raw = _pages(3, seed=1)
    arrays = [np.frombuffer(p, dtype=np.uint8) for p in raw]
    shape = SPEC.page_shape
    if kind == "bytes":
        pages: object = raw
    elif kind == "bytearray":
        pages = [bytearray(p) for p in raw]
    elif kind == "memoryview":
        pages = [memoryview(p) for p in raw]
    elif kind == "numpy_u8":
        pages = arrays
    elif kind == "numpy_f16":
        pages = [a.view(np.float16).reshape(shape) for a in arrays]
    elif kind == "numpy_stack":
        pages = np.stack(arrays).view(np.uint16).reshape(3, *shape)
    elif kind == "torch_bf16":
        pages = [torch.from_numpy(a.copy()).view(torch.bfloat16).reshape(shape) for a in arrays]
    elif kind == "torch_stack":
        pages = torch.from_numpy(np.stack(arrays)).view(torch.bfloat16).reshape(3, *shape)
    else:  # a transposed (non-contiguous) view: its logical order is what gets sent
        stacked = np.stack([a.reshape(2, -1) for a in arrays])
        pages = [np.ascontiguousarray(s.T).T for s in stacked]
    views = page_views(pages, PAGE_BYTES)
    assert [bytes(v) for v in views] == raw


def test_wrong_page_size_names_the_page_and_the_expected_size() -> None:
    pages = _pages(3)
    pages[1] = pages[1][:-2]
    with pytest.raises(InvalidArgumentError) as info:
        page_views(pages, PAGE_BYTES)
    message = str(info.value)
    assert "pages[1]" in message and str(PAGE_BYTES) in message and str(PAGE_BYTES - 2) in message
    assert info.value.code.name == "INVALID_ARGUMENT"
    assert isinstance(info.value, InvalidArgument)  # callers of the in-process store catch it too


def test_key_and_page_counts_must_match() -> None:
    keys = [bytes([i]) * 16 for i in range(3)]
    with pytest.raises(InvalidArgumentError, match="3 keys and 2 pages"):
        checked_keys_and_pages(keys, _pages(2), PAGE_BYTES)


@pytest.mark.parametrize("pages", [b"x" * 10, "text", 42, np.zeros(())])
def test_a_single_object_is_not_a_page_sequence(pages: object) -> None:
    with pytest.raises(InvalidArgumentError):
        page_views(pages, PAGE_BYTES)


def test_unsupported_page_type_is_named() -> None:
    with pytest.raises(InvalidArgumentError, match="pages\\[0\\] is a dict"):
        page_views([{}], PAGE_BYTES)


@pytest.mark.parametrize("keys, match", [([b"short"], "keys\\[0\\]"), (b"x" * 16, "list of 16-byte"),
                                         ([b"k" * 16, "s" * 16], "keys\\[1\\]")])
def test_bad_keys_fail_before_sending(keys: object, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        checked_key_list(keys)  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(page_bytes=st.integers(1, 300), num_pages=st.integers(0, 6), data=st.data())
def test_views_round_trip_any_size(page_bytes: int, num_pages: int, data: st.DataObject) -> None:
    raw = [data.draw(st.binary(min_size=page_bytes, max_size=page_bytes)) for _ in range(num_pages)]
    keys = [bytes([i]) * 16 for i in range(num_pages)]
    checked, views = checked_keys_and_pages(keys, [bytearray(p) for p in raw], page_bytes)
    assert checked == keys
    assert [bytes(v) for v in views] == raw
