"""Page payloads given by a caller (bytes-like, numpy, torch) as flat byte views, checked.

A page is ``page_bytes`` contiguous bytes laid out ``[num_layers][2][page_tokens][num_kv_heads]
[head_dim]``. The caller keeps ownership of its buffers; views returned here borrow them (a copy is
made only for non-contiguous arrays and for torch tensors that live on a GPU). The conversion is
``tierd.buffers``' (shared with the daemon); this module gives its errors the client's classes.
"""

from __future__ import annotations

from collections.abc import Sequence

from tierd import buffers
from tierd.errors import InvalidArgument
from tierd.keys import check_keys, check_parent
from tierd_client.errors import InvalidArgumentError


def page_views(pages: object, page_bytes: int) -> list[memoryview]:
    """Each page of ``pages`` as a checked flat view (see ``tierd.buffers.page_views``); GPU
    tensors are copied to the host for the byte path."""
    try:
        return buffers.page_views(pages, page_bytes, allow_device=True)
    except InvalidArgument as exc:
        raise InvalidArgumentError(str(exc)) from None


def checked_keys_and_pages(keys: Sequence[object], pages: object,
                           page_bytes: int) -> tuple[list[bytes], list[memoryview]]:
    """Keys (16 bytes each) and pages (``page_bytes`` each), equally many; raises before sending."""
    checked = checked_key_list(keys)
    views = page_views(pages, page_bytes)
    if len(views) != len(checked):
        raise InvalidArgumentError(
            f"got {len(checked)} keys and {len(views)} pages; put needs one page per key")
    return checked, views


def checked_parent(parent: object) -> bytes | None:
    """``tierd.keys.check_parent`` with the client's error class: ``None`` or 16 bytes."""
    try:
        return check_parent(parent)
    except InvalidArgument as exc:
        raise InvalidArgumentError(str(exc)) from None


def checked_key_list(keys: Sequence[object]) -> list[bytes]:
    """``tierd.keys.check_keys`` with the client's error class."""
    if isinstance(keys, (bytes, bytearray, memoryview, str)):
        raise InvalidArgumentError(
            "keys must be a list of 16-byte keys (e.g. from NamespaceHandle.keys), not one "
            f"{type(keys).__name__}")
    try:
        return check_keys(keys)
    except InvalidArgument as exc:
        raise InvalidArgumentError(str(exc)) from None
