"""The in-process admission store: this sidecar's share of every account's limits, kept in memory.

Used alone when no Redis is configured, and as the fallback that holds this sidecar's fair share
(limit / live sidecars) while Redis is unreachable. Every decision is one of the pure functions in
buckets.py, balancing.py and ordering.py; this module only keeps their state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from o1sidecar.config import SidecarConfig
from o1sidecar.limits.backend import (
    AccountLimits,
    Admitted,
    Attempt,
    Denied,
    Mode,
    Settlement,
    Waiting,
)
from o1sidecar.limits.balancing import Candidate, choose
from o1sidecar.limits.buckets import (
    UPSTREAM_LAG_S,
    Bucket,
    charge,
    lower_to,
    refill,
    resize,
    seconds_until,
    try_charge,
)
from o1sidecar.limits.ordering import blocked_by_queue, rank
from o1sidecar.limits.queueing import QueueingLimiter
from o1sidecar.limits.reconcile import merge_cooldown, remaining_now

CONCURRENCY_POLL_S = 0.25  # a concurrency wait is ended by a release; this only bounds it


@dataclass
class _AccountModel:
    rpm: Bucket
    tpm: Bucket
    leases: set[str] = field(default_factory=set)
    cooling_until: float = 0.0


@dataclass(frozen=True)
class _Ticket:
    rank: float
    tokens: int


class LocalBackend:
    """Counters in memory. ``share()`` scales every limit (1.0 alone; 1/live sidecars as a fallback)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        share: Callable[[], float] = lambda: 1.0,
        start_full: bool = True,
        mode: Mode = "local",
    ) -> None:
        self.mode: Mode = mode
        self._clock = clock
        self._share = share
        self._start_full = start_full
        self._state: dict[tuple[str, str], _AccountModel] = {}
        self._tickets: dict[str, dict[str, _Ticket]] = {}

    def scaled(self, limits: AccountLimits) -> tuple[float, float, int | None]:
        """This store's RPM, TPM and concurrency for ``limits``: at least one request's worth each."""
        share = min(1.0, max(0.0, self._share()))
        rpm = max(1.0, limits.rpm * share)
        tpm = max(1.0, limits.tpm * share)
        slots = None if limits.concurrency is None else max(1, math.floor(limits.concurrency * share))
        return rpm, tpm, slots

    def _slot(self, limits: AccountLimits, model: str, now: float) -> tuple[_AccountModel, int | None]:
        rpm, tpm, slots = self.scaled(limits)
        key = (limits.name, model)
        st = self._state.get(key)
        if st is None:
            make = Bucket.full if self._start_full else Bucket.empty
            st = self._state[key] = _AccountModel(rpm=make(rpm, now), tpm=make(tpm, now))
        else:
            st.rpm, st.tpm = resize(st.rpm, rpm, now), resize(st.tpm, tpm, now)
        return st, slots

    async def attempt(self, attempt: Attempt) -> Admitted | Denied:
        return self.attempt_now(attempt)

    def attempt_now(self, attempt: Attempt) -> Admitted | Denied:
        """One admission decision (synchronous: nothing else runs in between)."""
        now = self._clock()
        demand = attempt.demand
        tickets = self._tickets.setdefault(demand.model, {})
        mine = tickets.get(attempt.ticket)
        my_rank = (
            mine.rank
            if mine is not None
            else attempt.rank
            if attempt.rank is not None
            else rank(demand.priority, now, attempt.aging_s)
        )

        candidates: list[Candidate] = []
        states: dict[str, _AccountModel] = {}
        free_r = free_t = 0.0
        free_s = 0.0
        for limits in attempt.accounts:
            st, slots = self._slot(limits, demand.model, now)
            states[limits.name] = st
            free = None if slots is None else slots - len(st.leases)
            c = Candidate(limits.name, st.rpm, st.tpm, free, st.cooling_until, limits.health, limits.weight)
            candidates.append(c)
            if st.cooling_until <= now:
                free_r += max(0.0, st.rpm.level)
                free_t += max(0.0, st.tpm.level)
                free_s += math.inf if free is None else max(0, free)

        ahead = [
            t.tokens
            for tid, t in tickets.items()
            if tid != attempt.ticket and (t.rank, tid) < (my_rank, attempt.ticket)
        ]
        chosen = None
        if not blocked_by_queue(ahead, demand.tokens, free_r, free_t, free_s):
            chosen = choose(candidates, demand.tokens, now)
        if chosen is not None:
            st = states[chosen.name]
            charged = try_charge([(st.rpm, 1), (st.tpm, demand.tokens)], now, UPSTREAM_LAG_S)
            assert charged is not None  # choose() only returns accounts that fit
            st.rpm, st.tpm = charged
            st.leases.add(attempt.lease_id)
            tickets.pop(attempt.ticket, None)
            return Admitted(account=chosen.name, lease_id=attempt.lease_id)

        tickets[attempt.ticket] = _Ticket(rank=my_rank, tokens=demand.tokens)
        if ahead and blocked_by_queue(ahead, demand.tokens, free_r, free_t, free_s):
            return Denied("queue", CONCURRENCY_POLL_S, my_rank)
        return self._denial(candidates, demand.tokens, now, my_rank)

    @staticmethod
    def _denial(candidates: list[Candidate], tokens: int, now: float, my_rank: float) -> Denied:
        best_wait, reason = math.inf, "capacity"
        for c in candidates:
            if c.cooling_until > now:
                wait, why = c.cooling_until - now, "cooldown"
            elif c.free_slots is not None and c.free_slots < 1:
                wait, why = CONCURRENCY_POLL_S, "concurrency"
            else:
                wait = max(seconds_until(c.rpm, 1, now), seconds_until(c.tpm, tokens, now))
                why = "capacity"
            if wait < best_wait:
                best_wait, reason = wait, why
        return Denied(reason, best_wait, my_rank)  # type: ignore[arg-type]

    def hold(self, limits: AccountLimits, model: str, lease_id: str) -> None:
        """Count a request admitted elsewhere (before a failover) against this store's concurrency."""
        st, _ = self._slot(limits, model, self._clock())
        st.leases.add(lease_id)

    async def settle(self, settlement: Settlement) -> None:
        self.settle_now(settlement)

    def settle_now(self, s: Settlement) -> None:
        now = self._clock()
        st = self._state.get((s.account.name, s.model))
        if st is None:
            return
        st.leases.discard(s.lease_id)
        st.rpm, st.tpm = refill(st.rpm, now), refill(st.tpm, now)
        if s.extra_tokens:
            st.tpm = charge(st.tpm, s.extra_tokens, now)
        share = min(1.0, max(0.0, self._share()))
        for remaining, attr in ((s.remaining_requests, "rpm"), (s.remaining_tokens, "tpm")):
            if remaining is None:
                continue
            bucket: Bucket = getattr(st, attr)
            upstream = remaining_now(remaining * share, bucket.rate, bucket.capacity, s.elapsed_s)
            setattr(st, attr, lower_to(bucket, upstream, now))
        if s.cooldown_s is not None:
            st.cooling_until = merge_cooldown(st.cooling_until, now, s.cooldown_s)

    async def forget(self, model: str, tickets: list[str]) -> None:
        self.forget_now(model, tickets)

    def forget_now(self, model: str, tickets: list[str]) -> None:
        known = self._tickets.get(model, {})
        for t in tickets:
            known.pop(t, None)

    async def adopt(self, waiting: list[Waiting]) -> None:
        self.adopt_now(waiting)

    def adopt_now(self, waiting: list[Waiting]) -> None:
        for w in waiting:
            self._tickets.setdefault(w.model, {}).setdefault(w.ticket, _Ticket(w.rank, w.tokens))

    def active_leases(self) -> int:
        return sum(len(st.leases) for st in self._state.values())

    def usage_ratio(self) -> dict[tuple[str, str], dict[str, float]]:
        now = self._clock()
        out = {}
        for key, st in self._state.items():
            rpm, tpm = refill(st.rpm, now), refill(st.tpm, now)
            out[key] = {
                "requests": (rpm.capacity - rpm.level) / rpm.capacity,
                "tokens": (tpm.capacity - tpm.level) / tpm.capacity,
            }
        return out



class LocalLimiter(QueueingLimiter):
    """A ``Limiter`` that keeps every limit in this process: for a sidecar without Redis."""

    def __init__(self, config: SidecarConfig, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(config, LocalBackend(clock=clock), clock=clock)
