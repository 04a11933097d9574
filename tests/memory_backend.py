"""An in-memory ``RemoteBackend`` for tests: a dict shared by the stores that use it (two nodes),
with the failures a real cluster has (down, values torn or changed behind tierd's back)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from tierd.remote.base import Fetched, RemoteUnavailable


class MemoryBackend:
    """Header and payload parts per page id, like the Redis backend's two keys."""

    name = "memory"
    failures = 0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.headers: dict[bytes, bytes] = {}
        self.payloads: dict[bytes, bytes] = {}
        self.down = False
        self.calls: dict[str, int] = {"exists": 0, "get_into": 0, "put": 0, "delete": 0}
        self.closed = False

    def _enter(self, call: str) -> None:
        with self._lock:
            self.calls[call] += 1
        if self.down:
            raise RemoteUnavailable("the test says the store is down")

    def exists(self, page_ids: Sequence[bytes], deadline_s: float) -> list[bool]:
        self._enter("exists")
        with self._lock:
            return [pid in self.headers for pid in page_ids]

    def get_into(self, page_ids: Sequence[bytes], views: Sequence[memoryview],
                 deadline_s: float) -> list[Fetched | None]:
        self._enter("get_into")
        out: list[Fetched | None] = []
        with self._lock:
            for pid, view in zip(page_ids, views):
                header, payload = self.headers.get(pid), self.payloads.get(pid)
                if header is None and payload is None:
                    out.append(None)
                    continue
                if payload is not None and len(payload) == view.nbytes:
                    view[:] = payload
                out.append(Fetched(header or b"", -1 if payload is None else len(payload)))
        return out

    def put(self, page_ids: Sequence[bytes], headers: Sequence[bytes],
            payloads: Sequence[memoryview], deadline_s: float) -> list[bool]:
        self._enter("put")
        with self._lock:
            for pid, header, payload in zip(page_ids, headers, payloads):
                self.payloads[pid] = bytes(payload)
                self.headers[pid] = bytes(header)
        return [True] * len(page_ids)

    def delete(self, page_ids: Sequence[bytes], deadline_s: float) -> None:
        self._enter("delete")
        with self._lock:
            for pid in page_ids:
                self.headers.pop(pid, None)
                self.payloads.pop(pid, None)

    def close(self) -> None:
        self.closed = True
