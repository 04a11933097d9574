"""``TierdLink``: one connector role's connection to tierd, which never lets tierd trouble out.

A call through the link either answers or returns ``None``: a daemon that is down, slow or
restarted, a namespace it forgot, a lease that ended, all become "no answer" (logged once per
outage), and vLLM goes on as without a cache. After a failure the link stays down for
``retry_after_s`` (no call waits on a dead daemon), then opens a fresh client and registers the
namespace again, so a daemon that is back (pages from disk) is used again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from tierd.spec import PageSpec
from tierd.tier import Tier
from tierd_client.arena import ArenaView
from tierd_client.errors import InvalidArgumentError, TierdRpcError, UnavailableError
from tierd_client.options import ClientOptions, RetryPolicy
from tierd_client.sync import TierClient
from tierd_client.types import NamespaceHandle
from tierd_client.vllm.settings import ConnectorSettings

log = logging.getLogger("tierd_client.vllm")
T = TypeVar("T")
# Codes after which the link keeps its client and goes on at once: every slot leased, a quota.
_BUSY = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})


class TierdLink:
    """A lazily opened ``TierClient`` plus the namespace of ``spec``; safe from several threads.

    ``clock``: monotonic seconds (tests pass their own to step over ``retry_after_s``).
    """

    def __init__(self, settings: ConnectorSettings, spec: PageSpec, role: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.spec = spec
        self._role = role
        self._clock = clock
        self._lock = threading.RLock()
        self._client: TierClient | None = None
        self._ns: NamespaceHandle | None = None
        self._down_until = 0.0
        self._logged_down = False
        self.failures = 0  # calls that found tierd in trouble (for tests and logs)

    def _options(self) -> ClientOptions:
        # One attempt and a short deadline: the scheduler must not wait out a backoff schedule
        # on a dead daemon. The link's own retry_after_s does the retrying.
        return ClientOptions(retry=RetryPolicy(max_attempts=1), rpc_timeout_s=self.settings.rpc_timeout_s,
                             client_name=f"vllm-{self._role}", local_data_path=self.settings.local)

    def _open(self) -> tuple[TierClient, NamespaceHandle]:
        if self._client is None or self._ns is None:
            self._client = TierClient(self.settings.socket, self._options())
            # Health first, with a deadline of its own: it waits out a slow connection set-up
            # (an engine host whose cores vLLM keeps busy) that the short RPC deadline would not.
            if not self._client.health(timeout_s=self.settings.connect_timeout_s):
                raise UnavailableError(f"tierd at {self.settings.socket} is not serving yet")
            self._ns = self._client.register(self.spec, self.settings.tenant)
            if self._logged_down:
                log.info("tierd at %s is back (%s side): namespace %d", self.settings.socket,
                         self._role, self._ns.ns_id)
                self._logged_down = False
        return self._client, self._ns

    def connect(self) -> bool:
        """Open the connection now (at engine start, after vLLM forked) rather than in a step."""
        return self.call("connect", lambda _client, _ns: True) is not None

    def call(self, what: str, fn: Callable[[TierClient, NamespaceHandle], T]) -> T | None:
        """``fn(client, ns)``, or ``None`` when tierd is down (or was within ``retry_after_s``)
        or the call failed or was refused; ``what`` names the call in the log."""
        with self._lock:
            if self._clock() < self._down_until:
                return None
            try:
                client, ns = self._open()
                return fn(client, ns)
            except InvalidArgumentError as exc:
                # A request this daemon refuses (a limit of its config): never vLLM's failure.
                self.failures += 1
                log.error("tierd refused %s (%s side): %s", what, self._role, exc)
                return None
            except (TierdRpcError, OSError) as exc:
                self._fail(what, exc)
                return None

    def _fail(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        code = getattr(exc, "code", None)
        if code in _BUSY:  # the daemon is fine, this call was too much: no answer, nothing reset
            log.info("tierd %s refused (%s side): %s", what, self._role, exc)
            return
        self._down_until = self._clock() + self.settings.retry_after_s
        if not self._logged_down:
            log.warning("tierd %s failed (%s side): %s; vLLM recomputes, tierd is tried again in "
                        "%.1f s", what, self._role, exc, self.settings.retry_after_s)
            self._logged_down = True
        self.reset()

    def reset(self) -> None:
        """Drop the client (its leases end with its session); the next call opens a new one."""
        with self._lock:
            client, self._client, self._ns = self._client, None, None
            if client is not None:
                try:
                    client.close()
                except (TierdRpcError, OSError) as exc:  # the daemon may be gone: nothing to end
                    log.debug("closing the tierd client: %s", exc)

    def arena(self, client: TierClient, ns: NamespaceHandle) -> ArenaView | None:
        """The mapped region of ``settings.tier``, or ``None`` where it cannot be mapped (a daemon
        on TCP, another machine, ``local = false``): the byte path then."""
        if not self.settings.local or ns.region(self.tier) is None:
            return None
        try:
            return client.arena(ns, self.tier)
        except TierdRpcError as exc:
            log.debug("no mapped %s region (%s): byte path", self.tier.label, exc)
            return None

    def max_pages(self, ns: NamespaceHandle) -> int:
        """Pages one lease may take: half the namespace's region of ``tier`` (a step's saves or
        hits beyond that go in parts, or not at all), at least 1."""
        region = ns.region(self.tier)
        return max(1, (region.num_slots if region is not None else 1) // 2)

    @property
    def is_up(self) -> bool:
        """A client is open and tierd did not fail within ``retry_after_s``."""
        return self._client is not None and self._clock() >= self._down_until

    @property
    def tier(self) -> Tier:
        return Tier[self.settings.tier.upper()]

    def close(self) -> None:
        self.reset()
