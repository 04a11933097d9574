"""Tenants: who is calling (a bearer token in the call's metadata) and what that caller may touch.

With no tenant configured the daemon is open (single tenant: the unix socket's mode is the access
control) and every check here passes. With tenants, each RPC but Health and reflection carries
metadata ``authorization: Bearer <token>``; the token's tenant is the caller's, and the caller may
only touch namespaces (and leases of namespaces) of that tenant.

The daemon keeps only SHA-256 digests of tokens. A presented token is hashed and compared with
every tenant's digest in constant time, so timing tells nothing about how close a guess was.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from tierd.errors import PermissionDenied, Unauthenticated
from tierd.spec import Namespace

AUTH_METADATA_KEY = "authorization"
BEARER_SCHEME = "bearer"
TOKEN_DIGEST_BYTES = hashlib.sha256().digest_size
_HOW_TO_SEND = ("send metadata 'authorization: Bearer <token>' (tierd_client: "
                "ClientOptions(token=...) or $TIERD_TOKEN; tierctl: --token)")


def token_digest(token: str) -> bytes:
    """SHA-256 of the token's UTF-8 bytes: what the config stores (``token_sha256``, as hex)."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TenantToken:
    """One configured tenant and the SHA-256 digest (32 bytes) of its token."""

    tenant: str
    token_sha256: bytes = b""

    def __repr__(self) -> str:  # a digest is not the token, but logs need neither
        return f"TenantToken({self.tenant!r})"


@dataclass(frozen=True)
class Caller:
    """The tenant an RPC runs for; ``tenant=None`` in open mode, where every check passes."""

    tenant: str | None = None

    def register_tenant(self, requested: str, default: str) -> str:
        """The tenant a Register names: the caller's own (``requested`` may be empty or equal)."""
        if self.tenant is None:
            return requested or default
        if requested and requested != self.tenant:
            raise PermissionDenied(
                f"the token of tenant {self.tenant!r} may not register namespaces of tenant "
                f"{requested!r}: leave RegisterRequest.tenant empty (it defaults to the token's "
                f"tenant) or use {requested!r}'s token")
        return self.tenant

    def check_namespace(self, ns: Namespace) -> None:
        """``PermissionDenied`` unless ``ns`` belongs to the caller's tenant."""
        if self.tenant is not None and ns.tenant != self.tenant:
            raise PermissionDenied(
                f"namespace {ns.ns_id} belongs to another tenant, not to {self.tenant!r}: use a "
                "namespace id returned by your own Register")


    def check_ticket(self, ticket: int, ns: Namespace | None) -> None:
        """``PermissionDenied`` unless durability ``ticket``, issued to namespace ``ns`` (``None``:
        too old to be remembered), belongs to the caller's tenant."""
        if self.tenant is None:
            return
        if ns is None:
            raise PermissionDenied(f"durability ticket {ticket} is too old for this daemon to tell "
                                   "which tenant it belongs to: wait on tickets as they are issued")
        if ns.tenant != self.tenant:
            raise PermissionDenied(f"durability ticket {ticket} belongs to another tenant, not to "
                                   f"{self.tenant!r}: wait on the tickets your own calls returned")


class Authenticator:
    """Maps a call's bearer token to its tenant. Immutable after construction; loop-safe."""

    def __init__(self, tokens: Sequence[TenantToken]) -> None:
        for token in tokens:
            if len(token.token_sha256) != TOKEN_DIGEST_BYTES:
                raise ValueError(f"tenant {token.tenant!r}: a token digest is "
                                 f"{TOKEN_DIGEST_BYTES} bytes, got {len(token.token_sha256)}")
        self._tokens = tuple(tokens)

    @property
    def enabled(self) -> bool:
        """Whether tenants are configured (else the daemon is open and every caller is let in)."""
        return bool(self._tokens)

    def caller(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Caller:
        """The caller of an RPC with this invocation metadata; ``Unauthenticated`` if unknown."""
        if not self._tokens:
            return Caller()
        values = [value for key, value in metadata or () if key == AUTH_METADATA_KEY]
        if not values:
            raise Unauthenticated(f"this tierd serves tenants and the call carries no token: "
                                  f"{_HOW_TO_SEND}")
        if len(values) > 1:
            raise Unauthenticated(f"the call carries {len(values)} authorization entries; "
                                  f"send exactly one: {_HOW_TO_SEND}")
        value = values[0] if isinstance(values[0], str) else values[0].decode(errors="replace")
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != BEARER_SCHEME or not token:
            raise Unauthenticated(f"the authorization metadata is not of the form 'Bearer "
                                  f"<token>': {_HOW_TO_SEND}")
        tenant = self._match(token_digest(token))
        if tenant is None:
            raise Unauthenticated("the token matches no tenant of this tierd: check the token "
                                  "against the daemon's [tenants.NAME] token_sha256 / token_file")
        return Caller(tenant)

    def _match(self, digest: bytes) -> str | None:
        # Compare with every digest, without stopping at a match: the time taken does not depend
        # on which tenant (if any) the token belongs to.
        found: str | None = None
        for token in self._tokens:
            if hmac.compare_digest(digest, token.token_sha256):
                found = token.tenant
        return found
