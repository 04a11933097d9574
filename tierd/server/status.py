"""Typed errors to gRPC status codes, at the RPC boundary only.

Every ``TierdError`` names its code in ``status_name``; the message goes to the client unchanged.
Anything else is a bug: it is logged with its traceback and the client gets INTERNAL.
"""

from __future__ import annotations

import grpc

from tierd.errors import PermissionDenied, TierdError

__all__ = ["PermissionDenied", "status_code_of"]


def status_code_of(exc: TierdError) -> grpc.StatusCode:
    """The gRPC code ``exc.status_name`` names; INTERNAL for a name gRPC does not know."""
    return grpc.StatusCode.__members__.get(exc.status_name, grpc.StatusCode.INTERNAL)
