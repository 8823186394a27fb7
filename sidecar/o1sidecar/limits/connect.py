"""Connections to a pool's Redis: a single server, or a Redis Cluster (``redis.cluster``).

``redis_client`` is the one way the sidecar (limiter, cache, shared state) connects; the operator's
reads of a cluster use ``cluster_client`` (o1operator/sidecars.py). Both kinds of client take the same
calls, with three differences the callers go through this module for: a cluster pipeline refuses TIME
(``SERVER_TIME`` asks it of the server that holds a key instead), SCRIPT LOAD must go to the primary
that will run the script (``script_load``, ``KeyedScript``), and a cluster client raises
``RedisClusterException``, which is not a ``RedisError``, when no node answers (``REDIS_FAILURES``).

All keys of one pool carry one hash tag (keys.py), so on a cluster every script, transaction and
pipeline of a pool goes to the one primary that serves the pool's slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import replace
from typing import Any, TypeAlias

from redis._parsers import AsyncCommandsParser
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, KeyT

from o1sidecar.config import RedisConfig
from o1sidecar.limits.lane import Endpoint, Lane, NotSent

MAX_CONNECTIONS = 32

# What a Redis call raises when Redis cannot serve it. redis-py's cluster client also raises
# RedisClusterException, which is not a RedisError, when no node answers or no node serves a slot.
REDIS_FAILURES: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)

# Inside a turn of a QueuedCluster: a command it runs for another (a pipeline) takes no second turn.
_IN_TURN: ContextVar[bool] = ContextVar("o1sidecar_redis_turn", default=False)


# A cluster client's first use reads the slots and the command table (COMMAND: some 10k lines that
# redis-py parses in Python, 0.1 s of CPU or more, which an op timeout would cut short on a busy or
# CPU-limited pod, again at every try). No command of the client runs before it.
DISCOVERY_TIMEOUT_S = 5.0

# The command tables this process's cluster clients read, by the node they were read from (``host:port``
# of the seed): a client seeded by the same node takes the table instead of reading it again.
_COMMAND_TABLES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}


class SharedCommands(AsyncCommandsParser):
    """redis-py's table of where each command has its keys (how a cluster client routes it), read once
    per seed node and process: the sidecar has a cluster client for each of its parts, and the operator
    one per read of each pool."""

    def __init__(self, seed: str) -> None:
        super().__init__()
        self.seed = seed

    async def initialize(self, node: Any = None) -> None:
        known = _COMMAND_TABLES.get(self.seed)
        if known is None or self.commands:  # (read again: a command it does not know, a new server)
            await super().initialize(node)
            _COMMAND_TABLES[self.seed] = (self.commands, self._movablekeys_specs)
            return
        if node is not None:
            self.node = node
        self.commands, self._movablekeys_specs = known
        self._encoder = self.node.get_encoder()


class QueuedCluster(RedisCluster):
    """A Redis Cluster client whose callers wait for one of ``MAX_CONNECTIONS`` turns, as they wait for a
    pooled connection on a single Redis (``BlockingConnectionPool``): redis-py's cluster nodes raise
    MaxConnectionsError when their connections are all in use, which the breakers would take for a
    Redis failure.

    Each command and pipeline gets ``op_timeout_s``, and so does reading the slots again after a node
    failed; the first discovery gets ``DISCOVERY_TIMEOUT_S`` (also the sockets' read timeout).

    With a ``lane`` (an ``Endpoint`` whose host and port are filled in per node) a keyed command of
    ``LANE_COMMANDS`` goes over a multiplexed connection to the primary of its key's slot (lane.py), as
    on a ``LanedRedis``. redis-py's path sends it instead when the lane could not send it (no
    connection, or the cluster redirected it: MOVED, ASK, TRYAGAIN, CLUSTERDOWN), and sends every
    command of a node after a lane to it failed (timed out or lost mid-command, which the caller is told
    of, not sent again) until one succeeds there: redis-py's failures are what make it read the slots
    again after a failover."""

    def __init__(self, *args: Any, op_timeout_s: float, lane: Endpoint | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(MAX_CONNECTIONS)
        self.op_timeout_s = op_timeout_s
        self.discovered = False
        self.commands_parser = SharedCommands(self.startup_nodes[0].name if self.startup_nodes else "")
        self._lane = lane
        self._lanes: dict[str, Lane] = {}  # by node name
        self._lane_failed: set[str] = set()  # nodes whose commands go redis-py's way until one succeeds

    async def discover(self) -> None:
        """Learn the nodes, slots and commands if not known yet, or the slots again after a node failed
        (redis-py asks for it then, and runs it at most once a second)."""
        async with asyncio.timeout(self.op_timeout_s if self.discovered else DISCOVERY_TIMEOUT_S):
            await self.initialize()
        self.discovered = True

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if _IN_TURN.get():
            yield
            return
        async with self._turns:
            token = _IN_TURN.set(True)
            try:
                yield
            finally:
                _IN_TURN.reset(token)

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        key = _lane_key(args) if self._lane is not None and kwargs.keys() <= {"keys"} else None
        if key is None:
            return await self._execute(*args, **kwargs)
        await self.discover()
        node = self.get_node_from_key(key)
        if node is None or node.name in self._lane_failed:
            result = await self._execute(*args, **kwargs)
            if node is not None:
                self._lane_failed.discard(node.name)
            return result
        try:
            reply = await self._lane_to(node.name, node.host, int(node.port)).call(*args)
        except NotSent:
            return await self._execute(*args, **kwargs)
        except ResponseError as exc:
            if not str(exc).startswith(("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")):
                raise
            return await self._execute(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError):
            self._lane_failed.add(node.name)
            raise
        callback = self.response_callbacks.get(str(args[0]))
        return reply if callback is None else callback(reply)

    async def _execute(self, *args: EncodableT, **kwargs: Any) -> Any:
        async with self.turn():
            await self.discover()
            async with asyncio.timeout(self.op_timeout_s):
                return await super().execute_command(*args, **kwargs)

    def _lane_to(self, name: str, host: str, port: int) -> Lane:
        lane = self._lanes.get(name)
        if lane is None:
            assert self._lane is not None
            settings = self.get_connection_kwargs()  # (the URL's user and password, as redis-py's nodes')
            endpoint = replace(
                self._lane,
                host=host,
                port=port,
                username=settings.get("username"),
                password=settings.get("password"),
            )
            lane = self._lanes[name] = Lane(endpoint)
        return lane

    async def aclose(self) -> None:
        for lane in self._lanes.values():
            await lane.aclose()
        await super().aclose()

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return QueuedPipeline(self, transaction)  # type: ignore[abstract]  # (no ABC at run time)


class QueuedPipeline(ClusterPipeline):
    """A cluster pipeline that runs in a turn of its ``QueuedCluster``."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client = self.cluster_client
        assert isinstance(client, QueuedCluster)
        async with client.turn():
            await client.discover()
            async with asyncio.timeout(client.op_timeout_s):
                return await super().execute(raise_on_error, allow_redirections)


