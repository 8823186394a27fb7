"""The in-process admission store: every account's limits kept in memory, decided by rule.py.

Used alone when no Redis is configured, and as the fallback that holds this sidecar's fair share
(limit / live sidecars) while Redis is unreachable. Every decision is a function of rule.py (one
account+model), balancing.py (which account) and ordering.py (the queue); this module only keeps
their state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from o1sidecar.config import SidecarConfig
from o1sidecar.limits import caps, fairness, rule
from o1sidecar.limits.api import Demand, Usage
from o1sidecar.limits.backend import (
    QUEUE_WAIT_S,
    AccountLimits,
    Admitted,
    Attempt,
    Denied,
    DenyReason,
    Held,
    Mode,
    Settlement,
    Snapshot,
    Waiting,
)
from o1sidecar.limits.balancing import score
from o1sidecar.limits.ordering import AHEAD_LIMIT, blocked_by_queue, rank
from o1sidecar.limits.queueing import QueueingLimiter


@dataclass(frozen=True)
class _Ticket:
    ticket: str
    rank: float
    tokens: int
    place: fairness.Place | None = None  # the client's place it holds (fairness.py)
    expires: float = math.inf  # its request's deadline: past it the ticket is dropped (as in admit.lua)


@dataclass
class _Entry:
    limits: AccountLimits
    held_to: rule.Limits
    state: rule.AccountModel
    block: rule.Block | None
    wait: float


class LocalBackend:
    """Counters in memory. ``share()`` scales every limit (1.0 alone; 1/live sidecars as a fallback).

    ``seed`` (failover) starts each account+model from what the shared store last said: its
    effective limits, and request caps with only this sidecar's share of what was left.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        share: Callable[[], float] = lambda: 1.0,
        start_full: bool = True,
        mode: Mode = "local",
        seed: Mapping[tuple[str, str], Usage] | None = None,
    ) -> None:
        self.mode: Mode = mode
        self._clock = clock
        self._share = share
        self._start_full = start_full
        self._seed = dict(seed or {})
        self._state: dict[tuple[str, str], rule.AccountModel] = {}
        self._limits: dict[tuple[str, str], rule.Limits] = {}
        self._tickets: dict[str, dict[str, _Ticket]] = {}
        self._held: dict[str, Held] = {}
        self._shares: dict[str, dict[str, fairness.Share]] = {}  # model -> client -> share
        self._windows: dict[str, caps.Window] = {}  # client -> its calls of the last minute (caps.py)

    def limits_of(self, limits: AccountLimits) -> rule.Limits:
        return rule.Limits.of(limits, min(1.0, max(0.0, self._share())))

    def _entry(self, limits: AccountLimits, model: str, tokens: int, now: float) -> _Entry:
        lim = self.limits_of(limits)
        key = (limits.name, model)
        st = self._state.get(key)
        if st is None:
            st = self._state[key] = self._new_state(limits, lim, model, now)
        self._limits[key] = lim
        rule.refresh(st, lim, now)
        block, wait = rule.check(st, lim, tokens, now)
        return _Entry(limits, lim, st, block, wait)

    def _new_state(
        self, limits: AccountLimits, lim: rule.Limits, model: str, now: float
    ) -> rule.AccountModel:
        st = rule.new_state(lim, now)
        if not self._start_full:
            # The shared buckets may already be spent: a fallback must not add a burst.
            st.r = st.t = 0.0
        seen = self._seed.get((limits.name, model))
        if seen is not None:
            st.fr = min(1.0, seen.effective_rpm / limits.rpm)
            st.ft = min(1.0, seen.effective_tpm / limits.tpm)
            st.ss = rule.NO_SLOW_START  # the limits as Redis had them, slow start included
            rule.refresh(st, lim, now)
            share = min(1.0, max(0.0, self._share()))
            if limits.daily is not None and seen.daily_left is not None:
                st.dc = limits.daily - math.floor(seen.daily_left * share)
            if limits.monthly is not None and seen.monthly_left is not None:
                st.mc = limits.monthly - math.floor(seen.monthly_left * share)
        return st

    async def attempt(self, attempt: Attempt) -> Admitted | Denied:
        return self.attempt_now(attempt)

    def attempt_now(self, attempt: Attempt) -> Admitted | Denied:
        """One admission decision (synchronous: nothing else runs in between)."""
        now = self._clock()
        demand = attempt.demand
        tickets = self._tickets.setdefault(demand.model, {})
        shares = self._shares.setdefault(demand.model, {})
        self.forget_now(demand.model, [t for t, held in tickets.items() if held.expires <= now])
        window = self._window(demand, now)
        if window is not None:
            wait = caps.wait(window, self._cap(demand), demand.tokens, now)
            if wait > 0:
                return Denied("client", wait, self._step_out(attempt, now))
        entries = [self._entry(a, demand.model, demand.tokens, now) for a in attempt.accounts]
        my_rank, spot = _rank_of(tickets, attempt, now, shares, entries)
        free_r = free_t = free_s = 0.0
        for e in entries:
            r, t, s = rule.free(e.state, e.held_to, now)
            free_r, free_t, free_s = free_r + r, free_t + t, free_s + s
        ahead = self._ahead(tickets, attempt.ticket, my_rank)
        queued = blocked_by_queue([t.tokens for t in ahead], demand.tokens, free_r, free_t, free_s)
        best = None if queued else _best(entries)
        held = tickets.get(attempt.ticket)
        if best is not None and demand.client and spot is None and (held is None or held.place is None):
            spot = _place(shares, demand, entries, now)  # (admitted without holding a place: it takes one)
        elif spot is not None and best is None and (not attempt.queue or spot.start > demand.deadline):
            spot = None  # no ticket, or a place past its deadline: it takes none (fairness.py)
        if spot is not None:
            shares[spot.client] = fairness.taken(spot, demand.weight)
        if best is not None:
            rule.admit(best.state, best.held_to, demand.tokens, attempt.lease_id, now)
            if window is not None:
                caps.admit(window, demand.tokens, attempt.lease_id, now)
            self._held[attempt.lease_id] = Held(attempt.lease_id, best.limits, demand.model, demand.tokens)
            tickets.pop(attempt.ticket, None)
            return Admitted(account=best.limits.name, lease_id=attempt.lease_id)
        if attempt.queue:
            place = spot if held is None else held.place
            tickets[attempt.ticket] = _Ticket(attempt.ticket, my_rank, demand.tokens, place, demand.deadline)
        eta = self._eta_of(tickets, attempt.ticket, my_rank, entries)
        if queued:
            return Denied("queue", QUEUE_WAIT_S, my_rank, eta)
        reason, wait = _denial(entries)
        return Denied(reason, wait, my_rank, eta)

    def _window(self, demand: Demand, now: float) -> caps.Window | None:
        """The client's window, refreshed, if it has limits of its own."""
        if not demand.client or demand.cap is None:
            return None
        window = self._windows.setdefault(demand.client, caps.Window())
        caps.refresh(window, now)
        return window

    def _cap(self, demand: Demand) -> caps.Cap:
        assert demand.cap is not None
        return demand.cap.scaled(min(1.0, max(0.0, self._share())))

    def _step_out(self, attempt: Attempt, now: float) -> float:
        """A waiter whose client is at its limit leaves the queue (giving its place back) and keeps
        its rank for its return (admit.lua does the same)."""
        kept = self._tickets.get(attempt.demand.model, {}).get(attempt.ticket)
        if kept is not None:
            self.forget_now(attempt.demand.model, [attempt.ticket])
            return kept.rank
        if attempt.rank is not None:
            return attempt.rank
        return rank(attempt.demand.priority, now - attempt.age_s, attempt.aging_s)

    def client_window(self, client: str) -> caps.Window | None:
        """A client's calls of the last minute as this store counts them (for inspection)."""
        return self._windows.get(client)

    @staticmethod
    def _ahead(tickets: dict[str, _Ticket], ticket: str, my_rank: float) -> list[_Ticket]:
        return [t for tid, t in tickets.items() if tid != ticket and (t.rank, tid) < (my_rank, ticket)]

    def shares(self, model: str) -> dict[str, fairness.Share]:
        """Each client's fair share of ``model`` as this store keeps it (fairness.py)."""
        return dict(self._shares.get(model, {}))

    async def eta(self, attempt: Attempt) -> float:
        return self.eta_now(attempt)

    def eta_now(self, attempt: Attempt) -> float:
        now = self._clock()
        demand = attempt.demand
        entries = [self._entry(a, demand.model, demand.tokens, now) for a in attempt.accounts]
        tickets = self._tickets.get(demand.model, {})
        shares = self._shares.get(demand.model, {})
        my_rank = _rank_of(tickets, attempt, now, shares, entries)[0]
        return self._eta_of(tickets, attempt.ticket, my_rank, entries)

    def _eta_of(
        self, tickets: dict[str, _Ticket], ticket: str, my_rank: float, entries: list[_Entry]
    ) -> float:
        """As queue.lua's queue_eta: the best account's wait, plus the waiters ahead at the accounts' rate
        (the cost of the first AHEAD_LIMIT, in queue order, exactly; the rest at their average)."""
        ahead = self._ahead(tickets, ticket, my_rank)
        first = sorted(ahead, key=lambda t: (t.rank, t.ticket))[:AHEAD_LIMIT]
        tokens = sum(t.tokens for t in first) * len(ahead) / len(first) if first else 0.0
        return _eta(entries, len(ahead), tokens)

    def hold(self, held: Held) -> None:
        """Count a request admitted elsewhere (before a failover) against this store's concurrency."""
        now = self._clock()
        entry = self._entry(held.limits, held.model, held.tokens, now)
        entry.state.leases.add(held.lease_id)
        self._held[held.lease_id] = held

    async def settle(self, settlement: Settlement) -> None:
        self.settle_now(settlement)

    def settle_now(self, s: Settlement) -> None:
        self._held.pop(s.lease_id, None)
        now = self._clock()
        window = self._windows.get(s.client) if s.client else None
        if window is not None:
            caps.refresh(window, now)
            caps.settle(window, s.lease_id, s.extra_tokens)
        key = (s.account.name, s.model)
        st = self._state.get(key)
        if st is None:
            return
        lim = self.limits_of(s.account)
        rule.refresh(st, lim, now)
        rule.settle(st, lim, s, now, waiting=len(self._tickets.get(s.model, {})))

    async def forget(self, model: str, tickets: list[str], accounts: Sequence[AccountLimits] = ()) -> None:
        self.forget_now(model, tickets)

    def forget_now(self, model: str, tickets: list[str]) -> None:
        """Drop waiters that left unserved; each gives its client's place back (fairness.py)."""
        known = self._tickets.get(model, {})
        shares = self._shares.get(model, {})
        for t in tickets:
            gone = known.pop(t, None)
            place = gone.place if gone is not None else None
            if place is not None and place.client in shares:
                shares[place.client] = fairness.given_back(shares[place.client], place.worth)

    async def adopt(self, waiting: list[Waiting]) -> None:
        self.adopt_now(waiting)

    def adopt_now(self, waiting: list[Waiting]) -> None:
        for w in waiting:
            ticket = _Ticket(w.ticket, w.rank, w.tokens, expires=w.deadline)
            self._tickets.setdefault(w.model, {}).setdefault(w.ticket, ticket)

    def held(self) -> list[Held]:
        return list(self._held.values())

    def state_of(self, account: str, model: str) -> rule.AccountModel | None:
        """The rule's state of one account+model, as last left (for inspection)."""
        return self._state.get((account, model))

    def snapshot(self) -> Snapshot:
        now = self._clock()
        out = Snapshot()
        for (account, model), st in self._state.items():
            lim = self._limits[(account, model)]
            rule.refresh(st, lim, now)
            er, et = rule.effective(st, lim)
            out.usage[(account, model)] = Usage(
                requests_ratio=st.wn / lim.rpm,
                tokens_ratio=st.wt / lim.tpm,
                effective_rpm=er,
                effective_tpm=et,
                daily_left=None if lim.daily is None else max(0, lim.daily - st.dc),
                monthly_left=None if lim.monthly is None else max(0, lim.monthly - st.mc),
            )
        return out


