"""The worker side of CUDA hbm regions, on CPU through a stub cupy (stub_cupy.py): one IPC open
per process however many views, closed only after the views and their arrays are gone; views of
a dead daemon run go stale and are closed; the device is synchronized before Commit and Release
reach the daemon, and never for host-memory namespaces."""

from __future__ import annotations

import asyncio
import gc
import secrets
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import torch
from fake_tierd import SLOTS, FakeState, FakeTierd
from stub_cupy import StubCupy

from tierd import wire
from tierd.handles import HandleKind, RegionHandle
from tierd.tier import Tier
from tierd.v1 import tierd_pb2_grpc as pb_grpc
from tierd_client import AsyncTierClient, NotFoundError, PageSpec, TierClient
from tierd_client.arena import ArenaView

SPEC = PageSpec(model="m@1", dtype="bfloat16", num_layers=2, num_kv_heads=2, head_dim=8,
                page_tokens=4)
NUM_SLOTS = 3
# Polls for the client to notice a stopped daemon's stream end (counted, never timed).
MAX_POLLS = 3000


@pytest.fixture()
def stub(monkeypatch: pytest.MonkeyPatch) -> StubCupy:
    cupy = StubCupy()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return cupy


def cuda_handle(stub: StubCupy, epoch: bytes = b"", num_slots: int = NUM_SLOTS,
                ipc_handle: bytes | None = None) -> RegionHandle:
    size_bytes = num_slots * SPEC.page_bytes
    return RegionHandle(tier=Tier.HBM, kind=HandleKind.CUDA_IPC, name="hbm-1", offset_bytes=0,
                        size_bytes=size_bytes, page_bytes=SPEC.page_bytes, num_slots=num_slots,
                        device="cuda:0", ipc_handle=ipc_handle or stub.export(size_bytes), epoch=epoch)


# -- the process-wide registry --------------------------------------------------------------
def test_two_views_share_one_open_and_close_after_both_views_and_arrays(stub: StubCupy) -> None:
    handle = cuda_handle(stub)
    first, second = ArenaView(handle, SPEC), ArenaView(handle, SPEC)  # e.g. two clients
    assert stub.count("ipcOpenMemHandle") == 1
    tensor = second.torch()
    assert tensor.dtype == torch.bfloat16 and tuple(tensor.shape) == second.shape
    assert second.torch() is tensor and first.cupy() is first.cupy()  # made once per view
    raw = first.cupy()
    assert raw.shape == (NUM_SLOTS, SPEC.page_bytes) and raw.dtype == "uint8"
    tensor[1].fill_(1.5)  # the worker writes slot 1 in place: the daemon's memory changes
    daemon_view = stub.device_bytes(handle.ipc_handle).reshape(NUM_SLOTS, -1)
    assert torch.frombuffer(bytearray(daemon_view[1].tobytes()), dtype=torch.bfloat16).eq(1.5).all()
    assert raw.get()[1].tolist() == daemon_view[1].tolist()
    first.close()
    assert stub.count("ipcCloseMemHandle") == 0  # the second view still maps it
    second.close()
    assert stub.count("ipcCloseMemHandle") == 0  # ... and arrays over it are alive
    assert first.is_stale() and second.is_stale()
    del raw
    gc.collect()
    assert stub.count("ipcCloseMemHandle") == 0  # the torch tensor still keeps it
    tensor.fill_(2.0)  # still valid memory
    del tensor
    gc.collect()
    assert stub.count("ipcCloseMemHandle", handle.ipc_handle) == 1
    assert stub.count("ipcOpenMemHandle", handle.ipc_handle) == 1


