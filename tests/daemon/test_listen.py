"""Where the daemon listens: unix socket mode, loopback TCP, TLS and mTLS on TCP."""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tierd.daemon.config import ServerSettings
from tierd.daemon.listen import ListenError, bind
from tierd.server.app import build_server, set_serving
from tierd.server.servicer import TierdServicer
from tierd.server.settings import ServingSettings

RPC_TIMEOUT_S = 10.0


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA), made with the openssl CLI."""
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return key, cert


async def check_health(target: str, credentials: grpc.ChannelCredentials | None) -> int:
    channel = (grpc.aio.secure_channel(target, credentials) if credentials is not None
               else grpc.aio.insecure_channel(target))
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S)
        return reply.status


async def serve_and_probe(settings: ServerSettings, probes: list[tuple[str, object]]) -> list[object]:
    """Bind a server (no store: health answers without one) and run each probe against it.

    With a unix socket configured, the first result is the socket file's mode while serving.
    """
    serving = ServingSettings()
    servicer = TierdServicer(store=None, settings=serving)  # type: ignore[arg-type]
    server, health = build_server(servicer, serving)
    bound = bind(server, settings)
    await server.start()
    await set_serving(health, True)
    results: list[object] = []
    if settings.socket is not None:
        results.append(stat.S_IMODE(settings.socket.stat().st_mode))
    try:
        for target, credentials in probes:
            target = target.replace(":PORT", ":" + bound[-1].split(" ")[0].rpartition(":")[2])
            try:
                results.append(await check_health(target, credentials))  # type: ignore[arg-type]
            except grpc.aio.AioRpcError as exc:
                results.append(exc.code())
    finally:
        await server.stop(None)
        servicer.close()
    return results


def test_unix_socket_gets_the_configured_mode(short_tmp: Path) -> None:
    sock = short_tmp / "t.sock"
    settings = ServerSettings(socket=sock, socket_mode=0o600)
    assert asyncio.run(serve_and_probe(settings, [])) == [0o600]
    assert not sock.exists()  # grpc removes it when the server stops


def test_loopback_tcp_may_be_plaintext(short_tmp: Path) -> None:
    settings = ServerSettings(socket=None, tcp="127.0.0.1:0")
    results = asyncio.run(serve_and_probe(settings, [("127.0.0.1:PORT", None)]))
    assert results == [health_pb2.HealthCheckResponse.SERVING]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_and_mutual_tls(short_tmp: Path) -> None:
    server_key, server_cert = make_cert(short_tmp, "server")
    client_key, client_cert = make_cert(short_tmp, "client")
    trust = server_cert.read_bytes()
    tls_only = ServerSettings(socket=None, tcp="127.0.0.1:0", tls_cert=server_cert, tls_key=server_key)
    results = asyncio.run(serve_and_probe(tls_only, [
        ("127.0.0.1:PORT", grpc.ssl_channel_credentials(trust)), ("127.0.0.1:PORT", None)]))
    assert results[0] == health_pb2.HealthCheckResponse.SERVING
    assert results[1] == grpc.StatusCode.UNAVAILABLE  # plaintext client against TLS
    mutual = ServerSettings(socket=None, tcp="127.0.0.1:0", tls_cert=server_cert,
                            tls_key=server_key, tls_client_ca=client_cert)
    with_cert = grpc.ssl_channel_credentials(trust, client_key.read_bytes(), client_cert.read_bytes())
    results = asyncio.run(serve_and_probe(mutual, [
        ("127.0.0.1:PORT", with_cert), ("127.0.0.1:PORT", grpc.ssl_channel_credentials(trust))]))
    assert results == [health_pb2.HealthCheckResponse.SERVING, grpc.StatusCode.UNAVAILABLE]


def test_an_address_in_use_is_a_listen_error(short_tmp: Path) -> None:
    async def bind_twice() -> None:
        first, _ = build_server(TierdServicer(None, ServingSettings()), ServingSettings())  # type: ignore[arg-type]
        port = first.add_insecure_port("127.0.0.1:0")
        second, _ = build_server(TierdServicer(None, ServingSettings()), ServingSettings())  # type: ignore[arg-type]
        with pytest.raises(ListenError, match=f"127.0.0.1:{port}"):
            bind(second, ServerSettings(socket=None, tcp=f"127.0.0.1:{port}"))
        await first.stop(None)

    asyncio.run(bind_twice())
