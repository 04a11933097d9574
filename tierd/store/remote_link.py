"""The page store's link to the remote tier: what it reads on a local miss, what it queues.

Reads: the keys after the local cached prefix are fetched (verified) from the remote tier and
put into dram like any put, so Acquire, Prefetch and reads then find them locally. Writes: pages
are offered to the remote writer when published by a put or commit (``write_on = commit``) or
when they leave dram (``demote``); the writer reads them back through ``StorePages``. Pages that
came from the remote tier are never offered back to it.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from tierd.config import RemoteWriteOn, StoreConfig
from tierd.errors import ConfigError, NotFound
from tierd.keys import PageKey
from tierd.remote.base import RemoteBackend
from tierd.remote.tier import RemoteStats, RemoteTier
from tierd.remote.writer import RemoteWriter
from tierd.spec import Namespace
from tierd.store.manager import Manager
from tierd.store.runner import PlanRunner
from tierd.tier import Tier
from tierd.values import LookupResult

log = logging.getLogger(__name__)


class StorePages:
    """The writer's ``PageSource`` over the manager and the runner: a read that touches nothing."""

    def __init__(self, manager: Manager, runner: PlanRunner) -> None:
        self._manager = manager
        self._runner = runner

    def describe(self, ns_id: int) -> tuple[bytes, int] | None:
        try:
            ns = self._manager.namespace(ns_id)
        except NotFound:
            return None
        return ns.fingerprint, ns.page_bytes

    def read_page(self, ns_id: int, key: PageKey, out: memoryview) -> bool:
        plan = self._manager.plan_read(ns_id, [key], touch=False, prefix_only=False)
        if not plan.moves:
            return False
        return all(self._runner.run(plan, [out]))


@dataclass(frozen=True)
class RemoteLink:
    """The remote tier, its writer, and when pages are queued for it."""

    tier: RemoteTier
    writer: RemoteWriter
    write_on: RemoteWriteOn

    def published(self, ns_id: int, keys: Sequence[PageKey]) -> None:
        """A put or commit published ``keys`` (and did not get them from the remote tier)."""
        if self.write_on is RemoteWriteOn.COMMIT:
            self.writer.offer(ns_id, keys)

    def left_dram(self, ns_id: int, keys: Sequence[PageKey]) -> None:
        """``keys`` were demoted out of dram (to disk): called under the manager's lock, and
        ``offer`` never waits."""
        if self.write_on is RemoteWriteOn.DEMOTE:
            self.writer.offer(ns_id, keys)

    def deleted(self, ns_id: int, keys: Sequence[PageKey]) -> None:
        self.writer.offer_delete(ns_id, keys)

    def stats(self) -> RemoteStats:
        return replace(self.tier.stats(), queue_depth=self.writer.queue_depth,
                       dropped=self.writer.dropped)

    def close(self) -> None:
        """The writer first (its last batches use the tier), then the backend."""
        self.writer.close()
        self.tier.close()


def open_backend(config: StoreConfig) -> RemoteBackend:
    """The backend ``[remote]`` names (Redis Cluster, imported only then); ``ConfigError`` when
    its client library is not installed."""
    if importlib.util.find_spec("redis") is None:
        raise ConfigError("remote.nodes is set but redis-py is not installed: "
                          "pip install 'tierd[remote]' (or unset remote.nodes)")
    from tierd.remote.redis_cluster import open_redis_cluster
    return open_redis_cluster(config.remote)


def open_remote(config: StoreConfig, manager: Manager, runner: PlanRunner,
                backend: RemoteBackend | None) -> RemoteLink | None:
    """The link, its writer started; ``None`` when no remote tier is configured or given."""
    if backend is None and not config.remote.enabled:
        return None
    if backend is None:
        backend = open_backend(config)
    tier = RemoteTier(config.remote, backend)
    writer = RemoteWriter(tier, StorePages(manager, runner), config.remote)
    link = RemoteLink(tier, writer, config.remote.write_on)
    manager.watch_dram_exits(link.left_dram)
    writer.start()
    log.info("remote tier on %s (%d seed node(s)), pages written on %s", backend.name,
             len(config.remote.nodes), config.remote.write_on.value)
    return link


def remote_lookup(link: RemoteLink, ns: Namespace, keys: Sequence[PageKey],
                  local: LookupResult) -> LookupResult:
    """``local`` (a lookup of ``keys`` shorter than them) extended by the remote tier's hits."""
    extra = link.tier.cached_prefix(ns.fingerprint, keys[local.num_hits:])
    return LookupResult(local.num_hits + extra, local.tiers + (Tier.REMOTE,) * extra)


def fill_from_remote(link: RemoteLink, manager: Manager, ns_id: int, keys: Sequence[PageKey],
                     present: int) -> tuple[list[PageKey], list[memoryview]]:
    """The verified remote pages of the keys after the local cached prefix (``present`` long):
    ``(keys, pages)`` for the caller to put into dram."""
    if present >= len(keys):
        return [], []
    ns = manager.namespace(ns_id)
    # The tier answers every failure as a miss (it logs why): nothing to catch here.
    pages = link.tier.fetch(ns.fingerprint, keys[present:], ns.page_bytes)
    return list(keys[present:present + len(pages)]), pages