def _rank_of(
    tickets: dict[str, _Ticket],
    attempt: Attempt,
    now: float,
    shares: Mapping[str, fairness.Share],
    entries: list[_Entry],
) -> tuple[float, fairness.Place | None]:
    """The waiter's rank: kept from its ticket, else the one it brings, else ranked now (as of its age:
    ``Attempt.age_s``); and, for a client's request ranked now, the place it would take (fairness.py;
    its start is the rank's time). (This store does not take an attempt's ``successor``.)"""
    mine = tickets.get(attempt.ticket)
    if mine is not None:
        return mine.rank, None
    if attempt.rank is not None:
        return attempt.rank, None
    demand, joined = attempt.demand, now - attempt.age_s
    if not demand.client:
        return rank(demand.priority, joined, attempt.aging_s), None
    spot = _place(shares, demand, entries, joined)
    return rank(demand.priority, spot.start, attempt.aging_s), spot


def _place(
    shares: Mapping[str, fairness.Share], demand: Demand, entries: list[_Entry], now: float
) -> fairness.Place:
    """The client's next place, at the rate of the accounts as they stand (admit.lua's ``rate``)."""
    rate = sum(rule.effective(e.state, e.held_to)[0] for e in entries) / rule.MINUTE_S
    return fairness.place(shares, demand.client, demand.weight, rate, now)


