"""A memory tier's byte budget, shared by the regions carved from it (shm or device arenas).

``capacity_bytes`` is a budget, not an allocation: a region's bytes are reserved before it is
created and released when it closes (or when creating it failed). Thread-safe; owns its lock.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from tierd.errors import InvalidArgument, ResourceExhausted, Unavailable
from tierd.tier import Tier
from tierd.units import format_size


class _Closable(Protocol):
    def close(self) -> None: ...


R = TypeVar("R", bound=_Closable)


def check_int(value: object, what: str, minimum: int) -> int:
    """``value`` as an int (``InvalidArgument`` for a bool, a non-integer or one below ``minimum``):
    arenas' sizes, counts and slots come from callers."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} must be an integer >= {minimum}, got {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgument(f"{what} must be an integer >= {minimum}, got "
                              f"{type(value).__name__} {value!r}") from None
    if number < minimum:
        raise InvalidArgument(f"{what} must be an integer >= {minimum}, got {number}")
    return number


class ArenaBudget:
    def __init__(self, tier: Tier, capacity_bytes: int) -> None:
        self._tier = tier
        self._capacity_bytes = capacity_bytes
        self._lock = threading.Lock()
        self._assigned_bytes = 0  # includes regions still being created
        self._closed = False

    @property
    def capacity_bytes(self) -> int:
        return self._capacity_bytes

    @property
    def assigned_bytes(self) -> int:
        """Bytes held by open regions (and by regions being created)."""
        with self._lock:
            return self._assigned_bytes

    @property
    def unassigned_bytes(self) -> int:
        with self._lock:
            return self._capacity_bytes - self._assigned_bytes

    def reserve(self, ns_id: int, num_slots: int, page_bytes: int) -> int:
        """Take ``num_slots * page_bytes`` for a region of namespace ``ns_id``; the bytes taken.

        ``ResourceExhausted`` says how much was asked and how much is left; ``Unavailable`` once
        closed.
        """
        size_bytes = num_slots * page_bytes
        label = self._tier.label
        with self._lock:
            if self._closed:
                raise Unavailable(f"the {label} arena is closed; no new regions")
            left_bytes = self._capacity_bytes - self._assigned_bytes
            if size_bytes > left_bytes:
                raise ResourceExhausted(
                    f"a {label} region for namespace {ns_id} asks for {format_size(size_bytes)} "
                    f"({size_bytes} bytes = {num_slots} slots x {page_bytes} bytes) but only "
                    f"{format_size(left_bytes)} ({left_bytes} bytes) of the {label} budget of "
                    f"{self._capacity_bytes} bytes is left; ask for fewer slots, close other "
                    f"namespaces or raise the tier's capacity")
            self._assigned_bytes += size_bytes
        return size_bytes

    def carve(self, ns_id: int, num_slots: int, page_bytes: int, make: Callable[[], R],
              lock: threading.Lock, keep: Callable[[R], None]) -> R:
        """A region made by ``make`` within the budget: ``reserve`` its bytes, ``make`` it, then
        ``keep`` it (under the arena's ``lock``) unless the arena closed meanwhile.

        A failed ``make`` gives the bytes back; a region made while the arena closed is closed
        (``R.close``), its bytes given back, and ``Unavailable`` raised.
        """
        size_bytes = self.reserve(ns_id, num_slots, page_bytes)
        try:
            region = make()
        except BaseException:
            self.release(size_bytes)
            raise
        with lock:
            closed = self.closed
            if not closed:
                keep(region)
        if closed:
            region.close()
            self.release(size_bytes)
            raise Unavailable(f"the {self._tier.label} arena was closed while a region for "
                              f"namespace {ns_id} was being created")
        return region

    def release(self, size_bytes: int) -> None:
        with self._lock:
            self._assigned_bytes -= size_bytes

    def close(self) -> bool:
        """Refuse later reservations; True the first time."""
        with self._lock:
            first, self._closed = not self._closed, True
            return first

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed
