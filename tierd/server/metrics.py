"""The optional Prometheus endpoint: ``GET /metrics`` in the text exposition format (version 0.0.4).

``render`` turns one ``StoreStats`` and the servicer's ``ServerCounters`` into the exposition text;
``MetricsEndpoint`` serves whatever its ``collect`` coroutine returns over plain HTTP/1.0 on the
daemon's event loop (one short response per connection, no keep-alive). Where it listens is the
daemon's config (``server.metrics``); it serves counters only, never pages or keys.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tierd.store.types import StoreStats
from tierd.tier import Tier
from tierd.values import TierStats

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_PATH = "/metrics"
# A scraper sends one short request; anything slower or larger is dropped without an answer.
REQUEST_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 8192


@dataclass(frozen=True)
class ServerCounters:
    """The RPC side's numbers: open sessions, RPCs running, RPCs refused by the in-flight cap."""

    sessions: int
    rpcs_in_flight: int
    rpcs_rejected: int
    version: str
    device: str


# name, type, help, value of one tier's TierStats
_TIER_METRICS: tuple[tuple[str, str, str, Callable[[TierStats], int]], ...] = (
    ("capacity_bytes", "gauge", "Configured capacity of the tier.", lambda t: t.capacity_bytes),
    ("used_bytes", "gauge", "Bytes of the tier holding pages or in flight.", lambda t: t.used_bytes),
    ("pages", "gauge", "Pages resident in the tier.", lambda t: t.pages),
    ("hits_total", "counter", "Lookups and reads served from the tier.", lambda t: t.hits),
    ("misses_total", "counter", "Lookups and reads that missed the tier.", lambda t: t.misses),
    ("evictions_total", "counter", "Pages evicted from the tier.", lambda t: t.evictions),
    ("bytes_in_total", "counter", "Bytes written into the tier.", lambda t: t.bytes_in),
    ("bytes_out_total", "counter", "Bytes moved out of the tier.", lambda t: t.bytes_out),
    ("queue_depth", "gauge", "Pages waiting to enter the tier.", lambda t: t.queue_depth),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(stats: StoreStats, server: ServerCounters) -> str:
    """The exposition text: per-tier metrics labelled ``tier``, then daemon-wide ones."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, int | float]]) -> None:
        lines.append(f"# HELP tierd_{name} {help_text}")
        lines.append(f"# TYPE tierd_{name} {kind}")
        lines.extend(f"tierd_{name}{labels} {value}" for labels, value in samples)

    for suffix, kind, help_text, value_of in _TIER_METRICS:
        metric(f"tier_{suffix}", kind, help_text,
               [(f'{{tier="{tier.label}"}}', value_of(tier_stats)) for tier, tier_stats in sorted(stats.tiers.items())])
    metric("namespaces", "gauge", "Registered namespaces.", [("", stats.namespaces)])
    metric("leases", "gauge", "Live leases.", [("", stats.leases)])
    metric("checksum_failures_total", "counter", "Disk pages dropped because their checksum or header "
           "did not match.", [("", stats.checksum_failures)])
    metric("disk_writes_refused_total", "counter", "Page writes refused: the disk budget was full of "
           "writes in flight.", [("", stats.disk_writes_refused)])
    metric("disk_write_failures_total", "counter", "Page writes the disk did not store (an I/O error "
           "such as a full file system, or LMDB's map full); they stay in memory.",
           [("", stats.disk_write_failures)])
    disk = stats.tiers.get(Tier.DISK)
    if disk is not None:
        metric("disk_quantized_pages", "gauge", "Disk pages stored in a cold format (fp8: lossy, opted "
               "into per namespace).", [("", disk.quantized_pages)])
        metric("disk_quantized_saved_bytes", "gauge", "Bytes the quantized disk pages take less than "
               "exact pages would.", [("", disk.quantized_bytes_saved)])
    metric("evictions_with_children_total", "counter", "Evictions of a page that had a child resident "
           "in the tier it left; 0 under prefix_aware unless every leaf was leased or in flight.",
           [("", stats.evictions_with_children)])
    remote = stats.remote
    if remote is not None:
        metric("remote_available", "gauge", "1 while the remote tier answers, 0 while it backs off "
               "after a failure.", [("", int(remote.available))])
        metric("remote_errors_total", "counter", "Remote tier calls that failed (down, slow, refused).",
               [("", remote.errors)])
        metric("remote_checksum_failures_total", "counter", "Remote values that failed their check "
               "(torn, corrupt, foreign) and were deleted.", [("", remote.checksum_failures)])
        metric("remote_dropped_total", "counter", "Pages the remote write queue had no room for.",
               [("", remote.dropped)])
        metric("remote_pages_written_total", "counter", "Pages written to the remote tier.",
               [("", remote.pages_written)])
    metric("uptime_seconds", "gauge", "Seconds since the page store opened.", [("", round(stats.uptime_s, 3))])
    metric("sessions", "gauge", "Open client sessions.", [("", server.sessions)])
    metric("rpcs_in_flight", "gauge", "RPCs being served.", [("", server.rpcs_in_flight)])
    metric("rpcs_rejected_total", "counter", "RPCs answered RESOURCE_EXHAUSTED by the in-flight cap.",
           [("", server.rpcs_rejected)])
    info = (f'{{version="{_label(server.version)}",device="{_label(server.device)}",'
            f'write_policy="{stats.write_policy.value}"}}')
    metric("info", "gauge", "Constant 1, labelled with the daemon's version, device and write policy.",
           [(info, 1)])
    return "\n".join(lines) + "\n"


class MetricsEndpoint:
    """Plain-HTTP ``GET /metrics`` on the running loop. ``collect`` builds the body per scrape."""

    def __init__(self, collect: Callable[[], Awaitable[str]]) -> None:
        self._collect = collect
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> str:
        """Listen on ``host:port`` (port 0: any free one); returns the bound ``host:port``."""
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST_BYTES)
        sockname = self._server.sockets[0].getsockname()
        return f"{sockname[0]}:{sockname[1]}"

    async def close(self) -> None:
        """Stop listening and wait for responses under way; a second call does nothing."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body = await self._answer(head)
            await self._respond(writer, status, body)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a client that vanished, never finished or overran its request gets nothing
        except Exception:  # the task boundary: one bad scrape must not end the endpoint
            log.exception("metrics request failed")
            await self._respond(writer, "500 Internal Server Error", "tierd could not collect its stats\n")
        finally:
            writer.close()

    async def _answer(self, head: bytes) -> tuple[str, str]:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", "expected a request line like 'GET /metrics HTTP/1.1'\n"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if target != METRICS_PATH:
            return "404 Not Found", f"tierd serves only {METRICS_PATH}\n"
        if method != "GET":
            return "405 Method Not Allowed", f"{METRICS_PATH} answers GET only\n"
        return "200 OK", await self._collect()

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: str, body: str) -> None:
        data = body.encode("utf-8")
        content_type = CONTENT_TYPE if status.startswith("200") else "text/plain; charset=utf-8"
        header = (f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
                  f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
        try:
            writer.write(header.encode("latin-1") + data)
            await writer.drain()
        except ConnectionError:
            pass
