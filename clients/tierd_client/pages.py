"""Page payloads given by a caller (bytes-like, numpy, torch) as flat byte views, checked.

A page is ``page_bytes`` contiguous bytes laid out ``[num_layers][2][page_tokens][num_kv_heads]
[head_dim]``. The caller keeps ownership of its buffers; views returned here borrow them (a copy is
made only for non-contiguous arrays and for torch tensors that live on a GPU).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from tierd.errors import InvalidArgument
from tierd.keys import check_keys
from tierd_client.errors import InvalidArgumentError


def _is_torch_tensor(obj: object) -> bool:
    # Never import torch here: a caller that passed a tensor has already imported it.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _tensor_bytes(tensor: Any) -> memoryview:
    """A torch tensor's bytes (any dtype, bfloat16 included), on the host, contiguous."""
    import torch  # already imported by the caller (see _is_torch_tensor)

    flat = tensor.detach()
    if flat.device.type != "cpu":
        flat = flat.cpu()
    flat = flat.contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def page_view(page: object, page_bytes: int, index: int) -> memoryview:
    """One page as a flat ``memoryview`` of ``page_bytes`` bytes; ``InvalidArgumentError`` otherwise."""
    if _is_torch_tensor(page):
        view = _tensor_bytes(page)
    elif isinstance(page, np.ndarray):
        view = np.ascontiguousarray(page).data.cast("B")
    else:
        try:
            view = memoryview(page)  # type: ignore[arg-type]
        except TypeError:
            raise InvalidArgumentError(
                f"pages[{index}] is a {type(page).__name__}; expected bytes, bytearray, memoryview, "
                "a numpy array or a torch tensor") from None
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        view = view.cast("B")
    if view.nbytes != page_bytes:
        raise InvalidArgumentError(
            f"pages[{index}] holds {view.nbytes} bytes; this namespace's pages are {page_bytes} "
            "bytes (num_layers * 2 * page_tokens * num_kv_heads * head_dim * itemsize)")
    return view


def page_views(pages: object, page_bytes: int) -> list[memoryview]:
    """Each page of ``pages`` as a checked flat view.

    ``pages`` is a sequence of pages, or one numpy array / torch tensor whose first dimension
    indexes pages (e.g. shape ``[num_pages, num_layers, 2, page_tokens, num_kv_heads, head_dim]``).
    """
    if isinstance(pages, (bytes, bytearray, memoryview, str)):
        raise InvalidArgumentError(
            "pages must be a sequence of pages (one bytes-like object per key), or an array whose "
            f"first dimension indexes pages; got a single {type(pages).__name__}")
    if (isinstance(pages, np.ndarray) or _is_torch_tensor(pages)) and getattr(pages, "ndim", 1) == 0:
        raise InvalidArgumentError("pages is a 0-dimensional array; its first dimension must index pages")
    try:
        items = list(pages)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidArgumentError(
            f"pages must be a sequence of pages, got {type(pages).__name__}") from None
    return [page_view(page, page_bytes, i) for i, page in enumerate(items)]


def checked_keys_and_pages(keys: Sequence[object], pages: object,
                           page_bytes: int) -> tuple[list[bytes], list[memoryview]]:
    """Keys (16 bytes each) and pages (``page_bytes`` each), equally many; raises before sending."""
    checked = checked_key_list(keys)
    views = page_views(pages, page_bytes)
    if len(views) != len(checked):
        raise InvalidArgumentError(
            f"got {len(checked)} keys and {len(views)} pages; put needs one page per key")
    return checked, views


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
