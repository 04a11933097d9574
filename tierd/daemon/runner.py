"""The daemon's life: open the store, serve, tell systemd, stop cleanly.

One uvloop event loop runs everything asynchronous (gRPC, signals, the watchdog); the store's
blocking calls run on thread pools. Start: open the store (the disk index is rebuilt), bind (gRPC,
and the Prometheus endpoint when ``server.metrics`` is set), serve, READY=1. SIGTERM/SIGINT:
STOPPING=1, new RPCs get UNAVAILABLE, in-flight ones get ``shutdown_grace_s`` to finish, then
``store.close()`` flushes dirty pages within the store's ``flush_timeout_s``, the metrics endpoint
closes last; exit 0 (1 when the flush did not complete).
SIGHUP: reload the log level.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Callable
from dataclasses import replace

import grpc
from grpc_health.v1 import health

import tierd
from tierd.daemon.checks import ResolvedDevice
from tierd.daemon.cli import refuse
from tierd.daemon.config import DaemonConfig, ServerSettings, host_port
from tierd.daemon.listen import ListenError, bind, unlink_socket
from tierd.daemon.logs import set_log_level
from tierd.daemon.notify import SdNotifier
from tierd.errors import ConfigError, TierdError
from tierd.server import TierdServicer, build_server, set_serving
from tierd.server.metrics import METRICS_PATH, MetricsEndpoint
from tierd.server.metrics import render as render_metrics
from tierd.server.page_service import PageService
from tierd.server.page_socket import PageSocket, PageSocketSettings
from tierd.server.region_socket import RegionSocket, RegionSocketSettings
from tierd.server.settings import ServingSettings
from tierd.store import PageStore

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
# While the store opens (index rebuild, arena set-up) ask systemd for this much more time, this often.
EXTEND_TIMEOUT_S = 30.0
EXTEND_EVERY_S = 10.0
# store.close() gets its own flush deadline; this covers closing LMDB and freeing arenas after it.
CLOSE_MARGIN_S = 30.0


async def collect_metrics(store: PageStore, servicer: TierdServicer) -> str:
    """One scrape: the store's stats (taken off the loop) and the servicer's counters."""
    stats = await asyncio.to_thread(store.stats)
    return render_metrics(stats, servicer.counters())


def access_note(config: DaemonConfig) -> str:
    """How callers are let in, for the start-up log line."""
    names = [token.tenant for token in config.tenant_tokens]
    if not names:
        return "open: no tenants configured, the socket's mode is the access control"
    return f"tenants {', '.join(names)}: every RPC but Health needs a tenant's token"


def region_socket(server: ServerSettings, store: PageStore) -> RegionSocket | None:
    """The socket zero-copy workers fetch region memory from, next to the gRPC socket."""
    path = server.region_socket_path
    if path is None:
        return None
    return RegionSocket(RegionSocketSettings(path, mode=server.socket_mode), store.shared_region_fd)


def page_socket(server: ServerSettings, store: PageStore, servicer: TierdServicer,
                serving: ServingSettings) -> PageSocket | None:
    """The socket of the byte path outside gRPC, next to the gRPC socket (same limits and tenants)."""
    path = server.page_socket_path
    if path is None:
        return None
    return PageSocket(PageSocketSettings(path, mode=server.socket_mode,
                                         max_connections=server.page_connections),
                      PageService(store, serving, servicer.epoch))


class Daemon:
    """Runs one daemon life on the current event loop. ``reload`` re-reads the config (SIGHUP)."""

    def __init__(self, config: DaemonConfig, device: ResolvedDevice, notifier: SdNotifier,
                 reload: Callable[[], DaemonConfig] | None = None) -> None:
        self._config = config
        self._device = device
        self._notifier = notifier
        self._reload = reload
        self._stop = asyncio.Event()  # binds to the running loop on first use
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the process exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._spawn_reload)
        watchdog = self._start_watchdog()
        try:
            return await self._run_serving()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _run_serving(self) -> int:
        store = PageStore(self._config.store)
        refused = await self._open_store(store)
        if refused is not None:
            return refused
        if self._device.note:  # only now: a refusal stays the one line on stderr
            log.warning("%s", self._device.note)
        settings = self._config.serving
        servicer = TierdServicer(store, settings)
        server, health_servicer = build_server(servicer, settings)
        metrics = MetricsEndpoint(functools.partial(collect_metrics, store, servicer))
        regions = region_socket(self._config.server, store)
        pages = page_socket(self._config.server, store, servicer, settings)
        sockets = [s for s in (regions, pages) if s is not None]
        try:
            for unix in sockets:
                await asyncio.to_thread(unix.start)
            await self._start_metrics(metrics)
            addresses = bind(server, self._config.server)
        except (ListenError, ConfigError, OSError) as exc:
            log.error("%s", exc)
            await metrics.close()
            for unix in reversed(sockets):
                await asyncio.to_thread(unix.close)
            await self._close_store(store)
            servicer.close()
            return EXIT_FAILURE
        await server.start()
        await set_serving(health_servicer, True)
        where = ", ".join(addresses)
        log.info("tierd %s serving on %s (hbm on %s, write policy %s; %s)", tierd.__version__,
                 where, self._device.name, self._config.store.write_policy.value,
                 access_note(self._config))
        self._notifier.ready(f"serving on {where}")
        await self._stop.wait()
        for unix in reversed(sockets):  # no new mappings or page requests of a store about to close
            await asyncio.to_thread(unix.close)
        status = await self._shutdown(server, health_servicer, servicer, store)
        await metrics.close()
        return status

    async def _start_metrics(self, metrics: MetricsEndpoint) -> None:
        """Listen for Prometheus scrapes when ``server.metrics`` is set (``OSError`` if it cannot)."""
        address = self._config.server.metrics
        if address is None:
            return
        host, port = host_port(address, "server.metrics")
        try:
            bound = await metrics.start(host, port)
        except OSError as exc:
            raise ListenError(f"cannot listen for metrics on {address} (server.metrics): {exc}") from exc
        log.info("Prometheus metrics on http://%s%s", bound, METRICS_PATH)

    async def _open_store(self, store: PageStore) -> int | None:
        """``None`` once the store is open, else the exit status: 78 with one line on stderr
        for a data dir the disk tier refuses (in use, damaged, foreign), else 1."""
        self._notifier.status("opening the page store (rebuilding the disk index)")
        opening = asyncio.ensure_future(asyncio.to_thread(store.open))
        while True:
            self._notifier.extend_timeout(EXTEND_TIMEOUT_S)
            done, _pending = await asyncio.wait({opening}, timeout=EXTEND_EVERY_S)
            if done:
                break
        try:
            opening.result()
        except ConfigError as exc:
            self._notifier.status(f"failed: {exc}")
            return refuse(str(exc))
        except TierdError as exc:
            log.error("cannot open the page store: %s", exc)
            self._notifier.status(f"failed: {exc}")
            return EXIT_FAILURE
        return None

    async def _shutdown(self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer,
                        servicer: TierdServicer, store: PageStore) -> int:
        grace_s = self._config.server.shutdown_grace_s
        self._notifier.stopping(f"stopping: finishing in-flight RPCs (up to {grace_s:g} s)")
        log.info("stopping: %d RPC(s) in flight, %d session(s)", servicer.in_flight,
                 servicer.num_sessions)
        await health_servicer.enter_graceful_shutdown()
        servicer.begin_shutdown()
        await server.stop(grace=grace_s)
        if not await servicer.wait_idle(grace_s):
            log.warning("some RPCs were still running after %g s; closing the store anyway", grace_s)
        self._notifier.status("stopping: flushing dirty pages to disk")
        flushed = await self._close_store(store)
        servicer.close()
        unlink_socket(self._config.server)
        log.info("stopped%s", "" if flushed else " (the flush did not complete: see above)")
        return EXIT_OK if flushed else EXIT_FAILURE

    async def _close_store(self, store: PageStore) -> bool:
        """``store.close()`` (flushes) off the loop, bounded; ``False`` if it failed, ran over, or
        pages could not be written to disk (the store logged why, this says how many)."""
        deadline_s = self._config.store.flush_timeout_s + CLOSE_MARGIN_S
        try:
            async with asyncio.timeout(deadline_s):
                lost = await asyncio.to_thread(store.close)
        except TimeoutError:
            log.error("closing the page store took more than %g s; exiting without it", deadline_s)
            return False
        except Exception:  # the last thing the daemon does: report, then exit non-zero
            log.exception("closing the page store failed")
            return False
        if lost:
            log.error("%d page(s) held in memory only were lost: the final flush did not write "
                      "them to disk; exiting with status %d", lost, EXIT_FAILURE)
            return False
        return True

    def _request_stop(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            log.info("%s again: already stopping", sig.name)
            return
        log.info("%s received: stopping", sig.name)
        self._stop.set()

    def _start_watchdog(self) -> asyncio.Task[None] | None:
        interval_s = self._notifier.watchdog_interval_s
        if interval_s is None:
            return None
        log.info("systemd watchdog: pinging every %g s", interval_s)
        return asyncio.ensure_future(self._watchdog(interval_s))

    async def _watchdog(self, interval_s: float) -> None:
        """WATCHDOG=1 from the event loop itself: a stuck loop stops the pings and systemd acts."""
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(interval_s)

    def _spawn_reload(self) -> None:
        task = asyncio.ensure_future(self._reload_log_level())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_log_level(self) -> None:
        if self._reload is None:
            log.info("SIGHUP: nothing to reload")
            return
        try:
            fresh = await asyncio.to_thread(self._reload)
        except TierdError as exc:
            log.error("SIGHUP: config not reloaded, keeping the running one: %s", exc)
            return
        set_log_level(fresh.log_level)
        if replace(fresh, log_level=self._config.log_level) != self._config:
            log.warning("SIGHUP: only log_level is reloaded; restart tierd for other changes")
        self._config = replace(self._config, log_level=fresh.log_level)
        log.info("SIGHUP: log level is now %s", fresh.log_level.value)
