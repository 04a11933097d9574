"""A strict CPU implementation of ``tierd.tiers.cuda_runtime.CudaRuntime`` for tests.

``FakeCudaRuntime`` behaves like one CUDA device where it matters for correctness and refuses,
with a ``CudaError`` naming the call, what a real device would punish with corruption:

- device memory lives in bytearrays at fake addresses (``DEVICE_BASE`` upward, 256 B aligned, a
  gap after each allocation) that no host code can reach; fresh memory holds ``FRESH_BYTE``;
- each stream is one worker thread running its queued ops in order, each after a seeded random
  delay; page-locked (registered) host memory is read or written only when the op runs, so a
  missing ``wait_event`` shows up as wrong bytes. Pageable sources are snapshotted at the call
  and pageable destinations block the call until the copy ran, as CUDA does;
- every protocol call needs a thread that called ``bind_thread``; freeing or memsetting memory
  that a queued copy still touches, bad ranges and overlapping registrations raise.

The inspection helpers (``read_device`` ... ``close``) work from any thread.
"""

from __future__ import annotations

import bisect
import ctypes
import random
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tierd.tiers.cuda_runtime import IPC_HANDLE_BYTES, CopyRange, CudaError

# The kernel's half of the x86-64/arm64 address space: never a user-space (host) address.
DEVICE_BASE = 0xFFFF_9000_0000_0000
DEVICE_LIMIT = 0xFFFF_A000_0000_0000   # every address in [DEVICE_BASE, DEVICE_LIMIT) is fake device memory
DEVICE_ALIGN_BYTES = 256
DEVICE_GAP_BYTES = 1 << 20   # unmapped bytes after each allocation: an overrun never lands in the next
FRESH_BYTE = 0xA5            # cudaMalloc does not zero

PROTOCOL_CALLS = frozenset({
    "bind_thread", "mem_info", "malloc", "free", "memset", "ipc_mem_handle", "host_register",
    "host_unregister", "create_stream", "destroy_stream", "copy_batch_async", "record_event",
    "wait_event", "destroy_event",
})


@dataclass(frozen=True)
class _Place:
    """Where one end of a copy is: ``base`` is the allocation or registration holding it (0 when
    pageable)."""

    kind: Literal["device", "pinned", "pageable"]
    address: int
    base: int


@dataclass
class _Event:
    event_id: int
    stream: int
    done: bool = False
    failed: bool = False


@dataclass
class _Op:
    """One queued copy (``event`` None) or event record, with the delay before it runs."""

    delay_s: float
    dst: _Place | None = None
    src: _Place | None = None
    size_bytes: int = 0
    snapshot: bytes | None = None
    event: _Event | None = None
    done: bool = False


@dataclass
class _Stream:
    stream_id: int
    queue: deque[_Op] = field(default_factory=deque)
    copy_failed: bool = False   # since the stream's last event
    stopping: bool = False
    thread: threading.Thread | None = None


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _overlaps(start_a: int, size_a: int, start_b: int, size_b: int) -> bool:
    return start_a < start_b + size_b and start_b < start_a + size_a


