"""The Redis Cluster (or Valkey) backend of the remote tier.

Each page is two keys in one hash slot (the hash tag is the hex page id, so both always live on
one master)::

    td1:{<64 hex digits>}:b   body: payload[:-TAIL_BYTES]
    td1:{<64 hex digits>}:h   head: u16 LE header length, header, payload[-TAIL_BYTES:]

Keeping the last ``TAIL_BYTES`` out of the body lets a 2 MiB page's body sit inside a jemalloc
size class instead of costing 2.5 MiB. Reads are one ``MGET head body`` per page (atomic on its
node); writes send each page's body and then its head in one pipeline per master: a master runs a
connection's commands in order, so a writer that dies mid-stream leaves at most a body without
its head. (A redirect in the middle of a reshard may land a head before its body; a reader then
finds the two disagree, which the remote tier's checksum treats as a miss.)

redis-py's ``RedisCluster`` keeps the slot map and one connection pool per master; the commands
themselves are packed here and pipelined per master on a small thread pool. That keeps every
call inside its deadline: each master's exchange reads with the time left, the caller stops
waiting at the deadline, and MOVED / ASK / TRYAGAIN are followed here, round by round, only
while time is left. redis-py's own retries (one command at a time, with topology refreshes and
sleeps) are switched off. A master that fails (refused, hung past the deadline, CLUSTERDOWN)
costs only its own pages, as misses, and is skipped for ``retry_after_s``; a call raises
``RemoteUnavailable`` only when no master it needed answered.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import struct
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tierd.config import RemoteConfig
from tierd.errors import ConfigError
from tierd.remote.base import Fetched, RemoteUnavailable
from tierd.remote.resp import Cmd, InSink, byte_view, exchange, pack

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import ClusterNode, RedisCluster

log = logging.getLogger(__name__)

TAIL_BYTES = 64
# What an ACL user of tierd needs on every node (redis-py reads COMMAND and CLUSTER SLOTS).
ACL_RULES = "~td1:* +set +mget +exists +del +asking +cluster|slots +command"
KEY_PREFIX = b"td1:{"
_HEAD_LEN = struct.Struct("<H")
MAX_HEADER_BYTES = 0xFFFF
# The caller waits this long past the deadline for a master's own read timeout (a message that
# names it) before it gives up on the exchange.
_GRACE_S = 0.1
_MAX_ROUNDS = 32                 # redirect / TRYAGAIN rounds of one call (a reshard moves slot by slot)
_TRYAGAIN_PAUSE_S = (0.002, 0.05)
_REFRESH_INTERVAL_S = 1.0        # at most one background slot-map refresh per second
_WORKERS = 32                    # threads for per-master exchanges (created on demand)


def head_key(page_id: bytes) -> bytes:
    return KEY_PREFIX + page_id.hex().encode() + b"}:h"


def body_key(page_id: bytes) -> bytes:
    return KEY_PREFIX + page_id.hex().encode() + b"}:b"


def pack_head(header: bytes, tail: bytes | memoryview) -> bytes:
    """The head value: header length, header, payload tail."""
    if len(header) > MAX_HEADER_BYTES:
        raise ValueError(f"a page header holds at most {MAX_HEADER_BYTES} bytes, got {len(header)}")
    return b"".join((_HEAD_LEN.pack(len(header)), header, tail))


def split_head(head: bytes) -> tuple[bytes, bytes] | None:
    """(header, tail) of a head value, or ``None`` when it is too short for its own length field."""
    if len(head) < _HEAD_LEN.size:
        return None
    (size,) = _HEAD_LEN.unpack_from(head)
    end = _HEAD_LEN.size + size
    if end > len(head):
        return None
    return head[_HEAD_LEN.size:end], head[end:]


class _NodeDown(Exception):
    """The reply of a command whose master failed in this call or is backing off after a failure
    (a value, like an error reply: that page is a miss, the call goes on)."""


def _describe(exc: BaseException) -> str:
    """What failed, in one line; an authentication or TLS failure says which settings to check."""
    from redis.exceptions import AuthenticationError, NoPermissionError

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, AuthenticationError):
            return (f"authentication failed ({cause}): check remote.username and the password in "
                    f"remote.password_file")
        if isinstance(cause, NoPermissionError):
            return (f"permission denied ({cause}): the ACL user (remote.username) needs "
                    f"{ACL_RULES}")
        if isinstance(cause, ssl.SSLError):
            # A missing client certificate may show only as an SSL EOF on the first write (TLS 1.3
            # checks it after the client's side of the handshake is done): name the settings.
            return (f"TLS failed ({type(exc).__name__}: {exc}): check remote.tls_ca_file (the CA "
                    f"of the servers' certificates) and remote.tls_cert_file / remote.tls_key_file "
                    f"(a client certificate, where the cluster requires one)")
        cause = cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}: {exc}"


class RedisClusterBackend:
    """``RemoteBackend`` on a Redis Cluster; thread-safe, connects lazily and reconnects by itself."""

    def __init__(self, config: RemoteConfig, password: str | None) -> None:
        if not config.nodes:
            raise ConfigError("remote.nodes is empty: list the cluster's seed nodes as HOST:PORT")
        try:
            import redis.cluster  # noqa: F401  (here, not at import: tierd runs without redis-py)
        except ImportError as e:
            raise ConfigError(f"remote.nodes is set but redis-py cannot be imported ({e}): install "
                              f"tierd[remote] (redis[hiredis]) or empty remote.nodes") from e
        self._config = config
        self._password = password
        self._lock = threading.Lock()
        self._cluster: RedisCluster | None = None
        self._connecting: Future[RedisCluster] | None = None
        self._refreshing = False
        self._refreshed_at = float("-inf")
        self._closed = False
        self._down_until_s: dict[str, float] = {}   # master name -> end of its back-off
        self._failures = 0
        self._executor = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="tierd-redis")
        # Start connecting now, without waiting: the first call most likely finds the slot map.
        with self._lock:
            self._connecting = self._executor.submit(self._connect)

    @property
    def name(self) -> str:
        return "redis-cluster"

    @property
    def failures(self) -> int:
        """Masters that failed a call so far (their pages were misses, the call went on)."""
        with self._lock:
            return self._failures

    # -- RemoteBackend -----------------------------------------------------------------------

    def exists(self, page_ids: Sequence[bytes], deadline_s: float) -> list[bool]:
        """Pipelined EXISTS of the head keys (False on a master that does not answer)."""
        cmds = [Cmd(k, pack(b"EXISTS", k)) for k in map(head_key, page_ids)]
        return [not isinstance(r, _NodeDown) and self._value(r, "exists", int) > 0
                for r in self._run(cmds, deadline_s, "exists")]

    def get_into(self, page_ids: Sequence[bytes], views: Sequence[memoryview],
                 deadline_s: float) -> list[Fetched | None]:
        """``MGET head body`` per page; the payload is copied only when its length is the view's."""
        if len(views) != len(page_ids):
            raise ValueError(f"{len(page_ids)} page ids but {len(views)} views")
        cmds = []
        for page_id, view in zip(page_ids, views):
            head = head_key(page_id)
            cmds.append(Cmd(head, pack(b"MGET", head, body_key(page_id)), sink=byte_view(view)))
        replies = self._run(cmds, deadline_s, "get")
        out: list[Fetched | None] = []
        for view, reply in zip(views, replies):
            if isinstance(reply, _NodeDown):
                out.append(None)
                continue
            parts = self._value(reply, "get", list)
            if len(parts) != 2:
                raise RemoteUnavailable(f"redis-cluster get: MGET answered {len(parts)} values, not 2")
            out.append(_fill(view, parts[0], parts[1]))
        return out

    def put(self, page_ids: Sequence[bytes], headers: Sequence[bytes],
            payloads: Sequence[memoryview], deadline_s: float) -> list[bool]:
        """Each page's body, then its head, in one pipeline per master (one round trip): a master
        runs a connection's commands in order, so a writer cut off mid-stream leaves at most a
        body without its head. False where the store refused a part (out of memory); a head
        stored without its body is deleted again (best effort: a reader would delete it too)."""
        if not len(page_ids) == len(headers) == len(payloads):
            raise ValueError(f"{len(page_ids)} page ids, {len(headers)} headers, {len(payloads)} payloads")
        cmds = []
        for page_id, header, payload in zip(page_ids, headers, payloads):
            data = byte_view(payload)
            cut = max(0, len(data) - TAIL_BYTES)
            bkey, hkey = body_key(page_id), head_key(page_id)
            cmds.append(Cmd(bkey, pack(b"SET", bkey, data[:cut])))
            cmds.append(Cmd(hkey, pack(b"SET", hkey, pack_head(header, data[cut:]))))
        stored = [self._stored(r) for r in self._run(cmds, deadline_s, "put")]
        done = [body and head for body, head in zip(stored[0::2], stored[1::2])]
        orphans = [Cmd(key, pack(b"DEL", key)) for key, body, head in
                   zip(map(head_key, page_ids), stored[0::2], stored[1::2]) if head and not body]
        if orphans:
            with contextlib.suppress(RemoteUnavailable):
                self._run(orphans, deadline_s, "put")
        return done

    def delete(self, page_ids: Sequence[bytes], deadline_s: float) -> None:
        """``DEL head body`` per page (one slot, one command)."""
        cmds = []
        for page_id in page_ids:
            head = head_key(page_id)
            cmds.append(Cmd(head, pack(b"DEL", head, body_key(page_id))))
        for reply in self._run(cmds, deadline_s, "delete"):
            if not isinstance(reply, _NodeDown):
                self._value(reply, "delete", int)

    def close(self) -> None:
        """Close every connection and the worker threads; idempotent. Later calls raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            cluster, self._cluster = self._cluster, None
        self._executor.shutdown(wait=False, cancel_futures=True)
        if cluster is not None:
            with contextlib.suppress(Exception):   # closing sockets of a dead cluster
                cluster.close()

    # -- replies -----------------------------------------------------------------------------

    @staticmethod
    def _value(reply: object, what: str, kind: type[Any]) -> Any:
        """``reply`` when it has the expected type; an error reply or anything else raises."""
        if isinstance(reply, kind):
            return reply
        if isinstance(reply, Exception):
            raise RemoteUnavailable(f"redis-cluster {what}: {_describe(reply)}")
        raise RemoteUnavailable(f"redis-cluster {what}: unexpected reply {type(reply).__name__}")

    @staticmethod
    def _stored(reply: object) -> bool:
        """A SET's verdict: OOM is this page's failure (the store is full), other errors the call's."""
        from redis.exceptions import OutOfMemoryError

        if isinstance(reply, OutOfMemoryError | _NodeDown):
            log.debug("redis-cluster put refused: %s", reply)
            return False
        return bool(RedisClusterBackend._value(reply, "put", bytes) == b"OK")

    # -- routing -----------------------------------------------------------------------------

    def _run(self, cmds: list[Cmd], deadline: float, what: str) -> list[object]:
        """Every command's reply (in order), following MOVED / ASK and retrying TRYAGAIN while
        time is left. A command of a master that fails (or backs off) gets a ``_NodeDown`` reply;
        ``RemoteUnavailable`` when no master could answer or time runs out."""
        from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

        if not cmds:
            return []
        if time.monotonic() >= deadline:
            raise RemoteUnavailable(f"redis-cluster {what}: the deadline had passed before the call")
        cluster = self._cluster_for(deadline, what)
        replies: list[object] = [None] * len(cmds)
        pending = list(range(len(cmds)))
        for attempt in range(_MAX_ROUNDS):
            answered = self._round(cluster, [(i, cmds[i]) for i in pending], deadline, what)
            pending, pause = [], 0.0
            for i, reply in answered.items():
                if isinstance(reply, MovedError):
                    self._moved(cluster, reply)
                    cmds[i] = replace(cmds[i], target=reply.node_addr, asking=False)
                elif isinstance(reply, AskError):
                    cmds[i] = replace(cmds[i], target=reply.node_addr, asking=True)
                elif isinstance(reply, TryAgainError):   # a page's two keys split by a migration
                    cmds[i] = replace(cmds[i], target=None, asking=False)
                    pause = min(_TRYAGAIN_PAUSE_S[0] * 2 ** attempt, _TRYAGAIN_PAUSE_S[1])
                elif isinstance(reply, ClusterDownError):   # this master cannot serve the slot
                    replies[i] = _NodeDown(str(reply))
                    continue
                else:
                    replies[i] = reply
                    continue
                pending.append(i)
            if not pending:
                return self._answered(replies, what)
            if time.monotonic() + pause >= deadline:
                break
            time.sleep(pause)
        raise RemoteUnavailable(f"redis-cluster {what}: {len(pending)} commands still redirected "
                                f"(resharding?) when the call had to end")

    @staticmethod
    def _answered(replies: list[object], what: str) -> list[object]:
        """``replies``, unless no master answered any of them: then the call failed."""
        down = [r for r in replies if isinstance(r, _NodeDown)]
        if down and len(down) == len(replies):
            raise RemoteUnavailable(f"redis-cluster {what}: no master answered ({down[0]})")
        return replies

    def _node_failed(self, cluster: RedisCluster, name: str, error: BaseException, what: str) -> _NodeDown:
        """Back off from master ``name`` for ``retry_after_s``; the reply its commands get."""
        with self._lock:
            was_up = time.monotonic() >= self._down_until_s.get(name, 0.0)
            self._down_until_s[name] = time.monotonic() + self._config.retry_after_s
            self._failures += 1
        message = f"{name}: {_describe(error)}"
        if was_up:
            log.warning("redis-cluster %s failed, its pages are misses for %.1f s: %s", what,
                        self._config.retry_after_s, message)
        self._refresh_soon(cluster)
        return _NodeDown(message)

    def _backing_off(self, name: str) -> bool:
        with self._lock:
            return time.monotonic() < self._down_until_s.get(name, 0.0)

    def _round(self, cluster: RedisCluster, items: list[tuple[int, Cmd]], deadline: float,
               what: str) -> dict[int, object]:
        """Send ``items`` to their masters in parallel; replies by index."""
        from redis.exceptions import RedisClusterException, RedisError

        groups: dict[str, tuple[Redis, list[tuple[int, Cmd]]]] = {}
        for i, cmd in items:
            node = self._node_for(cluster, cmd, what)
            if node.name not in groups:
                groups[node.name] = (cluster.get_redis_connection(node), [])
            groups[node.name][1].append((i, cmd))
        answered: dict[int, object] = {}
        for name in [name for name in groups if self._backing_off(name)]:
            down = _NodeDown(f"{name} is backing off after a failure")
            answered.update((i, down) for i, _ in groups.pop(name)[1])
        if not groups:
            return answered
        if len(groups) == 1:  # one master: no thread hop (its reads are bounded by the deadline)
            (name, (client, group)), = groups.items()
            try:
                replies: list[object] = exchange(client, [c for _, c in group], deadline)
            except (RedisError, RedisClusterException, OSError) as error:  # other exceptions: bugs
                replies = [self._node_failed(cluster, name, error, what)] * len(group)
            answered.update(zip((i for i, _ in group), replies))
            return answered
        futures: dict[Future[list[object]], tuple[str, list[int]]] = {}
        for name, (client, group) in groups.items():
            try:
                future = self._executor.submit(exchange, client, [c for _, c in group], deadline)
            except RuntimeError:   # shut down by close()
                raise RemoteUnavailable("redis-cluster: the backend is closed") from None
            futures[future] = (name, [i for i, _ in group])
        _, late = wait(futures, timeout=max(0.0, deadline + _GRACE_S - time.monotonic()))
        for future, (name, indexes) in futures.items():
            if future in late:
                future.cancel()
                replies = [self._node_failed(cluster, name, TimeoutError("no answer by the deadline"),
                                             what)] * len(indexes)
            elif (exc := future.exception()) is not None:
                if not isinstance(exc, RedisError | RedisClusterException | OSError):
                    raise exc   # a bug, not the store: never hidden as a miss
                replies = [self._node_failed(cluster, name, exc, what)] * len(indexes)
            else:
                replies = future.result()
            answered.update(zip(indexes, replies))
        return answered

    def _node_for(self, cluster: RedisCluster, cmd: Cmd, what: str) -> ClusterNode:
        """The master a command goes to: its redirect target, else its slot's owner."""
        from redis.crc import key_slot
        from redis.exceptions import SlotNotCoveredError

        if cmd.target is not None:
            host, port = cmd.target
            node = cluster.nodes_manager.get_node(host=host, port=port)
            if node is None:
                self._refresh_soon(cluster)
                raise RemoteUnavailable(f"redis-cluster {what}: redirected to {host}:{port}, a node "
                                        f"not in the slot map yet (refreshing it)")
            return node
        try:
            return cluster.nodes_manager.get_node_from_slot(key_slot(cmd.key))
        except SlotNotCoveredError as e:
            self._refresh_soon(cluster)
            raise RemoteUnavailable(f"redis-cluster {what}: {e}") from e

    def _moved(self, cluster: RedisCluster, moved: Any) -> None:
        """Patch the slot map for later calls (redis-py >= 6 does it in place; else refresh it)."""
        manager = cluster.nodes_manager
        if hasattr(manager, "move_slot"):
            manager.move_slot(moved)
        else:
            self._refresh_soon(cluster)

    # -- connection and slot map -------------------------------------------------------------

    def _cluster_for(self, deadline: float, what: str) -> RedisCluster:
        """The cluster client; if none yet, waits (until the deadline) for one being opened."""
        from redis.exceptions import RedisClusterException, RedisError

        with self._lock:
            if self._closed:
                raise RemoteUnavailable("redis-cluster: the backend is closed")
            if self._cluster is not None:
                return self._cluster
            if self._connecting is None or self._connecting.done():   # the last attempt failed
                self._connecting = self._executor.submit(self._connect)
            connecting = self._connecting
        seeds = ", ".join(self._config.nodes)
        try:
            return connecting.result(timeout=max(0.0, deadline + _GRACE_S - time.monotonic()))
        except FutureTimeout:
            raise RemoteUnavailable(f"redis-cluster {what}: no answer from the seed nodes ({seeds}) "
                                    f"by the deadline") from None
        except (RedisError, RedisClusterException, OSError) as e:
            raise RemoteUnavailable(f"redis-cluster {what}: cannot open the cluster at {seeds}: "
                                    f"{_describe(e)}") from e

    def _connect(self) -> RedisCluster:
        """Open the client (reads the slot map: blocks up to the socket timeouts per seed)."""
        from redis.backoff import NoBackoff
        from redis.cluster import ClusterNode, RedisCluster
        from redis.retry import Retry

        cfg = self._config
        seeds = []
        for node in cfg.nodes:
            host, _, port = node.rpartition(":")
            seeds.append(ClusterNode(host.strip("[]"), int(port)))  # type: ignore[no-untyped-call]
        tls: dict[str, Any] = {}
        if cfg.tls:
            tls = {"ssl": True, "ssl_ca_certs": _path(cfg.tls_ca_file),
                   "ssl_certfile": _path(cfg.tls_cert_file), "ssl_keyfile": _path(cfg.tls_key_file)}
        cluster = RedisCluster(
            startup_nodes=seeds, username=cfg.username, password=self._password,
            # Retries and redirects are this module's (bounded by each call's deadline).
            retry=Retry(NoBackoff(), 0), require_full_coverage=False,
            # Refreshes ask the configured seeds, so a DNS name survives the cluster changing IPs.
            dynamic_startup_nodes=False,
            socket_connect_timeout=cfg.connect_timeout_s,
            # Bounds connection set-up and writes; reads wait at most until the call's deadline.
            socket_timeout=max(cfg.timeout_s, cfg.connect_timeout_s), socket_keepalive=True, **tls)
        with self._lock:
            if not self._closed:
                self._cluster = cluster
                return cluster
        cluster.close()
        raise RemoteUnavailable("redis-cluster: the backend is closed")

    def _refresh_soon(self, cluster: RedisCluster) -> None:
        """Reread the slot map in the background (after a failure or redirect), at most once a second."""
        now = time.monotonic()
        with self._lock:
            if self._closed or self._refreshing or now - self._refreshed_at < _REFRESH_INTERVAL_S:
                return
            self._refreshing, self._refreshed_at = True, now
        try:
            self._executor.submit(self._refresh, cluster)
        except RuntimeError:   # closed meanwhile
            with self._lock:
                self._refreshing = False

    def _refresh(self, cluster: RedisCluster) -> None:
        from redis.exceptions import RedisClusterException, RedisError

        try:
            cluster.nodes_manager.initialize()
        except (RedisError, RedisClusterException, OSError) as e:
            log.debug("redis-cluster slot map refresh failed: %s", _describe(e))
        finally:
            with self._lock:
                self._refreshing = False


