"""Running one RPC: a cap on calls in flight per channel, and retries with backoff on UNAVAILABLE.

Only UNAVAILABLE is retried: the daemon answers it when it is shutting down or not (yet)
listening, and a rejected request changes no state, so trying again is safe. ``RpcRunner`` runs
async attempts (grpc.aio), ``SyncRpcRunner`` blocking ones (grpc's synchronous API); both follow
one ``RetryPolicy`` with the same messages.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from tierd_client.errors import TierdRpcError, UnavailableError, from_grpc
from tierd_client.options import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Retrying:
    """The retry decisions both runners share."""

    def __init__(self, target: str, retry: RetryPolicy) -> None:
        self._target = target
        self._retry = retry

    @property
    def max_attempts(self) -> int:
        return self._retry.max_attempts

    def _backoff_s(self, rpc: str, error: TierdRpcError, number: int) -> float | None:
        """After failed attempt ``number``: seconds to wait before the next one, ``None`` when
        attempts ran out; an error other than UNAVAILABLE is raised."""
        if error.code != grpc.StatusCode.UNAVAILABLE:
            raise error
        if number >= self._retry.max_attempts:
            return None
        delay_s = self._retry.backoff_s(number)
        log.debug("%s: tierd unavailable (%s); attempt %d again in %.3f s", rpc, error.details,
                  number + 1, delay_s)
        return delay_s

    def _gave_up(self, rpc: str, error: TierdRpcError | None) -> UnavailableError:
        details = error.details if error is not None else "no attempt was made"
        return UnavailableError(
            f"tierd at {self._target} did not answer after {self._retry.max_attempts} attempts "
            f"({details}); is the daemon running? (`systemctl status tierd`, "
            "`tierctl health`)", rpc=rpc)


class RpcRunner(_Retrying):
    """Runs async RPC attempts for one channel. Belongs to the event loop of its client."""

    def __init__(self, target: str, retry: RetryPolicy, max_inflight_rpcs: int) -> None:
        super().__init__(target, retry)
        self._inflight = asyncio.Semaphore(max_inflight_rpcs)

    async def call(self, rpc: str, attempt: Callable[[], Awaitable[T]], *, limited: bool = True) -> T:
        """``await attempt()`` until it succeeds, fails with another code, or attempts run out.

        ``limited``: hold one of the channel's in-flight slots during each attempt (streams that
        stay open for the client's life, like ``Session``, do not).
        """
        error: TierdRpcError | None = None
        for number in range(1, self.max_attempts + 1):
            try:
                if limited:
                    async with self._inflight:
                        return await attempt()
                return await attempt()
            except grpc.RpcError as exc:
                error = from_grpc(exc, rpc)
            except TierdRpcError as exc:
                error = exc
            delay_s = self._backoff_s(rpc, error, number)
            if delay_s is None:
                break
            await asyncio.sleep(delay_s)
        raise self._gave_up(rpc, error)


class SyncRpcRunner(_Retrying):
    """Runs blocking RPC attempts for one channel, from any number of threads at once."""

    def __init__(self, target: str, retry: RetryPolicy, max_inflight_rpcs: int) -> None:
        super().__init__(target, retry)
        self._inflight = threading.BoundedSemaphore(max_inflight_rpcs)

    def call(self, rpc: str, attempt: Callable[[], T], *, limited: bool = True) -> T:
        """``attempt()`` until it succeeds, fails with another code, or attempts run out
        (``limited`` as in ``RpcRunner.call``)."""
        error: TierdRpcError | None = None
        for number in range(1, self.max_attempts + 1):
            try:
                if limited:
                    with self._inflight:
                        return attempt()
                return attempt()
            except grpc.RpcError as exc:
                error = from_grpc(exc, rpc)
            except TierdRpcError as exc:
                error = exc
            delay_s = self._backoff_s(rpc, error, number)
            if delay_s is None:
                break
            time.sleep(delay_s)
        raise self._gave_up(rpc, error)