# The commands a ``LanedRedis`` sends on its lane: those the sidecar issues, none of which blocks the
# connection or changes its state (no BLPOP, SUBSCRIBE, SELECT, MULTI, WATCH, CLIENT, ...).
LANE_COMMANDS = frozenset(
    {"EVALSHA", "SCRIPT LOAD", "GET", "SET", "DEL", "PTTL", "EXISTS", "HSET", "HMGET", "ZADD", "PUBLISH"}
)


class LanedRedis(Redis):
    """A client of a single Redis whose commands in ``LANE_COMMANDS`` (the Lua scripts, the cache's reads
    and writes), and its pipelines of them outside a transaction, go over one multiplexed connection
    (lane.py: 150-200 µs less client CPU per command here); everything else (transactions, pub/sub)
    over redis-py's pool. Replies go through redis-py's response callbacks, failures raise
    redis-py's errors: callers cannot tell the difference."""

    def __init__(self, *, connection_pool: BlockingConnectionPool, lane: Lane) -> None:
        super().__init__(connection_pool=connection_pool)
        self.lane = lane

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        options.pop("keys", None)  # (redis-py's client-side cache's; none here)
        if options or args[0] not in LANE_COMMANDS:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        return self.parse_reply(args[0], await self.lane.call(*_words(args)))

    def parse_reply(self, command: str | bytes, reply: Any) -> Any:
        callback = self.response_callbacks.get(command)
        return reply if callback is None else callback(reply)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        if transaction or shard_hint:
            return super().pipeline(transaction, shard_hint)
        return LanePipeline(self)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self.lane.aclose()
        await super().aclose(close_connection_pool)