def _best(entries: list[_Entry]) -> _Entry | None:
    """The admissible account with the best score; ties go to the first (as in admit.lua)."""
    best, best_score = None, -math.inf
    for e in entries:
        if e.block is not None:
            continue
        rpm_share, tpm_share = rule.headroom(e.state, e.held_to)
        s = score(rpm_share, tpm_share, e.limits.health, e.limits.weight)
        if s > best_score:
            best, best_score = e, s
    return best


def _denial(entries: list[_Entry]) -> tuple[DenyReason, float]:
    """The account that frees up first, and what blocks it."""
    best_wait, reason = math.inf, "capacity"
    for e in entries:
        if e.wait < best_wait:
            best_wait, reason = e.wait, e.block or "capacity"
    return reason, best_wait  # type: ignore[return-value]


def _eta(entries: list[_Entry], ahead: int, ahead_tokens: float) -> float:
    base = min((e.wait for e in entries), default=math.inf)
    rate_r = sum(rule.effective(e.state, e.held_to)[0] for e in entries) / rule.MINUTE_S
    rate_t = sum(rule.effective(e.state, e.held_to)[1] for e in entries) / rule.MINUTE_S
    if not entries:
        return math.inf
    return base + max(ahead / rate_r, ahead_tokens / rate_t)


class LocalLimiter(QueueingLimiter):
    """A ``Limiter`` that keeps every limit in this process: for a sidecar without Redis."""

    def __init__(self, config: SidecarConfig, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(config, LocalBackend(clock=clock), clock=clock)
