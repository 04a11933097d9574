"""PutPages and GetPages: the byte path's work between its wire codec and the page store.

The servicer authenticates, admits and maps errors; this checks the calls' limits and
namespaces (dict reads, on the event loop) and runs the copies on the servicer's pool, never on
the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from tierd.errors import InvalidArgument
from tierd.keys import PageKey
from tierd.server import convert
from tierd.server.auth import Caller
from tierd.server.bytepath import GetFrames, PutAssembler, PutMessage
from tierd.server.settings import ServingSettings
from tierd.store import PageStore
from tierd.store.types import PutResult
from tierd.tier import MEMORY_TIERS, Tier
from tierd.v1 import tierd_pb2 as pb

R = TypeVar("R")


class BytePath:
    """The byte path RPCs of one ``PageStore``; copies run on ``pool``."""

    def __init__(self, store: PageStore, settings: ServingSettings, pool: cf.Executor) -> None:
        self._store = store
        self._settings = settings
        self._pool = pool

    async def _run(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    async def put(self, messages: AsyncIterator[PutMessage],
                  caller: Caller) -> tuple[pb.PutPagesHeader, PutResult]:
        """Collect a PutPages stream and store its pages; its header and the store's result."""
        header: pb.PutPagesHeader | None = None
        tier = Tier.DRAM
        parent: PageKey | None = None
        assembler: PutAssembler | None = None
        async for message in messages:
            request = message.request
            if assembler is None:
                if not request.HasField("header"):
                    raise InvalidArgument("the first PutPages message must carry the header "
                                          "(ns_id, tier)")
                header = request.header
                tier = convert.tier_from_pb(header.tier, Tier.DRAM, "header.tier", MEMORY_TIERS)
                convert.seconds_from_pb(header, "durable_timeout_s", allow_zero=True)
                parent = convert.parent_from_pb(header)
                ns = self._store.namespace(header.ns_id)  # a dict read: fine on the loop
                caller.check_namespace(ns)
                assembler = PutAssembler(ns.page_bytes, self._settings.max_keys_per_request,
                                         self._settings.max_put_bytes)
            elif request.HasField("header"):
                raise InvalidArgument("only the first PutPages message may carry a header")
            assembler.add(request.keys, message.data)
        if header is None or assembler is None:
            raise InvalidArgument("PutPages got no messages: send the header first")
        keys, pages = assembler.finish()
        return header, await self._run(self._store.put, header.ns_id, keys, pages, tier, parent)

    async def get(self, request: pb.GetPagesRequest, caller: Caller) -> list[bytes]:
        """The serialized messages answering a GetPages call, in order."""
        keys = convert.keys_from_pb(request.keys, self._settings.max_keys_per_request)
        ns = self._store.namespace(request.ns_id)
        caller.check_namespace(ns)
        limit = self._settings.max_get_bytes
        if len(keys) * ns.page_bytes > limit:
            raise InvalidArgument(
                f"GetPages asks for {len(keys)} pages of {ns.page_bytes} bytes; one call may ask for "
                f"at most {limit // ns.page_bytes} (limits.max_get_bytes = {limit}): split it")
        return await self._run(self._read, request.ns_id, keys, ns.page_bytes)

    def _read(self, ns_id: int, keys: list[PageKey], page_bytes: int) -> list[bytes]:
        """On a pool thread: the cached prefix's pages copied once, into the messages to send."""
        frames = GetFrames(len(keys), page_bytes, self._settings.chunk_bytes)
        return frames.messages(self._store.get_into(ns_id, keys, frames.outs))
