"""Typed errors of the page store.

Each maps to one gRPC status code at the RPC boundary (``status_name``); messages say what was
expected, what was given and what to do. Expected misses (a key not cached) are return values,
never exceptions.
"""

from __future__ import annotations


class TierdError(Exception):
    """Base of every error tierd raises on purpose."""

    status_name = "INTERNAL"


class InvalidArgument(TierdError):
    """The request is malformed: bad key length, page of the wrong size, unknown dtype."""

    status_name = "INVALID_ARGUMENT"


class NotFound(TierdError):
    """An unknown namespace or lease."""

    status_name = "NOT_FOUND"


class FailedPrecondition(TierdError):
    """The request is well formed but does not fit the current state (spec mismatch, closed store)."""

    status_name = "FAILED_PRECONDITION"


class ResourceExhausted(TierdError):
    """Every slot is leased or in flight, a quota is reached, or a tier cannot hold the request."""

    status_name = "RESOURCE_EXHAUSTED"


class DiskWriteFailed(ResourceExhausted):
    """The disk could not store pages (a full file system, an I/O error): they stay in memory."""


class Unauthenticated(TierdError):
    """The request carries no valid tenant token."""

    status_name = "UNAUTHENTICATED"


class PermissionDenied(TierdError):
    """The caller may not touch this resource (another session's lease, another tenant's namespace)."""

    status_name = "PERMISSION_DENIED"


class DeadlineExceeded(TierdError):
    """The pages did not become resident within the caller's timeout."""

    status_name = "DEADLINE_EXCEEDED"


class Unavailable(TierdError):
    """The store is shutting down or closed."""

    status_name = "UNAVAILABLE"


class ConfigError(TierdError):
    """A configuration that cannot be honoured on this machine; the message says by how much."""

    status_name = "FAILED_PRECONDITION"
