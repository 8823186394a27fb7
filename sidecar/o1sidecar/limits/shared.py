"""The shared limiter: every sidecar of a pool admits through the same Redis counters and queue.

``RedisBackend`` is the thin I/O around the Lua scripts (lua/*.lua). ``FailoverBackend`` sends
attempts to Redis while it answers and to a ``LocalBackend`` holding this sidecar's fair share
(limit / live sidecars) while a circuit breaker says it does not. ``SharedLimiter`` is the
``Limiter``: the wait queue over the failover store, plus a background heartbeat that renews leases
and tickets, counts live sidecars, probes Redis after a failure, and a pub/sub listener that wakes
waiters when capacity frees in another sidecar.
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
from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from o1sidecar.config import RedisConfig, SidecarConfig
from o1sidecar.limits.backend import (
    AccountLimits,
    Admitted,
    Attempt,
    Denied,
    Mode,
    Settlement,
    Waiting,
    account_limits,
)
from o1sidecar.limits.breaker import CircuitBreaker
from o1sidecar.limits.buckets import UPSTREAM_LAG_S
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.limits.local import LocalBackend
from o1sidecar.limits.ordering import rank
from o1sidecar.limits.queueing import QueueingLimiter
from o1sidecar.limits.scripts import Scripts

log = logging.getLogger("o1sidecar.limits")

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
RETRY_AFTER_ERROR_S = 0.05
MAX_CONNECTIONS = 32


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that surfaced as a Redis error, so it is never taken for an outage."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def lease_ttl_s(cfg: RedisConfig) -> float:
    """A concurrency lease outlives a dead sidecar by this much; live sidecars renew it."""
    return max(10.0, 5 * cfg.heartbeat_interval_s)


def ticket_ttl_s(cfg: RedisConfig) -> float:
    """A queue ticket outlives a dead sidecar by this much; live sidecars refresh it."""
    return 3 * cfg.heartbeat_interval_s + 1.0


def redis_client(cfg: RedisConfig) -> Redis:
    """A client that fails fast: short timeouts and no retries (the breaker decides what to do)."""
    assert cfg.url is not None
    password = None
    if cfg.password_file is not None:
        password = cfg.password_file.read_text().strip()
    elif cfg.password_env:
        password = os.environ.get(cfg.password_env) or None
    pool = BlockingConnectionPool.from_url(
        cfg.url,
        password=password,
        socket_timeout=cfg.op_timeout_ms / 1000,
        socket_connect_timeout=cfg.connect_timeout_ms / 1000,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        health_check_interval=0,
        max_connections=MAX_CONNECTIONS,
        timeout=None,  # waiting for a pooled connection is queueing, not a Redis failure
    )
    return Redis(connection_pool=pool)


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


@dataclass(frozen=True)
class _Held:
    limits: AccountLimits
    model: str


class RedisBackend:
    """Admission counters in Redis; one script call per attempt, per release, per heartbeat."""

    mode: Mode = "shared"

    def __init__(
        self,
        client: Redis,
        keys: PoolKeys,
        *,
        lease_ttl_s: float,
        ticket_ttl_s: float,
        server_clock: Callable[[], float] | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.scripts = Scripts.register(client)
        self.lease_ttl_s = lease_ttl_s
        self.ticket_ttl_s = ticket_ttl_s
        self._server_clock = server_clock  # tests only: drive the scripts' time
        self.held: dict[str, _Held] = {}
        self.server_offset_s = 0.0  # Redis TIME minus our clock, from the last heartbeat

    def _now(self) -> str:
        return "" if self._server_clock is None else repr(self._server_clock())

    async def attempt(self, a: Attempt) -> Admitted | Denied:
        d = a.demand
        keys = [self.keys.queue(d.model), self.keys.ticket_expiry(d.model), self.keys.ticket_cost(d.model)]
        params = ";".join(
            (str(d.priority), repr(a.aging_s), str(d.tokens), repr(self.lease_ttl_s), repr(self.ticket_ttl_s),
             _num(a.rank), repr(UPSTREAM_LAG_S))
        )
        args = [self._now(), a.ticket, params, self.keys.wake_channel(), d.model]
        for acct in a.accounts:
            keys += [self.keys.account(acct.name, d.model), self.keys.leases(acct.name, d.model)]
            args.append(
                f"{acct.name};{float(acct.rpm)!r};{float(acct.tpm)!r};{acct.concurrency or 0};"
                f"{acct.weight!r};{acct.health!r}"
            )
        result = await self.scripts.admit(keys, args)
        if int(result[0]) == 1:
            account = str(result[1])
            limits = next(x for x in a.accounts if x.name == account)
            self.held[a.lease_id] = _Held(limits, d.model)
            return Admitted(account, a.lease_id)
        return Denied(str(result[1]), int(result[2]) / 1000, float(result[3]))  # type: ignore[arg-type]

    async def settle(self, s: Settlement) -> None:
        self.held.pop(s.lease_id, None)
        name, model = s.account.name, s.model
        packed = ";".join(
            (
                repr(float(s.account.rpm)), repr(float(s.account.tpm)), str(s.extra_tokens),
                _num(s.remaining_requests), _num(s.remaining_tokens), repr(s.elapsed_s), _num(s.cooldown_s),
            )
        )
        await self.scripts.release(
            [self.keys.account(name, model), self.keys.leases(name, model), self.keys.queue(model)],
            [self._now(), s.lease_id, self.keys.wake_channel(), model, packed],
        )

    async def forget(self, model: str, tickets: list[str]) -> None:
        if not tickets:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(self.keys.queue(model), *tickets)
        pipe.zrem(self.keys.ticket_expiry(model), *tickets)
        pipe.hdel(self.keys.ticket_cost(model), *tickets)
        await pipe.execute()

    async def adopt(self, waiting: list[Waiting]) -> None:
        if not waiting:
            return
        expires = time.time() + self.server_offset_s + self.ticket_ttl_s
        pipe = self.client.pipeline(transaction=True)
        for w in waiting:
            pipe.zadd(self.keys.queue(w.model), {w.ticket: w.rank}, nx=True)
            pipe.zadd(self.keys.ticket_expiry(w.model), {w.ticket: expires})
            pipe.hset(self.keys.ticket_cost(w.model), w.ticket, w.tokens)
        await pipe.execute()

    async def heartbeat(
        self,
        sidecar_id: str,
        interval_s: float,
        waiting: list[Waiting],
        pairs: list[tuple[AccountLimits, str]],
    ) -> tuple[int, dict[tuple[str, str], dict[str, float]]]:
        """Register this sidecar, renew its leases and tickets; return live sidecars and usage."""
        by_model: dict[str, list[str]] = {}
        for w in waiting:
            by_model.setdefault(w.model, []).append(w.ticket)
        leases: dict[tuple[str, str], list[str]] = {}
        for lease_id, held in list(self.held.items()):
            leases.setdefault((held.limits.name, held.model), []).append(lease_id)
        keys = [self.keys.sidecars()]
        args: list[str | int | float] = [
            self._now(), sidecar_id, repr(interval_s), repr(self.lease_ttl_s), repr(self.ticket_ttl_s),
            len(by_model),
        ]
        for model, tickets in by_model.items():
            keys.append(self.keys.ticket_expiry(model))
            args += [len(tickets), *tickets]
        args.append(len(pairs))
        for limits, model in pairs:
            keys += [self.keys.account(limits.name, model), self.keys.leases(limits.name, model)]
            held = leases.get((limits.name, model), [])
            args += [repr(float(limits.rpm)), repr(float(limits.tpm)), len(held), *held]
        result = await self.scripts.heartbeat(keys, args)
        self.server_offset_s = float(result[1]) - time.time()
        usage = {
            (limits.name, model): {"requests": float(result[2 + 2 * i]), "tokens": float(result[3 + 2 * i])}
            for i, (limits, model) in enumerate(pairs)
        }
        return int(result[0]), usage


class FailoverBackend:
    """Redis while it answers; this sidecar's fair share in memory while the breaker is open."""

    def __init__(
        self,
        redis: RedisBackend,
        breaker: CircuitBreaker,
        *,
        clock: Callable[[], float],
        share: Callable[[], float],
        waiting: Callable[[], list[Waiting]],
    ) -> None:
        self.redis = redis
        self.breaker = breaker
        self._clock = clock
        self._share = share
        self._waiting = waiting
        self.mode: Mode = "shared"
        self.local = self._new_local()
        self._issued_locally: dict[str, LocalBackend] = {}
        self.switches = 0
        self.shared_usage: dict[tuple[str, str], dict[str, float]] = {}

    def _new_local(self) -> LocalBackend:
        # Starts empty: the shared buckets may already be spent, so the fallback must not add a burst.
        return LocalBackend(clock=self._clock, share=self._share, start_full=False, mode="local")

    def failed(self, exc: BaseException) -> None:
        """Count a Redis failure; the one that opens the breaker switches to local limits."""
        if self.breaker.failure() and self.mode == "shared":
            self.go_local(exc)

    def go_local(self, exc: BaseException) -> None:
        self.mode = "local"
        self.switches += 1
        self.local = self._new_local()
        for lease_id, held in self.redis.held.items():
            self.local.hold(held.limits, held.model, lease_id)
        self.local.adopt_now(self._waiting())
        share = self._share()
        log.warning(
            "limits: Redis unreachable (%s); limiting locally at %.0f%% of each limit (1/%d sidecars)",
            type(exc).__name__, 100 * share, round(1 / share) if share > 0 else 0,
        )

    async def go_shared(self) -> None:
        """Redis answers again: hand the queue back to it and admit through it."""
        waiting = self._waiting()
        await self.redis.adopt(waiting)
        self.breaker.success()
        self.mode = "shared"
        self.switches += 1
        left = {w.ticket for w in waiting} - {w.ticket for w in self._waiting()}
        if left:
            by_model: dict[str, list[str]] = {}
            for w in waiting:
                if w.ticket in left:
                    by_model.setdefault(w.model, []).append(w.ticket)
            for model, tickets in by_model.items():
                await self.redis.forget(model, tickets)
        log.warning("limits: Redis is back; shared limits again (%d requests waiting)", len(waiting))

    async def attempt(self, a: Attempt) -> Admitted | Denied:
        if self.mode == "shared":
            try:
                result = await self.redis.attempt(a)
                self.breaker.success()
                return result
            except REDIS_ERRORS as exc:
                _raise_if_cancelled()
                self.failed(exc)
                if self.mode == "shared":
                    fallback_rank = a.rank if a.rank is not None else rank(
                        a.demand.priority, self._clock(), a.aging_s
                    )
                    return Denied("capacity", RETRY_AFTER_ERROR_S, fallback_rank)
        result = self.local.attempt_now(a)
        if isinstance(result, Admitted):
            self._issued_locally[a.lease_id] = self.local
        return result

    async def settle(self, s: Settlement) -> None:
        issuer = self._issued_locally.pop(s.lease_id, None)
        if issuer is not None:
            issuer.settle_now(s)
            return
        if self.mode == "local":
            self.redis.held.pop(s.lease_id, None)
            self.local.settle_now(s)
            return
        try:
            await self.redis.settle(s)
            self.breaker.success()
        except REDIS_ERRORS as exc:
            _raise_if_cancelled()
            self.failed(exc)

    async def forget(self, model: str, tickets: list[str]) -> None:
        self.local.forget_now(model, tickets)
        if self.mode == "shared":
            try:
                await self.redis.forget(model, tickets)
            except REDIS_ERRORS as exc:
                _raise_if_cancelled()
                self.failed(exc)

    async def adopt(self, waiting: list[Waiting]) -> None:
        self.local.adopt_now(waiting)

    def usage_ratio(self) -> dict[tuple[str, str], dict[str, float]]:
        return self.local.usage_ratio() if self.mode == "local" else self.shared_usage


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
            self.client, self.keys, lease_ttl_s=lease_ttl_s(cfg), ticket_ttl_s=ticket_ttl_s(cfg),
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
        self._pairs = [
            (limits, model)
            for account in config.accounts
            for model in account.serves()
            for limits in account_limits(config, model, (account.name,))
        ]
        self._tasks: list[asyncio.Task[None]] = []

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
            await asyncio.wait(tasks, timeout=5.0)
        await super().close()
        with contextlib.suppress(*REDIS_ERRORS):
            await self.client.aclose()

    async def _beat(self) -> None:
        live, usage = await self.redis_backend.heartbeat(
            self.sidecar_id, self.config.redis.heartbeat_interval_s, self.waiting(), self._pairs
        )
        self._live_count = max(1, live)
        self.failover.shared_usage = usage

    async def _heartbeat_loop(self) -> None:
        cfg = self.config.redis
        while not self._closed:
            if self.failover.mode == "shared":
                await asyncio.sleep(cfg.heartbeat_interval_s)
                try:
                    await self._beat()
                    self.failover.breaker.success()
                except REDIS_ERRORS as exc:
                    _raise_if_cancelled()
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
                    _raise_if_cancelled()
                    self.failover.failed(exc)
                except Exception:
                    log.exception("limits: probing Redis failed; staying on local limits")

    async def _wake_loop(self) -> None:
        """Wake local waiters when another sidecar frees capacity for their model."""
        channel = self.keys.wake_channel()
        while not self._closed:
            if self.failover.mode != "shared":
                await asyncio.sleep(self.config.redis.breaker_reset_s)
                continue
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                while self.failover.mode == "shared":
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self.wake(str(message["data"]))
            except REDIS_ERRORS:
                _raise_if_cancelled()
                await asyncio.sleep(self.config.redis.breaker_reset_s)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()