class LanePipeline(Pipeline):
    """A ``LanedRedis`` pipeline outside a transaction: its commands leave together on the lane, in
    order, when each is a lane command; otherwise redis-py's."""

    def __init__(self, client: LanedRedis) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, False, None)
        self.owner = client

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = list(self.command_stack)
        laned = all(args[0] in LANE_COMMANDS and options.keys() <= {"keys"} for args, options in stack)
        if not stack or self.watching or self.scripts or not laned:
            return await super().execute(raise_on_error)
        try:
            replies = await self.owner.lane.call_many([_words(args) for args, _ in stack])
        finally:
            await self.reset()  # type: ignore[no-untyped-call]
        results = []
        for (args, _), reply in zip(stack, replies, strict=True):
            if isinstance(reply, RedisConnectionError | RedisTimeoutError):  # (the connection failed)
                raise reply
            if isinstance(reply, Exception):
                if raise_on_error:
                    raise reply
                results.append(reply)
            else:
                results.append(self.owner.parse_reply(args[0], reply))
        return results


def _lane_key(args: tuple[Any, ...]) -> Any:
    """The key that routes a lane command on a cluster (the first), or None: not a lane command, or one
    without a key (SCRIPT LOAD, PUBLISH, EVALSHA of no keys)."""
    command = args[0]
    if command not in LANE_COMMANDS or command in ("SCRIPT LOAD", "PUBLISH") or len(args) < 2:
        return None
    if command == "EVALSHA":
        return args[3] if len(args) > 3 and int(args[2]) > 0 else None
    return args[1]


