"""Redis while it answers; this sidecar's fair share in memory while a circuit breaker says it does not.

The failover store sends attempts to the ``RedisBackend`` and, once the breaker opens, to a fresh
``LocalBackend`` holding ``limit / live sidecars`` of every limit: its buckets start empty (the shared
ones may be spent), its effective limits and request caps start from what Redis last said, and the
grants Redis issued that are still running count against its concurrency. When Redis answers again
the waiting requests' tickets go back to Redis with their ranks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from o1sidecar.limits.backend import (
    AccountLimits,
    Admitted,
    Attempt,
    Denied,
    Held,
    Mode,
    Settlement,
    Snapshot,
    Waiting,
)
from o1sidecar.limits.breaker import CircuitBreaker
from o1sidecar.limits.connect import REDIS_FAILURES
from o1sidecar.limits.local import LocalBackend
from o1sidecar.limits.ordering import rank
from o1sidecar.limits.redis_store import RedisBackend

log = logging.getLogger("o1sidecar.limits")

REDIS_ERRORS: tuple[type[BaseException], ...] = (*REDIS_FAILURES, asyncio.TimeoutError)
RETRY_AFTER_ERROR_S = 0.05


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that surfaced as a Redis error, so it is never taken for an outage."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class FailoverBackend:
    """A ``Backend``: the shared store while Redis answers, a local fair share while it does not."""

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

    def _new_local(self) -> LocalBackend:
        return LocalBackend(
            clock=self._clock,
            share=self._share,
            start_full=False,
            mode="local",
            seed=self.redis.snapshot().usage,
        )

    def failed(self, exc: BaseException) -> None:
        """Count a Redis failure; the one that opens the breaker switches to local limits."""
        if self.breaker.failure() and self.mode == "shared":
            self.go_local(exc)

    def go_local(self, exc: BaseException) -> None:
        self.mode = "local"
        self.switches += 1
        self.local = self._new_local()
        for held in self.redis.held():
            self.local.hold(held)
        self.local.adopt_now(self._waiting())
        share = self._share()
        log.warning(
            "limits: Redis unreachable (%s); limiting locally at %.0f%% of each limit (1/%d sidecars)",
            type(exc).__name__,
            100 * share,
            round(1 / share) if share > 0 else 0,
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
                raise_if_cancelled()
                self.failed(exc)
                if self.mode == "shared":
                    joined = self._clock() - a.age_s
                    kept = a.rank if a.rank is not None else rank(a.demand.priority, joined, a.aging_s)
                    return Denied("capacity", RETRY_AFTER_ERROR_S, kept)
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
            self.redis.drop_held(s.lease_id)
            self.local.settle_now(s)
            return
        try:
            await self.redis.settle(s)
            self.breaker.success()
        except REDIS_ERRORS as exc:
            raise_if_cancelled()
            self.failed(exc)

    async def eta(self, a: Attempt) -> float:
        if self.mode == "shared":
            try:
                return await self.redis.eta(a)
            except REDIS_ERRORS as exc:
                raise_if_cancelled()
                self.failed(exc)
        return self.local.eta_now(a)

    async def forget(self, model: str, tickets: list[str], accounts: Sequence[AccountLimits] = ()) -> None:
        self.local.forget_now(model, tickets)
        if self.mode == "shared":
            try:
                await self.redis.forget(model, tickets, accounts)
            except REDIS_ERRORS as exc:
                raise_if_cancelled()
                self.failed(exc)

    async def adopt(self, waiting: list[Waiting]) -> None:
        self.local.adopt_now(waiting)

    def held(self) -> list[Held]:
        return self.local.held() if self.mode == "local" else self.redis.held()

    def snapshot(self) -> Snapshot:
        return self.local.snapshot() if self.mode == "local" else self.redis.snapshot()