def test_a_handle_opened_again_while_arrays_live_reuses_the_mapping(stub: StubCupy) -> None:
    handle = cuda_handle(stub)
    view = ArenaView(handle, SPEC)
    kept = view.cupy()
    view.close()
    again = ArenaView(handle, SPEC)  # no second ipcOpenMemHandle of an open handle
    assert stub.count("ipcOpenMemHandle") == 1
    again.close()
    assert stub.count("ipcCloseMemHandle") == 0
    del kept
    gc.collect()
    assert stub.count("ipcCloseMemHandle") == 1 and not stub.is_open(handle.ipc_handle)
    third = ArenaView(handle, SPEC)  # closed: a fresh open
    assert stub.count("ipcOpenMemHandle") == 2
    third.close()
    assert [e for e, _ in stub.events] == ["ipcOpenMemHandle", "ipcCloseMemHandle"] * 2


def test_a_cuda_view_is_stale_once_the_session_reports_another_epoch(stub: StubCupy) -> None:
    old, new = secrets.token_bytes(16), secrets.token_bytes(16)
    current = [b""]
    view = ArenaView(cuda_handle(stub, epoch=old), SPEC, lambda: current[0])
    assert not view.is_stale()  # no session yet: nothing says the run changed
    current[0] = old
    assert not view.is_stale()
    current[0] = new
    assert view.is_stale()
    with pytest.raises(NotFoundError, match="register the namespace again"):
        ArenaView(view.handle, SPEC, lambda: current[0])  # the dead run's handle is not opened
    assert stub.count("ipcOpenMemHandle") == 1
    view.close()


def test_host_memory_views_never_import_cupy(monkeypatch: pytest.MonkeyPatch,
                                            fake_daemon_plain: Path) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # any `import cupy` raises ImportError
    with TierClient(fake_daemon_plain) as client:
        ns = client.register(SPEC)
        lease = client.allocate(ns, 2)
        lease.commit([bytes(16), bytes([1]) * 16])
        with client.acquire(ns, [bytes(16)]):
            pass
        client.acquire(ns, [bytes(16)]).release_later()
        client.acquire(ns, [bytes(16)]).release()


# -- a fake daemon with a CUDA hbm region and a run epoch -----------------------------------
class CudaFakeTierd(FakeTierd):
    """``FakeTierd`` whose Register gives an hbm CUDA IPC region (exported by the stub) and whose
    session events and handles carry ``epoch``; RPC arrivals are logged into the stub's events."""

    def __init__(self, state: FakeState, stub: StubCupy, epoch: bytes) -> None:
        super().__init__(state)
        self.stub, self.epoch = stub, epoch
        self.ipc_handle = stub.export(SLOTS * SPEC.page_bytes)

    def Register(self, request, context):
        response = super().Register(request, context)
        handle = cuda_handle(self.stub, self.epoch, SLOTS, self.ipc_handle)
        response.regions.append(wire.handle_to_pb(handle))
        return response

    def Session(self, request, context):
        for event in super().Session(request, context):
            event.server_epoch = self.epoch
            yield event

    def _log(self, rpc: str) -> None:
        self.stub.events.append(("rpc", rpc))

    def Acquire(self, request, context):
        self._log("Acquire" if not request.release_lease_ids else "Acquire+release")
        return super().Acquire(request, context)

    def Commit(self, request, context):
        self._log("Commit")
        return super().Commit(request, context)

    def Release(self, request, context):
        self._log("Release")
        return super().Release(request, context)


class Daemons:
    """Starts (and restarts) a ``CudaFakeTierd`` on one socket, a new epoch each time."""

    def __init__(self, socket_path: Path, stub: StubCupy) -> None:
        self.socket_path, self.stub = socket_path, stub
        self.server: grpc.Server | None = None
        self.servicer: CudaFakeTierd | None = None

    def start(self) -> CudaFakeTierd:
        self.stop()
        self.servicer = CudaFakeTierd(FakeState(), self.stub, secrets.token_bytes(16))
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        pb_grpc.add_TierdServicer_to_server(self.servicer, self.server)
        self.server.add_insecure_port(f"unix:{self.socket_path}")
        self.server.start()
        return self.servicer

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None).wait(timeout=10)
            self.server = None


@pytest.fixture()
def daemons(short_tmp: Path, stub: StubCupy) -> Iterator[Daemons]:
    runs = Daemons(short_tmp / "cuda.sock", stub)
    runs.start()
    yield runs
    runs.stop()