def _words(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A command as Redis reads it: redis-py names some by two words ("SCRIPT LOAD")."""
    return (*args[0].split(), *args[1:]) if " " in args[0] else args


# The one type of every Redis client the sidecar and the operator use.
RedisClient: TypeAlias = Redis | RedisCluster


def redis_password(cfg: RedisConfig) -> str | None:
    """The Redis password from its file (a mounted Secret) or environment variable, if any."""
    if cfg.password_file is not None:
        return cfg.password_file.read_text().strip() or None
    if cfg.password_env:
        return os.environ.get(cfg.password_env) or None
    return None


def redis_client(cfg: RedisConfig, *, decode_responses: bool = True) -> RedisClient:
    """A client that fails fast: short timeouts and no retries (a breaker decides what to do). The
    one way the sidecar connects to Redis: the limiter, and the cache (``decode_responses=False``).

    With ``cfg.cluster`` a Redis Cluster client (``QueuedCluster``) seeded by the node the URL names:
    it learns the other nodes and which serves each slot, sends each command to the primary of its
    keys' slot, and asks for the slots again after a node fails (the next command past
    ``topology_refresh_min_interval``, one second), so a promoted replica serves once the cluster has
    failed over. ``op_timeout_ms`` bounds each of its commands and pipelines whole."""
    assert cfg.url is not None
    tls = {} if cfg.tls_ca_file is None else {"ssl_ca_certs": str(cfg.tls_ca_file)}
    common: dict[str, Any] = dict(
        password=redis_password(cfg),
        socket_connect_timeout=cfg.connect_timeout_ms / 1000,
        retry=Retry(NoBackoff(), 0),
        decode_responses=decode_responses,
        health_check_interval=0,
    )
    if cfg.cluster:
        # (each node's lane takes the node's address and the URL's login: QueuedCluster._lane_to)
        template = (
            None if tls or cfg.url.startswith("rediss://") else lane_endpoint({}, cfg, decode_responses)
        )
        return cluster_client(cfg.url, op_timeout_s=cfg.op_timeout_ms / 1000, lane=template, **tls, **common)
    pool = BlockingConnectionPool.from_url(
        cfg.url,
        **tls,
        **common,
        socket_timeout=cfg.op_timeout_ms / 1000,
        max_connections=MAX_CONNECTIONS,
        timeout=None,  # waiting for a pooled connection is queueing, not a Redis failure
    )
    if pool.connection_class is not Connection and pool.connection_class is not UnixDomainSocketConnection:
        return Redis(connection_pool=pool)  # (TLS: redis-py's own connections)
    lane = Lane(lane_endpoint(pool.connection_kwargs, cfg, decode_responses))
    return LanedRedis(connection_pool=pool, lane=lane)


def lane_endpoint(settings: dict[str, Any], cfg: RedisConfig, decode_responses: bool) -> Endpoint:
    """Where the lane of a pool with these connection ``settings`` connects (redis-py's, from the URL)."""
    return Endpoint(
        host=str(settings.get("host", "localhost")),
        port=int(settings.get("port", 6379)),
        path=settings.get("path"),
        username=settings.get("username"),
        password=settings.get("password"),
        db=int(settings.get("db") or 0),
        connect_timeout_s=cfg.connect_timeout_ms / 1000,
        op_timeout_s=cfg.op_timeout_ms / 1000,
        encoding="utf-8" if decode_responses else None,
    )


def cluster_client(
    url: str, *, op_timeout_s: float, lane: Endpoint | None = None, **settings: Any
) -> QueuedCluster:
    """A ``QueuedCluster`` seeded by the node ``url`` names, each command bounded by ``op_timeout_s``, its
    hot commands over ``lane`` connections if given; ``settings`` for redis-py's ``RedisCluster``
    (password, TLS, connect timeout, retries, decoding)."""
    return QueuedCluster.from_url(  # type: ignore[return-value]  # (from_url builds the class it is on)
        url,
        **settings,
        socket_timeout=DISCOVERY_TIMEOUT_S,  # (a command's own timeout is op_timeout_s)
        op_timeout_s=op_timeout_s,
        lane=lane,
        # Per node: the turns, plus the wake-up listener's subscription and room for a pipeline that spans
        # nodes while every turn is taken.
        max_connections=MAX_CONNECTIONS + 4,
    )


async def script_load(client: RedisClient, source: str, key: str = "") -> str:
    """SCRIPT LOAD on the server that holds ``key``: on a cluster, only the primary of its slot (redis-py
    sends SCRIPT LOAD to every primary, which fails while any one of them is down; so does this without
    a key)."""
    if isinstance(client, RedisCluster) and key:
        # (the slots, on first use or after a node failed)
        await (client.discover() if isinstance(client, QueuedCluster) else client.initialize())
        node = client.get_node_from_key(key)
        return str(await client.execute_command("SCRIPT LOAD", source, target_nodes=node))
    return str(await client.script_load(source))


class KeyedScript(AsyncScript):
    """A Lua script called by SHA whose reload after NOSCRIPT (a flushed, restarted or newly promoted
    server) goes where its first key lives (``script_load``). On a single Redis the calls that meet
    NOSCRIPT together share one reload: a restarted server answers NOSCRIPT to every call in flight,
    and one SCRIPT LOAD each would make it compile the script as many times (the limiter's are 30 kB of
    Lua) while the calls behind them wait."""

    def __init__(self, registered_client: RedisClient, script: str) -> None:
        super().__init__(registered_client, script)
        self._reloading: asyncio.Future[str] | None = None

    async def __call__(
        self,
        keys: Sequence[KeyT] | None = None,
        args: Iterable[EncodableT] | None = None,
        client: RedisClient | None = None,
    ) -> Any:
        client = client if client is not None else self.registered_client
        keys = list(keys or [])
        if not keys or not isinstance(client, Redis | RedisCluster):  # (a pipeline queues it)
            return await super().__call__(keys, args, client)
        values = (*keys, *(args or []))
        try:
            return await client.evalsha(self.sha, len(keys), *values)
        except NoScriptError:
            self.sha = await self._reload(client, str(keys[0]))
            return await client.evalsha(self.sha, len(keys), *values)

    async def _reload(self, client: RedisClient, key: str) -> str:
        if isinstance(client, RedisCluster):  # (the keys of its calls may live on other primaries)
            return await script_load(client, str(self.script), key)
        reloading = self._reloading
        if reloading is None or reloading.done() or reloading.get_loop() is not asyncio.get_running_loop():
            reloading = self._reloading = asyncio.ensure_future(script_load(client, str(self.script), key))
        return await asyncio.shield(reloading)


def register_script(client: RedisClient, source: str) -> KeyedScript:
    """``client.register_script``, with the reload of ``KeyedScript``."""
    return KeyedScript(client, source)


SERVER_TIME = "return redis.call('TIME')"


def server_time(reply: Sequence[Any]) -> float:
    """Seconds since the epoch from the reply of ``SERVER_TIME``."""
    return int(reply[0]) + int(reply[1]) / 1e6
