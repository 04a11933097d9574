"""The one way a caller's page object becomes a flat byte view.

Accepts bytes, bytearray, memoryview, numpy arrays and torch tensors (torch is never imported
here: a caller that passes a tensor has imported it already). A shared value module: the store,
the disk tier, the shm regions and the worker library all use ``byte_view``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from tierd.errors import InvalidArgument


def _is_torch_tensor(obj: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _tensor_view(tensor: Any, what: str, writable: bool, allow_device: bool) -> memoryview:
    import torch  # already imported by the caller (see _is_torch_tensor)

    flat = tensor.detach()
    if flat.device.type != "cpu":
        if writable or not allow_device:
            raise InvalidArgument(f"{what} is on {flat.device}; give host memory (a CPU tensor), "
                                  "or use the zero-copy allocate/commit path for device pages")
        flat = flat.cpu()
    if not flat.is_contiguous():
        if writable:
            raise InvalidArgument(f"{what} is not contiguous; give a contiguous tensor to write into")
        flat = flat.contiguous()
    flat = flat.reshape(-1)
    if flat.numel() == 0:
        return memoryview(bytearray() if writable else b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def _array_view(array: np.ndarray, what: str, writable: bool) -> memoryview:
    if not array.flags.c_contiguous:
        if writable:
            raise InvalidArgument(f"{what} is not C-contiguous; give a contiguous array to write into")
        array = np.ascontiguousarray(array)
    view: memoryview = array.reshape(-1).view(np.uint8).data
    return view


def _buffer_view(obj: object, what: str, writable: bool) -> memoryview:
    try:
        view = memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgument(f"{what} is a {type(obj).__name__}; expected bytes, bytearray, "
                              "memoryview, a numpy array or a torch tensor") from None
    if not view.c_contiguous:
        if writable:
            raise InvalidArgument(f"{what} is not C-contiguous; give a contiguous buffer to write into")
        view = memoryview(view.tobytes())
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def byte_view(obj: object, *, what: str, expected_bytes: int | None = None, writable: bool = False,
              allow_device: bool = False, expected_note: str = "") -> memoryview:
    """``obj`` as a flat 1-D ``uint8`` memoryview, without copying where it can.

    A non-contiguous (or, with ``allow_device``, GPU-resident) input is copied when only read;
    ``writable`` refuses read-only and non-contiguous inputs instead. ``expected_bytes``: the size
    the view must have; ``InvalidArgument`` names ``what``, both sizes and ``expected_note``.
    """
    if _is_torch_tensor(obj):
        view = _tensor_view(obj, what, writable, allow_device)
    elif isinstance(obj, np.ndarray):
        view = _array_view(obj, what, writable)
    else:
        view = _buffer_view(obj, what, writable)
    if writable and view.readonly:
        raise InvalidArgument(f"{what} is read-only; give a writable buffer (bytearray, numpy array)")
    if expected_bytes is not None and view.nbytes != expected_bytes:
        note = f" ({expected_note})" if expected_note else ""
        raise InvalidArgument(f"{what} holds {view.nbytes} bytes; expected {expected_bytes} "
                              f"bytes{note}")
    return view


PAGE_BYTES_NOTE = "page_bytes of the namespace's spec"


def page_views(pages: object, page_bytes: int, *, allow_device: bool = False) -> list[memoryview]:
    """Each page of ``pages`` as a read-only flat view of ``page_bytes`` bytes.

    ``pages`` is a sequence of pages, or one numpy array / torch tensor whose first dimension
    indexes pages (e.g. ``[num_pages, num_layers, 2, page_tokens, num_kv_heads, head_dim]``).
    """
    if isinstance(pages, (bytes, bytearray, memoryview, str)):
        raise InvalidArgument("pages must be a sequence of pages (one bytes-like object per key), or "
                              f"an array whose first dimension indexes pages; got a single "
                              f"{type(pages).__name__}")
    if (isinstance(pages, np.ndarray) or _is_torch_tensor(pages)) and getattr(pages, "ndim", 1) == 0:
        raise InvalidArgument("pages is a 0-dimensional array; its first dimension must index pages")
    try:
        items = list(pages)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidArgument(f"pages must be a sequence of pages, got {type(pages).__name__}") from None
    return [byte_view(page, what=f"pages[{i}]", expected_bytes=page_bytes, allow_device=allow_device,
                      expected_note=PAGE_BYTES_NOTE) for i, page in enumerate(items)]
