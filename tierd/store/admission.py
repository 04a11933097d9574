"""What a Register must satisfy before a namespace gets memory or a record on disk.

Every Register: the spec's limits (``tierd.spec.check_registrable``), the tenant name, and the
store's page size limit. A new namespace also: the namespace caps, overall and per tenant
(namespaces are kept for good, on disk too, so the caps bound what one tenant can make the daemon
hold). Pure checks over values; the caller holds whatever lock makes them atomic with the create.
"""

from __future__ import annotations

from collections.abc import Iterable

from tierd.config import StoreConfig
from tierd.errors import InvalidArgument, ResourceExhausted
from tierd.spec import Namespace, PageSpec, check_registrable, check_tenant, excerpt
from tierd.units import format_size


def check_register(spec: PageSpec, tenant: str, config: StoreConfig) -> None:
    """``InvalidArgument`` naming the field, the limit and the value's size when ``spec`` or
    ``tenant`` is out of bounds."""
    if not isinstance(spec, PageSpec):
        raise InvalidArgument(f"spec must be a PageSpec, got {type(spec).__name__}")
    check_tenant(tenant)
    check_registrable(spec)
    if spec.page_bytes > config.max_page_bytes:
        raise InvalidArgument(
            f"spec describes pages of {spec.page_bytes} bytes ({format_size(spec.page_bytes)}); "
            f"this daemon takes pages up to {config.max_page_bytes} bytes "
            f"({format_size(config.max_page_bytes)}, store.max_page_size): use fewer page_tokens")


def check_room_for_namespace(tenant: str, namespaces: Iterable[Namespace], config: StoreConfig) -> None:
    """``ResourceExhausted`` when one more namespace of ``tenant`` would pass a namespace cap."""
    total = 0
    of_tenant = 0
    for ns in namespaces:
        total += 1
        of_tenant += ns.tenant == tenant
    if of_tenant >= config.max_namespaces_per_tenant:
        raise ResourceExhausted(
            f"tenant {excerpt(tenant)} has {of_tenant} namespaces, the limit "
            f"(store.max_namespaces_per_tenant = {config.max_namespaces_per_tenant}); namespaces are "
            f"kept in the data dir for good: register an existing spec again, or raise "
            f"store.max_namespaces_per_tenant in the daemon's config")
    if total >= config.max_namespaces:
        raise ResourceExhausted(
            f"the daemon holds {total} namespaces, the limit (store.max_namespaces = "
            f"{config.max_namespaces}); namespaces are kept in the data dir for good: register an "
            f"existing spec again, or raise store.max_namespaces in the daemon's config")
