"""The gRPC side of the daemon: the ``tierd.v1.Tierd`` servicer over a ``PageStore``, plus
health and reflection. Imports grpc; ``import tierd`` does not import this package."""

from tierd.server.app import SERVICE_NAME, build_server, set_serving
from tierd.server.servicer import TierdServicer
from tierd.server.sessions import SESSION_METADATA_KEY
from tierd.server.settings import ServingSettings

__all__ = ["SERVICE_NAME", "SESSION_METADATA_KEY", "ServingSettings", "TierdServicer",
           "build_server", "set_serving"]
