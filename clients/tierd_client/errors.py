"""Errors the client raises: one class per gRPC status code, each carrying ``.code`` and ``.details``.

Every class also derives from the matching ``tierd.errors`` class, so code written against the
in-process store (``except tierd.errors.NotFound``) works unchanged against the daemon. Checks the
client makes before sending (a page of the wrong size, a bad key) raise the same classes with the
status code the daemon would have answered.
"""

from __future__ import annotations

import grpc

from tierd import errors as store_errors


class TierdRpcError(store_errors.TierdError):
    """A request tierd (or the client, before sending) refused.

    ``code`` is the ``grpc.StatusCode``; ``details`` the daemon's message, meant for a person.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: grpc.StatusCode | None = None, rpc: str = "") -> None:
        if code is not None:
            self.code = code
        self.details = details
        self.rpc = rpc
        self.status_name = self.code.name
        where = f"{rpc}: " if rpc else ""
        super().__init__(f"{where}{self.code.name}: {details}")


class InvalidArgumentError(TierdRpcError, store_errors.InvalidArgument):
    """Malformed request: bad key length, page of the wrong size, unknown dtype."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(TierdRpcError, store_errors.NotFound):
    """Unknown namespace or lease (an expired lease is unknown too)."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPreconditionError(TierdRpcError, store_errors.FailedPrecondition):
    """Well formed but does not fit the daemon's state (spec mismatch)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(TierdRpcError, store_errors.ResourceExhausted):
    """Every slot leased, a quota reached, or too many concurrent RPCs."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(TierdRpcError, store_errors.DeadlineExceeded):
    """The pages did not become resident, or the RPC did not finish, in time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnavailableError(TierdRpcError, store_errors.Unavailable):
    """The daemon is not running, not reachable, or shutting down (after every retry)."""

    code = grpc.StatusCode.UNAVAILABLE


class UnauthenticatedError(TierdRpcError, store_errors.Unauthenticated):
    """No or an unknown tenant token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(TierdRpcError, store_errors.PermissionDenied):
    """The tenant may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


_BY_CODE: dict[grpc.StatusCode, type[TierdRpcError]] = {
    cls.code: cls
    for cls in (InvalidArgumentError, NotFoundError, FailedPreconditionError,
                ResourceExhaustedError, DeadlineExceededError, UnavailableError,
                UnauthenticatedError, PermissionDeniedError)
}


def error_for(code: grpc.StatusCode, details: str, rpc: str = "") -> TierdRpcError:
    """The ``TierdRpcError`` subclass for ``code`` (the base class for codes without one)."""
    cls = _BY_CODE.get(code, TierdRpcError)
    return cls(details, code=code, rpc=rpc)


def from_grpc(exc: grpc.RpcError, rpc: str = "") -> TierdRpcError:
    """Translate an error raised by a grpc call into a ``TierdRpcError``."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    return error_for(code or grpc.StatusCode.UNKNOWN, details or "", rpc)


def invalid_argument(details: str) -> InvalidArgumentError:
    """A client-side check failed; raised before anything is sent."""
    return InvalidArgumentError(details)
