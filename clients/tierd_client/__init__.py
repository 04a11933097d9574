"""tierd_client: the worker-side library of tierd (blocking ``TierClient``, async ``AsyncTierClient``).

::

    from tierd_client import TierClient, PageSpec
    with TierClient("/run/tierd/tierd.sock") as client:
        ns = client.register(spec)
        keys = ns.keys(token_ids)
        client.put(ns, keys, pages)
        n = client.lookup(ns, keys)
        got = client.get(ns, keys[:n])

Importing it starts nothing and never imports torch or CUDA.
"""

from tierd.spec import PageSpec
from tierd.tier import Tier
from tierd_client.aio import AsyncTierClient
from tierd_client.arena import ArenaView
from tierd_client.errors import (
                                 DeadlineExceededError,
                                 FailedPreconditionError,
                                 InvalidArgumentError,
                                 NotFoundError,
                                 PermissionDeniedError,
                                 ResourceExhaustedError,
                                 TierdRpcError,
                                 UnauthenticatedError,
                                 UnavailableError,
)
from tierd_client.leases import AsyncLease
from tierd_client.options import ClientOptions, RetryPolicy
from tierd_client.sync import Lease, TierClient
from tierd_client.types import (
    CommitResult,
    DaemonStats,
    LeaseKind,
    LookupResult,
    NamespaceHandle,
    PutResult,
    RemoteTierStats,
    TierStats,
)

__all__ = [
    "ArenaView", "AsyncLease", "AsyncTierClient", "ClientOptions", "CommitResult", "DaemonStats",
    "DeadlineExceededError", "FailedPreconditionError", "InvalidArgumentError", "Lease",
    "LeaseKind", "LookupResult", "NamespaceHandle", "NotFoundError", "PageSpec",
    "PermissionDeniedError", "PutResult", "RemoteTierStats", "ResourceExhaustedError", "RetryPolicy", "Tier",
    "TierClient", "TierStats", "TierdRpcError", "UnauthenticatedError", "UnavailableError",
]
