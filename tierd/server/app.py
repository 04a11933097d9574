"""The gRPC server object: what it serves (tierd.v1.Tierd, health, reflection) and its options.

Where it listens is the daemon's business (``tierd.daemon.listen``); tests bind a temp socket.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tierd.server.bytepath import decode_put_request, encode_get_response
from tierd.server.servicer import TierdServicer
from tierd.server.settings import ServingSettings
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Tierd"].full_name
# HTTP/2 keepalive: a peer that vanished without closing its connection (a TCP client whose
# host died) is noticed within about time + timeout, which ends its Session and frees its leases.
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000
# Clients may ping this often (their own keepalive) without the server calling it abuse.
MIN_CLIENT_PING_INTERVAL_MS = 5_000


def server_options(settings: ServingSettings) -> list[tuple[str, int]]:
    """Channel options: message limits above the largest chunk, and keepalive."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_pings_without_data", 0),
        # grpc turns SO_REUSEPORT on by default: a second daemon could then bind our TCP port
        # and take half of the connections. One port, one daemon.
        ("grpc.so_reuseport", 0),
    ]


class _Handlers:
    """Stands in for the server while the generated code registers the service: keeps the
    method handlers, so the byte path's can get their own codecs first."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        return None

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers = dict(handlers)


def add_tierd_servicer(servicer: TierdServicer, server: grpc.aio.Server) -> None:
    """The generated registration of tierd.v1.Tierd, with the byte path's codecs: GetPages sends
    messages ``tierd.server.bytepath`` serialized as it copied the pages in, PutPages hands the
    servicer each message's data as a view of the received bytes (protobuf would copy it twice)."""
    capture = _Handlers()
    pb_grpc.add_TierdServicer_to_server(servicer, capture)  # type: ignore[no-untyped-call]
    handlers = capture.handlers
    handlers["PutPages"] = grpc.stream_unary_rpc_method_handler(
        servicer.PutPages, request_deserializer=decode_put_request,
        response_serializer=pb.PutPagesResponse.SerializeToString)
    handlers["GetPages"] = grpc.unary_stream_rpc_method_handler(
        servicer.GetPages, request_deserializer=pb.GetPagesRequest.FromString,
        response_serializer=encode_get_response)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def build_server(servicer: TierdServicer, settings: ServingSettings
                 ) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A grpc.aio server (on the running loop) serving ``servicer``, health and reflection.

    Health starts NOT_SERVING; the caller sets SERVING once it listens and the store is open.
    """
    server = grpc.aio.server(options=server_options(settings))
    add_tierd_servicer(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    return server, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Health of the whole server ("") and of tierd.v1.Tierd."""
    status = (health_pb2.HealthCheckResponse.SERVING if serving
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
