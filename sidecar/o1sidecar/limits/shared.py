"""The shared limiter: every sidecar of a pool admits through the same Redis counters and queue.

``SharedLimiter`` is the ``Limiter``: the wait queue (queueing.py) over the failover store
(failover.py: Redis while it answers, this sidecar's fair share while it does not), plus a background
heartbeat that renews leases and tickets, counts live sidecars, reads back usage and effective
limits, and probes Redis after a failure, and a pub/sub listener that wakes waiters when capacity
frees in another sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from o1sidecar.config import RedisConfig, SidecarConfig
from o1sidecar.limits.backend import account_limits
from o1sidecar.limits.breaker import CircuitBreaker
from o1sidecar.limits.failover import REDIS_ERRORS, FailoverBackend, raise_if_cancelled
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.limits.queueing import QueueingLimiter
from o1sidecar.limits.redis_store import Carried, RedisBackend, redis_client

log = logging.getLogger("o1sidecar.limits")
CLOSE_TIMEOUT_S = 5.0  # the longest close() waits for its tasks, then for the Redis client


def lease_ttl_s(cfg: RedisConfig) -> float:
    """A concurrency lease outlives a dead sidecar by this much; live sidecars renew it."""
    return max(10.0, 5 * cfg.heartbeat_interval_s)


def ticket_ttl_s(cfg: RedisConfig) -> float:
    """A queue ticket outlives a dead sidecar by this much; live sidecars refresh it."""
    return 3 * cfg.heartbeat_interval_s + 1.0


class SharedLimiter(QueueingLimiter):
    """The ``Limiter`` of a pool whose sidecars share limits and queue through Redis."""

    def __init__(
        self,
        config: SidecarConfig,
        *,
        clock: Callable[[], float] = time.time,
        server_clock: Callable[[], float] | None = None,
        sidecar_id: str | None = None,
    ) -> None:
        cfg = config.redis
        self.sidecar_id = sidecar_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.client = redis_client(cfg)
        self.keys = PoolKeys(cfg.key_prefix, config.pool.namespace, config.pool.name)
        self._live_count = 1
        self.redis_backend = RedisBackend(
            self.client,
            self.keys,
            lease_ttl_s=lease_ttl_s(cfg),
            ticket_ttl_s=ticket_ttl_s(cfg),
            server_clock=server_clock,
        )
        self.failover = FailoverBackend(
            self.redis_backend,
            CircuitBreaker(cfg.breaker_failures, cfg.breaker_reset_s, min_span_s=cfg.op_timeout_ms / 1000),
            clock=clock,
            share=lambda: 1.0 / max(1, self._live_count),
            waiting=self.waiting,
        )
        super().__init__(config, self.failover, clock=clock, live_sidecars=lambda: self._live_count)
        self.wake_tag = uuid.uuid4().hex[:12]  # its heads are named on its own channel (queue.lua)
        self.ticket_prefix = f"{self.wake_tag}."
        self._pairs = [
            (limits, model)
            for account in config.accounts
            for model in account.serves()
            for limits in account_limits(config, model, (account.name,))
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self._carried: Callable[[], Carried | None] = lambda: None

    async def start(self) -> None:
        await super().start()
        try:
            await self.redis_backend.scripts.load_all(self.client)
            await self._beat()
        except REDIS_ERRORS as exc:
            self.failover.breaker.trip()
            self.failover.go_local(exc)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat_loop()), loop.create_task(self._wake_loop())]

    async def close(self) -> None:
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
        await super().close()
        # Bounded: a connection a cancelled task still holds must not keep the sidecar from exiting.
        closing = asyncio.ensure_future(self.client.aclose())
        done, _ = await asyncio.wait({closing}, timeout=CLOSE_TIMEOUT_S)
        if not done:
            closing.cancel()
            log.warning("limits: the Redis client did not close within %.0f s; leaving it", CLOSE_TIMEOUT_S)
        elif (exc := closing.exception()) is not None and not isinstance(exc, REDIS_ERRORS):
            raise exc

    def carry(self, source: Callable[[], Carried | None]) -> None:
        """Run what ``source`` gives in each heartbeat's call (the pool's sync: poolsync.py), one
        command where there were two."""
        self._carried = source

    async def _beat(self) -> None:
        beat = await self.redis_backend.heartbeat(
            self.sidecar_id, self.config.redis.live_for_s, self.waiting(), self._pairs, self._carried()
        )
        self._live_count = max(1, beat.live_sidecars)

    async def _heartbeat_loop(self) -> None:
        cfg = self.config.redis
        while not self._closed:
            if self.failover.mode == "shared":
                await asyncio.sleep(cfg.heartbeat_interval_s)
                try:
                    await self._beat()
                    self.failover.breaker.success()
                except REDIS_ERRORS as exc:
                    raise_if_cancelled()
                    self.failover.failed(exc)
                except Exception:
                    log.exception("limits: heartbeat failed; retrying (leases of long calls depend on it)")
            else:
                await asyncio.sleep(min(cfg.heartbeat_interval_s, cfg.breaker_reset_s) / 2)
                if not self.failover.breaker.allow():
                    continue
                try:
                    await self.redis_backend.scripts.load_all(self.client)
                    await self._beat()
                    await self.failover.go_shared()
                    self.wake()
                except REDIS_ERRORS as exc:
                    raise_if_cancelled()
                    self.failover.failed(exc)
                except Exception:
                    log.exception("limits: probing Redis failed; staying on local limits")

    async def _wake_loop(self) -> None:
        """Wake local waiters when the store names one the head of its model's queue: on this sidecar's
        own channel, and on the pool's (the namings of waiters of older sidecars, and of ours by their
        scripts, during an upgrade)."""
        channels = (self.keys.wake_channel(), self.keys.wake_channel_of(self.wake_tag))
        while not self._closed:
            if self.failover.mode != "shared":
                await asyncio.sleep(self.config.redis.breaker_reset_s)
                continue
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                while self.failover.mode == "shared":
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_wake(str(message["data"]))
            except REDIS_ERRORS:
                raise_if_cancelled()
                await asyncio.sleep(self.config.redis.breaker_reset_s)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()

    def _on_wake(self, message: str) -> None:
        """``<model>;<ticket>;<wait ms>``: the store named the head of a model's queue (queue.lua), the
        wait exact when ``+<ms>``; ``<model>;<ticket>;+<ms>;behind``: that head waits behind another
        again, until named; a bare ``<model>`` (a sidecar of an older release): wake that model's
        dispatcher."""
        model, _, named = message.partition(";")
        ticket, _, rest = named.partition(";")
        wait_ms, _, flag = rest.partition(";")
        if not ticket:
            self.wake(model)
            return
        try:
            wait_s = int(wait_ms) / 1000  # (int() reads "+<ms>" too)
        except ValueError:
            wait_s = 0.0
        if flag == "behind":
            self.behind(model, ticket, wait_s)
        else:
            self.named(model, ticket, wait_s, exact=wait_ms.startswith("+"))