@pytest.fixture()
def fake_daemon_plain(short_tmp: Path) -> Iterator[Path]:
    """The plain fake (no regions: a namespace of host memory only, as far as leases go)."""
    state = FakeState()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_TierdServicer_to_server(FakeTierd(state), server)
    path = short_tmp / "plain.sock"
    server.add_insecure_port(f"unix:{path}")
    server.start()
    yield path
    server.stop(grace=None).wait(timeout=10)


def order(stub: StubCupy) -> list[str]:
    """Synchronizes and RPC arrivals, in order."""
    return [f"sync{arg}" if event == "synchronize" else str(arg)
            for event, arg in stub.events if event in ("synchronize", "rpc")]


def test_commit_and_release_reach_the_daemon_after_the_device_is_synchronized(
        daemons: Daemons, stub: StubCupy) -> None:
    with TierClient(daemons.socket_path) as client:
        ns = client.register(SPEC)
        fill = client.allocate(ns, 2)
        fill.commit([bytes(16)])  # no view of the region in this process: nothing to wait for
        assert order(stub) == ["Commit"]
        view = client.arena(ns, Tier.HBM)
        assert view.is_cuda and view.torch().shape == (SLOTS, *SPEC.page_shape)
        stub.events.clear()
        fill = client.allocate(ns, 2)
        fill.commit([bytes([1]) * 16], release=True)
        read = client.acquire(ns, [bytes(16)])
        read.release()
        later = client.acquire(ns, [bytes(16)])
        later.release_later()
        assert order(stub) == ["sync0", "Commit", "Acquire", "sync0", "Release", "Acquire"]
        stub.events.clear()
        client.acquire(ns, [bytes(16)]).release_later()  # carries `later`: synchronized first
        assert order(stub) == ["sync0", "Acquire+release"]
        stub.events.clear()
    assert order(stub)[:1] == ["sync0"]  # close: the session's end releases the rest


def test_the_async_client_synchronizes_off_the_loop_before_commit_and_release(
        daemons: Daemons, stub: StubCupy) -> None:
    async def main() -> None:
        async with AsyncTierClient(daemons.socket_path) as client:
            ns = await client.register(SPEC)
            client.arena(ns, Tier.HBM).cupy()
            stub.events.clear()
            fill = await client.allocate(ns, 2)
            await fill.commit([bytes(16)])
            async with client.acquire(ns, [bytes(16)]):
                pass
            later = await client.acquire(ns, [bytes(16)])
            await later.release_later()
            await (await client.acquire(ns, [bytes(16)])).release()
            assert order(stub) == ["sync0", "Commit", "Acquire", "sync0", "Release", "Acquire",
                                   "sync0", "Acquire+release", "sync0", "Release"]

    asyncio.run(main())


def test_a_restarted_daemons_epoch_closes_the_old_runs_cuda_views(daemons: Daemons,
                                                                   stub: StubCupy) -> None:
    with TierClient(daemons.socket_path) as client:
        ns = client.register(SPEC)
        view = client.arena(ns, Tier.HBM)
        client.allocate(ns, 1).release()  # opens the session: same run, the view stays
        assert not view.is_stale() and client.arena(ns, Tier.HBM) is view
        old_handle = ns.region(Tier.HBM)
        assert old_handle is not None
        daemons.start()  # a new run: other memory, another epoch
        for _ in range(MAX_POLLS):
            if not client.session_id:
                break
            time.sleep(0.01)  # the session's reader thread sees the stream end
        assert not client.session_id
        client.allocate(ns, 1).release()  # a new session reaches the new run
        assert view.is_stale()
        assert stub.count("ipcCloseMemHandle", old_handle.ipc_handle) == 1
        with pytest.raises(NotFoundError, match="register the namespace again"):
            client.arena(ns, Tier.HBM)
        new_ns = client.register(SPEC)
        fresh = client.arena(new_ns, Tier.HBM)
        assert not fresh.is_stale() and fresh.handle.epoch != old_handle.epoch
