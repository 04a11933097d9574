"""``tierd.buffers``: the one way page objects become flat byte views."""

from __future__ import annotations

import numpy as np
import pytest

from tierd.buffers import byte_view, page_views
from tierd.errors import InvalidArgument


def test_views_borrow_contiguous_buffers_and_copy_only_strided_reads() -> None:
    raw = bytearray(range(16))
    view = byte_view(raw, what="page", expected_bytes=16, writable=True)
    view[0] = 99
    assert raw[0] == 99, "a writable view borrows the caller's memory"
    strided = np.arange(32, dtype=np.uint8)[::2]
    assert bytes(byte_view(strided, what="page")) == bytes(range(0, 32, 2))
    with pytest.raises(InvalidArgument, match="not C-contiguous"):
        byte_view(strided, what="out", writable=True)


def test_sizes_types_and_read_only_buffers_are_named() -> None:
    with pytest.raises(InvalidArgument, match=r"pages\[3\] holds 5 bytes; expected 8 bytes \(note\)"):
        byte_view(b"12345", what="pages[3]", expected_bytes=8, expected_note="note")
    with pytest.raises(InvalidArgument, match="outs\\[0\\] is read-only"):
        byte_view(b"12345678", what="outs[0]", writable=True)
    with pytest.raises(InvalidArgument, match="is a dict; expected bytes"):
        byte_view({}, what="page")


def test_torch_tensors_of_any_dtype_give_their_bytes() -> None:
    torch = pytest.importorskip("torch")
    tensor = torch.arange(8, dtype=torch.float32).to(torch.bfloat16)
    assert bytes(byte_view(tensor, what="page")) == tensor.view(torch.uint8).numpy().tobytes()
    assert bytes(byte_view(tensor.t() if tensor.dim() > 1 else tensor[::2], what="page")) == \
        tensor[::2].contiguous().view(torch.uint8).numpy().tobytes()


def test_page_views_take_a_sequence_or_an_array_indexed_by_page() -> None:
    stacked = np.arange(24, dtype=np.uint8).reshape(3, 8)
    assert [bytes(v) for v in page_views(stacked, 8)] == [bytes(row) for row in stacked]
    for single in (b"x" * 8, "text", np.zeros(())):
        with pytest.raises(InvalidArgument):
            page_views(single, 8)