def _fill(view: memoryview, head: bytes | None, body: bytes | InSink | None) -> Fetched | None:
    """What one ``MGET head body`` found. The body is in ``view`` already (``InSink``) or in
    ``body``; the payload is complete in ``view`` only when body and tail add up to its length."""
    if head is None and body is None:
        return None
    parts = split_head(head) if head is not None else None
    body_bytes = body.nbytes if isinstance(body, InSink) else None if body is None else len(body)
    if body_bytes is None:
        return Fetched(parts[0] if parts is not None else b"", -1)
    if parts is None:   # no (readable) head: the tail is unknown, the payload is never complete
        return Fetched(b"", body_bytes)
    header, tail = parts
    size = body_bytes + len(tail)
    dst = byte_view(view)
    if size == len(dst):
        if isinstance(body, bytes):
            dst[:body_bytes] = body
        dst[body_bytes:] = tail
    return Fetched(header, size)


def _path(path: object) -> str | None:
    return None if path is None else str(path)


def open_redis_cluster(config: RemoteConfig) -> RedisClusterBackend:
    """The backend for ``config``, with the password read from ``remote.password_file``."""
    password = None
    if config.password_file is not None:
        try:
            password = config.password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ConfigError(f"remote.password_file: cannot read {config.password_file} ({reason}): "
                              f"make it a UTF-8 file readable by tierd, or unset it") from e
        password = password[:-2] if password.endswith("\r\n") else password.removesuffix("\n")
    return RedisClusterBackend(config, password)