class FakeCudaRuntime:
    """One fake CUDA device of ``total_bytes`` (see the module docstring)."""

    def __init__(self, device_index: int = 0, total_bytes: int = 1 << 30, *, max_register_bytes: int = 1 << 40,
                 min_delay_s: float = 0.0, max_delay_s: float = 0.002, seed: int = 0) -> None:
        if not 0 <= min_delay_s <= max_delay_s:
            raise ValueError(f"need 0 <= min_delay_s <= max_delay_s, got {min_delay_s}, {max_delay_s}")
        self._device_index = device_index
        self._total_bytes = total_bytes
        self._max_register_bytes = max_register_bytes
        self._min_delay_s = min_delay_s
        self._max_delay_s = max_delay_s
        self._rng = random.Random(seed)
        self._cond = threading.Condition(threading.Lock())
        self._bound = threading.local()
        self._calls: Counter[str] = Counter()
        self._memory: dict[int, bytearray] = {}    # allocation base -> its bytes
        self._bases: list[int] = []                # sorted live allocation bases
        self._next_ptr = DEVICE_BASE
        self._handles: dict[bytes, int] = {}       # IPC handle -> base (kept after free)
        self._registered: dict[int, int] = {}      # host address -> size_bytes
        self._streams: dict[int, _Stream] = {}
        self._events: dict[int, _Event] = {}
        self._next_id = 1
        self._fail_copies = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"FakeCudaRuntime(cuda:{self._device_index})"

    # -- protocol ---------------------------------------------------------------------------

    @property
    def device_index(self) -> int:
        return self._device_index

    def bind_thread(self) -> None:
        with self._cond:
            self._enter("bind_thread", need_bound=False)
            self._bound.yes = True

    def mem_info(self) -> tuple[int, int]:
        with self._cond:
            self._enter("mem_info")
            return self._total_bytes - self._allocated_bytes(), self._total_bytes

    def malloc(self, size_bytes: int) -> int:
        with self._cond:
            self._enter("malloc")
            if size_bytes <= 0:
                raise self._error("malloc", f"size_bytes must be > 0, got {size_bytes}")
            free_bytes = self._total_bytes - self._allocated_bytes()
            if size_bytes > free_bytes or self._next_ptr + size_bytes > DEVICE_LIMIT:
                raise self._error("malloc", f"out of memory: asked for {size_bytes} B, {free_bytes} B free "
                                            f"of {self._total_bytes} B")
            base = self._next_ptr
            self._next_ptr = _align_up(base + size_bytes + DEVICE_GAP_BYTES, DEVICE_ALIGN_BYTES)
            self._memory[base] = bytearray([FRESH_BYTE]) * size_bytes
            bisect.insort(self._bases, base)
            return base

    def free(self, ptr: int) -> None:
        with self._cond:
            self._enter("free")
            if ptr not in self._memory:
                raise self._error("free", f"{ptr:#x} is not the base of a live allocation")
            if any(self._op_touches(op, ptr) for op in self._pending_ops()):
                raise self._error("free", f"allocation {ptr:#x} is still touched by a queued copy: wait for "
                                          f"its event before freeing")
            del self._memory[ptr]
            self._bases.remove(ptr)

    def memset(self, ptr: int, value: int, size_bytes: int) -> None:
        with self._cond:
            self._enter("memset")
            if not 0 <= value <= 0xFF:
                raise self._error("memset", f"value must be a byte (0..255), got {value}")
            base = self._device_range("memset", ptr, size_bytes)
            for op in self._pending_ops():
                for place in (op.dst, op.src):
                    if place is not None and place.kind == "device" and _overlaps(
                            place.address, op.size_bytes, ptr, size_bytes):
                        raise self._error("memset", f"[{ptr:#x}, +{size_bytes}) is touched by a queued copy: "
                                                    f"wait for its event first")
            offset = ptr - base
            self._memory[base][offset:offset + size_bytes] = bytes([value]) * size_bytes

    def ipc_mem_handle(self, ptr: int) -> bytes:
        with self._cond:
            self._enter("ipc_mem_handle")
            if ptr not in self._memory:
                raise self._error("ipc_mem_handle", f"{ptr:#x} is not the base of a live allocation")
            handle = struct.pack("<8sQQ", b"fakeipc\0", self._device_index, ptr).ljust(IPC_HANDLE_BYTES, b"\0")
            self._handles[handle] = ptr
            return handle

    def host_register(self, address: int, size_bytes: int) -> None:
        with self._cond:
            self._enter("host_register")
            if address <= 0 or size_bytes <= 0:
                raise self._error("host_register", f"needs an address > 0 and size_bytes > 0, got {address:#x}, "
                                                   f"{size_bytes} (cudaErrorInvalidValue)")
            if size_bytes > self._max_register_bytes:
                raise self._error("host_register", f"{size_bytes} B in one call is above the driver's limit of "
                                                   f"{self._max_register_bytes} B: register in chunks")
            if _overlaps(address, size_bytes, DEVICE_BASE, DEVICE_LIMIT - DEVICE_BASE):
                raise self._error("host_register", f"{address:#x} is device memory, not host memory")
            for start, size in self._registered.items():
                if _overlaps(start, size, address, size_bytes):
                    raise self._error("host_register", f"[{address:#x}, +{size_bytes}) overlaps the registered "
                                                       f"[{start:#x}, +{size}) (cudaErrorHostMemoryAlreadyRegistered)")
            self._registered[address] = size_bytes

    def host_unregister(self, address: int) -> None:
        with self._cond:
            self._enter("host_unregister")
            if address not in self._registered:
                raise self._error("host_unregister", f"{address:#x} is not the start of a registered range "
                                                     f"(cudaErrorHostMemoryNotRegistered)")
            if any(self._op_touches(op, address) for op in self._pending_ops()):
                raise self._error("host_unregister", f"registered range {address:#x} is still touched by a "
                                                     f"queued copy: wait for its event first")
            del self._registered[address]

    def create_stream(self) -> int:
        with self._cond:
            self._enter("create_stream")
            stream = _Stream(self._new_id())
            stream.thread = threading.Thread(target=self._run_stream, args=(stream,), daemon=True,
                                             name=f"fake-cuda{self._device_index}-stream{stream.stream_id}")
            self._streams[stream.stream_id] = stream
            stream.thread.start()
            return stream.stream_id

    def destroy_stream(self, stream: int) -> None:
        with self._cond:
            self._enter("destroy_stream")
            state = self._stream("destroy_stream", stream)
            if state.queue:
                raise self._error("destroy_stream", f"stream {stream} still has {len(state.queue)} queued ops: "
                                                    f"wait for its last event first")
            del self._streams[stream]
            state.stopping = True
            self._cond.notify_all()
        if state.thread is not None:
            state.thread.join()

    def copy_batch_async(self, copies: Sequence[CopyRange], stream: int) -> None:
        with self._cond:
            self._enter("copy_batch_async")
            state = self._stream("copy_batch_async", stream)
            ops = [self._copy_op(index, copy) for index, copy in enumerate(copies)]
            state.queue.extend(ops)
            self._cond.notify_all()
            blocking = [op for op in ops if op.dst is not None and op.dst.kind == "pageable"]
            while blocking and not blocking[-1].done:
                self._cond.wait()

    def record_event(self, stream: int) -> int:
        with self._cond:
            self._enter("record_event")
            state = self._stream("record_event", stream)
            event = _Event(self._new_id(), stream)
            self._events[event.event_id] = event
            state.queue.append(_Op(delay_s=0.0, event=event))
            self._cond.notify_all()
            return event.event_id

    def wait_event(self, event: int) -> None:
        with self._cond:
            self._enter("wait_event")
            state = self._event("wait_event", event)
            while not state.done:
                self._cond.wait()
            if state.failed:
                raise self._error("wait_event", f"a copy queued on stream {state.stream} before event {event} "
                                                f"failed (injected failure)")

    def destroy_event(self, event: int) -> None:
        with self._cond:
            self._enter("destroy_event")
            state = self._event("destroy_event", event)
            if not state.done:
                raise self._error("destroy_event", f"event {event} is not done yet: wait_event before destroying")
            del self._events[event]

    # -- inspection and test helpers (any thread) -------------------------------------------

    def read_device(self, ptr: int, size_bytes: int) -> bytes:
        """The device bytes ``[ptr, ptr + size_bytes)`` as they are now (one live allocation)."""
        with self._cond:
            base = self._device_range("read_device", ptr, size_bytes)
            return bytes(self._memory[base][ptr - base:ptr - base + size_bytes])

    def write_device(self, ptr: int, data: bytes) -> None:
        """Overwrite device bytes at ``ptr`` now (one live allocation)."""
        with self._cond:
            base = self._device_range("write_device", ptr, len(data))
            self._memory[base][ptr - base:ptr - base + len(data)] = data

    def allocations(self) -> dict[int, int]:
        """Live allocations: base -> size_bytes."""
        with self._cond:
            return {base: len(memory) for base, memory in self._memory.items()}

    def registered(self) -> dict[int, int]:
        """Registered host ranges: address -> size_bytes."""
        with self._cond:
            return dict(self._registered)

    def open_ipc(self, handle: bytes) -> int:
        """The base of the live allocation ``handle`` maps (what an importer would map)."""
        with self._cond:
            base = self._handles.get(bytes(handle))
            if base is None:
                raise self._error("open_ipc", f"unknown IPC handle ({len(handle)} B)")
            if base not in self._memory:
                raise self._error("open_ipc", f"the allocation {base:#x} of this handle was freed")
            return base

    def fail_next_copies(self, n: int) -> None:
        """The next ``n`` copies to run (any stream) fail: their bytes do not land and the next
        event of their stream raises in ``wait_event``."""
        with self._cond:
            self._fail_copies += n

    def calls(self, name: str) -> int:
        """How many times protocol method ``name`` was called (failed calls included)."""
        if name not in PROTOCOL_CALLS:
            raise ValueError(f"{name!r} is not a CudaRuntime method; one of {sorted(PROTOCOL_CALLS)}")
        with self._cond:
            return self._calls[name]

    def pending_copies(self) -> int:
        """Copies queued on any stream that have not run yet."""
        with self._cond:
            return sum(1 for op in self._pending_ops() if op.event is None)

    def close(self) -> None:
        """Run what is queued without delays, stop the stream threads; later protocol calls raise.
        Idempotent."""
        with self._cond:
            self._closed = True
            streams = list(self._streams.values())
            for stream in streams:
                stream.stopping = True
            self._cond.notify_all()
        for stream in streams:
            if stream.thread is not None:
                stream.thread.join()

    # -- internals (callers hold the lock) --------------------------------------------------

    def _enter(self, name: str, *, need_bound: bool = True) -> None:
        self._calls[name] += 1
        if self._closed:
            raise self._error(name, "the runtime is closed")
        if need_bound and not getattr(self._bound, "yes", False):
            raise self._error(name, f"thread {threading.current_thread().name!r} never called bind_thread() "
                                    f"(CUDA's current device is per thread)")

    def _error(self, call: str, problem: str) -> CudaError:
        return CudaError(f"{call} on {self!r}: {problem}")

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _allocated_bytes(self) -> int:
        return sum(len(memory) for memory in self._memory.values())

    def _stream(self, call: str, stream: int) -> _Stream:
        state = self._streams.get(stream)
        if state is None:
            raise self._error(call, f"unknown stream {stream} (never created or destroyed)")
        return state

    def _event(self, call: str, event: int) -> _Event:
        state = self._events.get(event)
        if state is None:
            raise self._error(call, f"unknown event {event} (never recorded or destroyed)")
        return state

    def _device_base_of(self, ptr: int, size_bytes: int) -> int | None:
        """The live allocation holding all of ``[ptr, ptr + size_bytes)``, if one does."""
        index = bisect.bisect_right(self._bases, ptr) - 1
        if index < 0:
            return None
        base = self._bases[index]
        return base if ptr + size_bytes <= base + len(self._memory[base]) else None

    def _device_range(self, call: str, ptr: int, size_bytes: int) -> int:
        if size_bytes <= 0:
            raise self._error(call, f"size_bytes must be > 0, got {size_bytes}")
        base = self._device_base_of(ptr, size_bytes)
        if base is None:
            raise self._error(call, f"[{ptr:#x}, +{size_bytes}) is not inside one live allocation")
        return base

    def _place(self, call: str, address: int, size_bytes: int) -> _Place:
        if DEVICE_BASE <= address < DEVICE_LIMIT:
            return _Place("device", address, self._device_range(call, address, size_bytes))
        if address <= 0:
            raise self._error(call, f"address {address:#x} is neither device nor host memory")
        for start, size in self._registered.items():
            if start <= address and address + size_bytes <= start + size:
                return _Place("pinned", address, start)
        return _Place("pageable", address, 0)

    def _copy_op(self, index: int, copy: CopyRange) -> _Op:
        call = f"copy_batch_async (copy {index})"
        if copy.size_bytes <= 0:
            raise self._error(call, f"size_bytes must be > 0, got {copy.size_bytes}")
        if _overlaps(copy.dst, copy.size_bytes, copy.src, copy.size_bytes):
            raise self._error(call, f"src {copy.src:#x} and dst {copy.dst:#x} overlap over {copy.size_bytes} B")
        dst = self._place(call, copy.dst, copy.size_bytes)
        src = self._place(call, copy.src, copy.size_bytes)
        snapshot = ctypes.string_at(src.address, copy.size_bytes) if src.kind == "pageable" else None
        delay_s = self._rng.uniform(self._min_delay_s, self._max_delay_s)
        return _Op(delay_s, dst, src, copy.size_bytes, snapshot)

    def _pending_ops(self) -> list[_Op]:
        return [op for stream in self._streams.values() for op in stream.queue]

    @staticmethod
    def _op_touches(op: _Op, base: int) -> bool:
        return any(place is not None and place.base == base for place in (op.dst, op.src))

    def _run_stream(self, stream: _Stream) -> None:
        """The stream's worker: each queued op in order, after its delay (none once stopping)."""
        with self._cond:
            while True:
                while not stream.queue and not stream.stopping:
                    self._cond.wait()
                if not stream.queue:
                    return
                op = stream.queue[0]
                deadline = time.monotonic() + op.delay_s
                while not stream.stopping and (left_s := deadline - time.monotonic()) > 0:
                    self._cond.wait(left_s)
                try:
                    self._execute(stream, op)
                except Exception:   # a bug here must not hang every waiter: the copy fails instead
                    stream.copy_failed = True
                stream.queue.popleft()
                op.done = True
                self._cond.notify_all()

    def _execute(self, stream: _Stream, op: _Op) -> None:
        if op.event is not None:
            op.event.failed = stream.copy_failed
            op.event.done = True
            stream.copy_failed = False
            return
        if self._fail_copies > 0:
            self._fail_copies -= 1
            stream.copy_failed = True
            return
        assert op.src is not None and op.dst is not None   # a copy op has both ends
        data = op.snapshot if op.snapshot is not None else self._load(op.src, op.size_bytes)
        if op.dst.kind == "device":
            offset = op.dst.address - op.dst.base
            self._memory[op.dst.base][offset:offset + op.size_bytes] = data
        else:
            ctypes.memmove(op.dst.address, data, op.size_bytes)

    def _load(self, place: _Place, size_bytes: int) -> bytes:
        if place.kind == "device":
            offset = place.address - place.base
            return bytes(self._memory[place.base][offset:offset + size_bytes])
        return ctypes.string_at(place.address, size_bytes)
