"""The Prometheus endpoint: the exposition text carries the store's numbers, and the HTTP side
answers scrapes, refuses other requests with the right status, and survives bad clients."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import pytest

from tierd.config import WritePolicy
from tierd.remote.tier import RemoteStats
from tierd.server.metrics import CONTENT_TYPE, MetricsEndpoint, ServerCounters, render
from tierd.store.types import StoreStats
from tierd.tier import Tier
from tierd.values import TierStats

SAMPLE = re.compile(r'^(tierd_[a-z_]+)(\{[^}]*\})? (-?[0-9.e+]+)$')


def _stats() -> StoreStats:
    tiers = {tier: TierStats(capacity_bytes=1000 * (i + 1), used_bytes=10 * (i + 1), pages=i + 1, hits=5 + i,
                             misses=7 + i, evictions=2 * i, bytes_in=100 + i, bytes_out=200 + i, queue_depth=i)
             for i, tier in enumerate(Tier)}
    return StoreStats(tiers, namespaces=2, leases=3, checksum_failures=1, uptime_s=12.5,
                      write_policy=WritePolicy.WRITE_THROUGH, disk_writes_refused=4, disk_write_failures=8,
                      disk_write_error="mdb_txn_commit: No space left on device")


def _parse(text: str) -> tuple[dict[str, float], dict[str, str]]:
    """Samples by ``name{labels}``, and the declared TYPE of every metric name."""
    samples: dict[str, float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        elif not line.startswith("# HELP "):
            match = SAMPLE.match(line)
            assert match, f"not an exposition line: {line!r}"
            assert match.group(1) in types, f"{match.group(1)} has no TYPE line before it"
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples, types


def test_the_remote_tier_has_its_own_counters_when_configured() -> None:
    counters = ServerCounters(sessions=0, rpcs_in_flight=0, rpcs_rejected=0, version="0", device="cpu")
    assert "remote_" not in render(_stats(), counters)
    remote = RemoteStats("redis-cluster", available=False, hits=1, misses=2, bytes_read=3, bytes_written=4,
                         pages_written=5, errors=6, checksum_failures=7, queue_depth=8, dropped=9)
    samples, _ = _parse(render(replace(_stats(), remote=remote), counters))
    assert samples["tierd_remote_available"] == 0 and samples["tierd_remote_errors_total"] == 6
    assert samples["tierd_remote_checksum_failures_total"] == 7
    assert samples["tierd_remote_dropped_total"] == 9 and samples["tierd_remote_pages_written_total"] == 5


def test_render_exposes_every_tier_and_daemon_counter() -> None:
    counters = ServerCounters(sessions=6, rpcs_in_flight=1, rpcs_rejected=9, version="0.1.0", device='cu"da:0')
    samples, types = _parse(render(_stats(), counters))
    for i, tier in enumerate(Tier):
        label = f'{{tier="{tier.label}"}}'
        assert samples[f"tierd_tier_capacity_bytes{label}"] == 1000 * (i + 1)
        assert samples[f"tierd_tier_hits_total{label}"] == 5 + i
        assert samples[f"tierd_tier_bytes_out_total{label}"] == 200 + i
        assert samples[f"tierd_tier_queue_depth{label}"] == i
    assert samples["tierd_leases"] == 3 and samples["tierd_sessions"] == 6
    assert samples["tierd_checksum_failures_total"] == 1 and samples["tierd_disk_writes_refused_total"] == 4
    assert samples["tierd_disk_write_failures_total"] == 8
    assert samples["tierd_rpcs_rejected_total"] == 9 and samples["tierd_uptime_seconds"] == 12.5
    assert samples['tierd_info{version="0.1.0",device="cu\\"da:0",write_policy="write_through"}'] == 1
    assert all(kind == "counter" for name, kind in types.items() if name.endswith("_total"))
    assert all(kind == "gauge" for name, kind in types.items() if not name.endswith("_total"))


async def _request(port: int, raw: bytes) -> tuple[str, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    status, *header_lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    assert int(headers["Content-Length"]) == len(body.encode())
    return status, headers, body


async def _with_endpoint(collect_body: str | Exception, scenario) -> None:  # type: ignore[no-untyped-def]
    scrapes = 0

    async def collect() -> str:
        nonlocal scrapes
        scrapes += 1
        if isinstance(collect_body, Exception):
            raise collect_body
        return collect_body

    endpoint = MetricsEndpoint(collect)
    bound = await endpoint.start("127.0.0.1", 0)
    try:
        await scenario(int(bound.rpartition(":")[2]))
    finally:
        await endpoint.close()
        await endpoint.close()  # idempotent


def test_scrapes_get_the_exposition_and_other_requests_get_errors() -> None:
    async def scenario(port: int) -> None:
        status, headers, body = await _request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.0 200 OK" and headers["Content-Type"] == CONTENT_TYPE
        assert body == "tierd_leases 3\n"
        assert (await _request(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"))[0].endswith("200 OK")
        assert (await _request(port, b"GET / HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.0 404 Not Found"
        assert (await _request(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.0 405 Method Not Allowed"
        assert (await _request(port, b"hello\r\n\r\n"))[0] == "HTTP/1.0 400 Bad Request"
        # A request head larger than the limit is dropped; the endpoint keeps serving.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
        await writer.drain()
        assert await reader.read() == b""
        writer.close()
        assert (await _request(port, b"GET /metrics HTTP/1.1\r\n\r\n"))[0].endswith("200 OK")

    asyncio.run(_with_endpoint("tierd_leases 3\n", scenario))


def test_a_failing_collect_is_a_500_and_the_endpoint_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(port: int) -> None:
        for _ in range(2):
            status, _, body = await _request(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert status == "HTTP/1.0 500 Internal Server Error" and "could not collect" in body

    asyncio.run(_with_endpoint(RuntimeError("store closed"), scenario))
    assert "metrics request failed" in caplog.text and "store closed" in caplog.text
