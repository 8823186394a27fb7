"""What the wait queue asks of an admission store (in-process or Redis), and what it gets back.

The queue (queueing.py) owns waiting, deadlines and wake-ups; a store owns the counters and applies
the admission rule (rule.py). One ``attempt`` is one admission decision: admit now on the best
account, or deny with a reason and how long until it is worth trying again. A denied attempt leaves
a *ticket* so that other attempts know a better-ranked request is waiting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from o1sidecar.config import SidecarConfig
from o1sidecar.limits.api import Demand, Usage

Mode = Literal["shared", "local"]
DenyReason = Literal["queue", "capacity", "concurrency", "cooldown", "quota", "client"]
SettleOutcome = Literal["ok", "rate_limited", "other"]
# A waiter behind others waits this long unless its turn comes first (the store then names it:
# queueing.py); a safety net for a lost wake-up. admit.lua's QUEUE_WAIT_MS.
QUEUE_WAIT_S = 5.0


@dataclass(frozen=True)
class AccountLimits:
    """One account's limits for one model, with what this sidecar knows of its health."""

    name: str
    rpm: float
    tpm: float
    concurrency: int | None
    weight: float = 1.0
    health: float = 1.0
    burst_s: float = 1.0  # pacing: at most this many seconds' worth of quota at once
    adaptive: bool = True  # lower the effective limits when the upstream refuses what they allowed
    daily: int | None = None  # request caps (UTC calendar day and month)
    monthly: int | None = None
    max_cooldown_s: float = 300.0


@dataclass(frozen=True)
class Successor:
    """A waiter its sidecar held back (queueing.py): to join the store's queue when the attempt it
    rides on is admitted, ranked as if it had joined ``age_s`` ago. It is of the same client."""

    ticket: str
    priority: int
    tokens: int
    age_s: float
    deadline: float = math.inf


@dataclass(frozen=True)
class Attempt:
    demand: Demand
    accounts: tuple[AccountLimits, ...]
    ticket: str  # the waiter's id, kept across attempts
    lease_id: str  # used if admitted
    rank: float | None  # None on the first attempt: the store ranks it on its own clock...
    aging_s: float
    queue: bool = True  # False: a denied attempt leaves no ticket (try_acquire)
    age_s: float = 0.0  # ...as of this long ago (a waiter its sidecar held back that long)
    successor: Successor | None = None  # queued in the same step if this attempt is admitted


@dataclass(frozen=True)
class Admitted:
    account: str
    lease_id: str
    successor_rank: float | None = None  # the attempt's successor joined the queue at this rank


@dataclass(frozen=True)
class Denied:
    reason: DenyReason
    wait_s: float  # until capacity is expected (a hint; the queue bounds it)
    rank: float  # the waiter's rank, to keep across attempts
    eta_s: float | None = None  # when it could be admitted, the queue ahead included (``eta``; None: ask)


@dataclass(frozen=True)
class Settlement:
    """What releasing one grant tells the store: the upstream's answer, as far as limits care."""

    account: AccountLimits
    model: str
    lease_id: str
    outcome: SettleOutcome = "other"  # "other": no call, a client error, a failure: no limit news
    extra_tokens: int = 0  # usage beyond the charge: from the bucket, and on the call's window entry
    charged_tokens: int = 0  # what the admission charged (it names the call's window entry)
    remaining_requests: int | None = None  # trusted values only
    remaining_tokens: int | None = None
    limit_requests: int | None = None  # the upstream's own limits, from x-ratelimit-limit-*
    limit_tokens: int | None = None
    reset_requests_s: float | None = None  # x-ratelimit-reset-*: when the upstream's count is whole again
    reset_tokens_s: float | None = None
    elapsed_s: float = 0.0  # since admission: the upstream's remaining counts refilled meanwhile
    retry_after_s: float | None = None  # a 429's Retry-After
    limit_type: Literal["requests", "tokens", "concurrency", "quota"] | None = None  # a 429's limit
    client: str = ""  # the client whose own limits (caps.py) counted the call ("" none)


@dataclass(frozen=True)
class Waiting:
    """A waiter as a store needs to know it when it takes over (failover)."""

    model: str
    ticket: str
    rank: float
    tokens: int
    deadline: float = math.inf  # the ticket expires then, if not sooner (its sidecar gone)


@dataclass(frozen=True)
class Held:
    """A grant a store issued and has not settled (failover counts it against the next store)."""

    lease_id: str
    limits: AccountLimits
    model: str
    tokens: int


@dataclass
class Snapshot:
    usage: dict[tuple[str, str], Usage] = field(default_factory=dict)


class Backend(Protocol):
    mode: Mode

    async def attempt(self, attempt: Attempt) -> Admitted | Denied: ...

    async def settle(self, settlement: Settlement) -> None: ...

    async def forget(self, model: str, tickets: list[str], accounts: Sequence[AccountLimits] = ()) -> None:
        """Drop tickets of waiters that left (timed out, cancelled). ``accounts``, those of their
        requests: the head named next is told its wait on them (none: now)."""
        ...

    async def adopt(self, waiting: list[Waiting]) -> None:
        """Register waiters that queued while another store was in charge."""
        ...

    async def eta(self, attempt: Attempt) -> float:
        """Seconds until the attempt's request could be admitted: its best account's wait, plus the
        waiters ranked ahead of it at the accounts' effective rate."""
        ...

    def held(self) -> list[Held]:
        """Grants this store issued that are not settled yet."""
        ...

    def snapshot(self) -> Snapshot:
        """Usage, effective limits and caps left per account+model, as last seen."""
        ...


def account_limits(config: SidecarConfig, model: str, names: tuple[str, ...]) -> list[AccountLimits]:
    """The given accounts' limits for ``model``; accounts that cannot serve it are left out."""
    by_name = {a.name: a for a in config.accounts}
    out = []
    for name in names:
        account = by_name.get(name)
        limits = account.limits_for(model) if account is not None else None
        if account is None or limits is None:
            continue
        out.append(
            AccountLimits(
                name,
                limits.rpm,
                limits.tpm,
                limits.concurrency,
                account.weight,
                burst_s=account.burst_s,
                adaptive=account.adaptive,
                daily=limits.daily_requests,
                monthly=limits.monthly_requests,
                max_cooldown_s=config.retry.max_retry_after_s,
            )
        )
    return out
