"""The client processes of ``benchmarks/local.py`` and the parent's handle on them.

Each worker is a spawned process (never forked: the parent may hold gRPC state, and a fork of a
process with gRPC threads can crash) with its own clients and keys. The parent drives every
worker through a pipe, one command at a time: ``open`` a path, ``prepare`` a run, ``run`` the timed
loop, ``check`` it, ``close``. Commands go to all workers of a row before any reply is read, so
the timed loops of several workers overlap.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

COMMAND_TIMEOUT_S = 1800.0  # one command never takes this long unless a worker hangs


class WorkerError(Exception):
    """A command failed in a worker (its message), or a worker died or hung."""


@dataclass(frozen=True)
class Timing:
    """One worker's timed loop: start and end (``time.perf_counter``, comparable across
    processes on Linux: CLOCK_MONOTONIC) and the latency of each call in nanoseconds."""

    start_s: float
    end_s: float
    latencies_ns: np.ndarray


def timed_loop(fn: Any, num_calls: int) -> Timing:
    latencies = np.empty(num_calls, np.int64)
    clock = time.perf_counter_ns
    start = time.perf_counter()
    for i in range(num_calls):
        t0 = clock()
        fn(i)
        latencies[i] = clock() - t0
    return Timing(start, time.perf_counter(), latencies)


def worker_main(conn: multiprocessing.connection.Connection, worker: int) -> None:
    from local_paths import PagePath, open_path

    path: PagePath | None = None
    while True:
        cmd, arg = conn.recv()
        try:
            if cmd == "stop":
                break
            result: Any = None
            if cmd in ("open", "close") and path is not None:
                closing, path = path, None  # a path is closed once, even if closing fails
                closing.close()
            if cmd == "open":
                name, page_bytes, num_pages, socket = arg
                path = open_path(name, page_bytes, num_pages, worker, socket)
            elif cmd == "close":
                pass
            elif path is None:
                raise RuntimeError(f"{cmd!r} before open")
            elif cmd == "prepare":
                path.prepare(*arg)
            elif cmd == "run":
                result = timed_loop(path.call(arg), path.num_pages)
            elif cmd == "check":
                result = path.check(arg)
            conn.send(("ok", result))
        except Exception as exc:  # reported to the parent, which marks the row failed
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            conn.send(("error", detail))
    if path is not None:
        path.close()


class Pool:
    """``size`` spawned workers; ``call(k, cmd, arg)`` runs a command on the first ``k``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[Any] = []
        self._conns: list[multiprocessing.connection.Connection] = []
        self.start()

    def start(self) -> None:
        for worker in range(self.size):
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(target=worker_main, args=(child, worker), daemon=True,
                                     name=f"bench-client-{worker}")
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    def call(self, k: int, cmd: str, arg: object = None) -> list[Any]:
        """Send to workers ``0..k-1``, then collect every reply; ``WorkerError`` with the first
        failure (after all replies are in, so no worker is left mid-command)."""
        for conn in self._conns[:k]:
            conn.send((cmd, arg))
        results: list[Any] = []
        errors: dict[str, list[int]] = {}  # message -> the workers that reported it
        for worker, conn in enumerate(self._conns[:k]):
            if not conn.poll(COMMAND_TIMEOUT_S):
                self.restart()
                raise WorkerError(f"worker {worker} did not answer {cmd!r} in {COMMAND_TIMEOUT_S} s")
            try:
                status, value = conn.recv()
            except EOFError:
                code = self._procs[worker].exitcode
                self.restart()
                raise WorkerError(f"worker {worker} died during {cmd!r} (exit code {code})") from None
            if status == "ok":
                results.append(value)
            else:
                errors.setdefault(value, []).append(worker)
        if errors:
            raise WorkerError("; ".join(f"worker{'s' if len(ws) > 1 else ''} {','.join(map(str, ws))}: {msg}"
                                        for msg, ws in errors.items()))
        return results

    def stop(self) -> None:
        for conn, proc in zip(self._conns, self._procs):
            if proc.is_alive():
                with contextlib.suppress(OSError):  # it died meanwhile: joined below
                    conn.send(("stop", None))
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._procs, self._conns = [], []

    def restart(self) -> None:
        """A worker died or hung: replace every worker (none is left with a half-done command)."""
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
        self._procs, self._conns = [], []
        self.start()
