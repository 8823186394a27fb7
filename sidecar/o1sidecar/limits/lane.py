"""One multiplexed connection to a single Redis for the sidecar's hot commands (connect.py ``LanedRedis``).

redis-py sends each command on a connection taken from its pool and waits for that connection's reply
before the connection serves another; its pool, retry and observability layers cost this machine's
client 150-200 µs of CPU per command, most of a proxied request's Redis cost (docs/performance.md). A
lane writes every command to one connection and matches the replies in order (Redis answers the
commands of a connection in the order they came): the commands issued in one turn of the event loop
leave in one write, and hiredis (the C parser redis-py itself uses when installed) packs the commands
and parses the replies. 40-45 µs per command alone, 10-20 µs when requests overlap.

Its failures are redis-py's, so callers handle them as any other Redis call: an error reply raises
``ResponseError`` (``NoScriptError`` for NOSCRIPT), a lost connection ``ConnectionError``, and a command
left unanswered ``op_timeout_s`` ``TimeoutError``; the last two fail every command in flight on the
connection and close it, and the next command connects again. A command that could not be sent
because the lane could not connect raises ``NotSent`` (a ``ConnectionError``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ConnectionError,
    NoScriptError,
    RedisError,
    ResponseError,
    TimeoutError,
)


class NotSent(ConnectionError):
    """The lane could not connect: the command never reached Redis (another way may send it)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a lane connects, and how it introduces itself."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket instead of host and port
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # (never in a repr, a log or an error)
    db: int = 0
    connect_timeout_s: float = 1.0
    op_timeout_s: float = 1.0
    encoding: str | None = "utf-8"  # None: replies as bytes


def reply_error(message: str) -> RedisError:
    """An error reply as redis-py raises it."""
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith("LOADING"):
        return BusyLoadingError(message)
    if message.startswith(("NOAUTH", "WRONGPASS")):
        return AuthenticationError(message)
    return ResponseError(message)


class _Connection(asyncio.Protocol):
    """One connection: commands go out in order, each reply settles the oldest command waiting."""

    def __init__(self, encoding: str | None, op_timeout_s: float) -> None:
        self._reader = hiredis.Reader(encoding=encoding, replyError=ResponseError)
        # [answer due by (set when written), the caller's future], oldest first
        self._waiting: collections.deque[list[Any]] = collections.deque()
        self._out: list[bytes] = []
        self._op_timeout_s = op_timeout_s
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._flush_due = False
        self._timer: asyncio.TimerHandle | None = None
        self.lost: Exception | None = None

    @property
    def usable(self) -> bool:
        """Not failed, and on the running event loop."""
        return self.lost is None and self._loop is asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's is not asyncio's subclass)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self.close(ConnectionError(f"Redis sent a reply this client cannot read: {exc}"))
                return
            if reply is False:
                return
            if not self._waiting:  # (a reply to nothing: the stream cannot be trusted)
                self.close(ConnectionError("Redis sent a reply no command was waiting for"))
                return
            _, future = self._waiting.popleft()
            if future.done():  # (its caller gave up)
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(reply_error(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(ConnectionError(f"lost the connection to Redis: {exc or 'closed by the server'}"))

    def call(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        if self.lost is not None:
            future.set_exception(self.lost)
            return future
        self._out.append(hiredis.pack_command(args))
        self._waiting.append([math.inf, future])
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """Write the commands of this turn; their time to be answered starts now (not when they were
        issued: a busy event loop is not a slow Redis)."""
        self._flush_due = False
        if not self._out or self._transport is None or self.lost is not None:
            self._out.clear()
            return
        self._transport.write(b"".join(self._out))
        due = time.monotonic() + self._op_timeout_s
        for entry in itertools.islice(reversed(self._waiting), len(self._out)):
            entry[0] = due
        self._out.clear()
        if self._timer is None:
            self._timer = self._loop.call_later(self._op_timeout_s, self._check_timeout)

    def _check_timeout(self) -> None:
        """The oldest command still waiting past its time means Redis is not answering this connection:
        fail all of them (their replies, if they come, could no longer be matched to later commands)."""
        self._timer = None
        if not self._waiting or self._waiting[0][0] == math.inf:  # (nothing written: its flush arms it)
            return
        due = self._waiting[0][0]
        now = time.monotonic()
        if due <= now:
            ms = round(self._op_timeout_s * 1000)
            self.close(TimeoutError(f"Redis did not answer within {ms} ms (redis.op_timeout_ms)"))
            return
        self._timer = self._loop.call_later(due - now, self._check_timeout)

    def close(self, exc: Exception) -> None:
        """Fail every command in flight with ``exc`` (the first reason given) and drop the connection."""
        if self.lost is None:
            self.lost = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(type(self.lost)(*self.lost.args))
        self._out.clear()
        if self._transport is not None:
            self._transport.abort()


class Lane:
    """Commands to one Redis over one multiplexed connection, connected on first use and again after a
    failure. ``call`` returns the raw reply (bulk strings decoded with ``endpoint.encoding``)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._closed = False

    async def call(self, *args: Any) -> Any:
        """One command's reply."""
        return await (await self._connection()).call(args)

    async def call_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies to ``commands``, sent together and in order; an error reply is returned as its
        exception, in its place (a pipeline's ``raise_on_error=False``); a failed connection raises."""
        conn = await self._connection()
        return await asyncio.gather(*(conn.call(args) for args in commands), return_exceptions=True)

    async def _connection(self) -> _Connection:
        """The connection, opened (again) if there is none usable."""
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self._closed:
            raise ConnectionError("the Redis client is closed")
        task = self._connecting
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = self._connecting = asyncio.get_running_loop().create_task(self._open())
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None

    async def _open(self) -> _Connection:
        e = self.endpoint
        loop = asyncio.get_running_loop()
        old, self._conn = self._conn, None
        if old is not None:
            old.close(ConnectionError("replaced by a new connection"))
        try:
            async with asyncio.timeout(e.connect_timeout_s):
                if e.path is not None:
                    _, conn = await loop.create_unix_connection(
                        lambda: _Connection(e.encoding, e.op_timeout_s), e.path
                    )
                else:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(e.encoding, e.op_timeout_s), e.host, e.port
                    )
        except (OSError, TimeoutError) as exc:
            where = e.path or f"{e.host}:{e.port}"
            raise NotSent(f"could not connect to Redis at {where}: {exc or 'timed out'}") from None
        hello: list[asyncio.Future[Any]] = []
        if e.password is not None:
            auth = ("AUTH", e.username, e.password) if e.username else ("AUTH", e.password)
            hello.append(conn.call(auth))
        if e.db:
            hello.append(conn.call(("SELECT", e.db)))
        try:
            for reply in hello:
                await reply
        except BaseException:
            conn.close(ConnectionError("closed after a failed hello"))
            raise
        self._conn = conn
        return conn

    async def aclose(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close(ConnectionError("the Redis client is closed"))
            self._conn = None
