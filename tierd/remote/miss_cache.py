"""Pages the remote store was just found not to hold, remembered for a short while.

A request usually asks twice about the same missing page (Lookup, then Acquire or a read), and
every ask of a prefix that starts with a miss is a round trip that cannot hit. Remembering the
miss for ``ttl_s`` saves it; the price is that a page another node writes meanwhile is seen up to
``ttl_s`` later. Bounded: past ``max_pages`` the oldest entries go first. Thread-safe; owns its lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable


class MissCache:
    def __init__(self, ttl_s: float, max_pages: int, clock: Callable[[], float]) -> None:
        self._ttl_s = ttl_s
        self._max_pages = max_pages
        self._clock = clock
        self._lock = threading.Lock()
        self._until_s: OrderedDict[bytes, float] = OrderedDict()

    def missing(self, page_id: bytes) -> bool:
        """True while ``page_id`` is remembered as not stored."""
        with self._lock:
            until_s = self._until_s.get(page_id)
            if until_s is None:
                return False
            if self._clock() < until_s:
                return True
            del self._until_s[page_id]
            return False

    def add(self, page_id: bytes) -> None:
        if self._ttl_s <= 0:
            return
        with self._lock:
            self._until_s[page_id] = self._clock() + self._ttl_s
            self._until_s.move_to_end(page_id)
            while len(self._until_s) > self._max_pages:
                self._until_s.popitem(last=False)

    def discard(self, page_ids: Iterable[bytes]) -> None:
        """Forget ``page_ids`` (this node just wrote them)."""
        with self._lock:
            for page_id in page_ids:
                self._until_s.pop(page_id, None)
