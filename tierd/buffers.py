"""Turning caller page objects (bytes, bytearray, memoryview, numpy, torch CPU tensors) into flat
byte views without copying, with errors that say which page was wrong and how."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tierd.errors import InvalidArgument


def as_byte_view(page: object, expected_bytes: int, index: int = 0) -> memoryview:
    """A read-only 1-D ``uint8`` view of ``page``; ``InvalidArgument`` if it is not ``expected_bytes``."""
    view: memoryview
    if type(page).__module__.startswith("torch"):
        tensor = page.detach()  # type: ignore[attr-defined]
        if tensor.device.type != "cpu":
            raise InvalidArgument(f"pages[{index}] is on {tensor.device}; the byte path takes host "
                                  "memory: use the zero-copy allocate/commit path for device pages")
        view = memoryview(tensor.contiguous().view(-1).numpy().view(np.uint8))
    elif isinstance(page, np.ndarray):
        view = memoryview(np.ascontiguousarray(page).reshape(-1).view(np.uint8))
    else:
        try:
            view = memoryview(page)  # type: ignore[arg-type]
        except TypeError:
            raise InvalidArgument(f"pages[{index}] is a {type(page).__name__}; expected bytes, "
                                  "bytearray, memoryview, a numpy array or a torch CPU tensor") from None
        if not view.c_contiguous:
            raise InvalidArgument(f"pages[{index}] is not contiguous")
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    if view.nbytes != expected_bytes:
        raise InvalidArgument(f"pages[{index}] holds {view.nbytes} bytes; this namespace's pages are "
                              f"{expected_bytes} bytes (page_bytes of its spec)")
    return view


def as_byte_views(pages: Sequence[object], expected_bytes: int) -> list[memoryview]:
    return [as_byte_view(page, expected_bytes, i) for i, page in enumerate(pages)]
