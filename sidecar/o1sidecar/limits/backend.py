"""What the wait queue asks of an admission store (in-process or Redis), and what it gets back.

The queue (queueing.py) owns waiting, deadlines and wake-ups; a backend owns the counters. One
``attempt`` is one admission decision: admit now on the best account, or deny with a reason and how
long until it is worth trying again. A denied attempt leaves a *ticket* so that other attempts know
a better-ranked request is waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from o1sidecar.config import SidecarConfig
from o1sidecar.limits.api import Demand

Mode = Literal["shared", "local"]
DenyReason = Literal["queue", "capacity", "concurrency", "cooldown"]


@dataclass(frozen=True)
class AccountLimits:
    """One account's limits for one model, with what this sidecar knows of its health."""

    name: str
    rpm: float
    tpm: float
    concurrency: int | None
    weight: float = 1.0
    health: float = 1.0


@dataclass(frozen=True)
class Attempt:
    demand: Demand
    accounts: tuple[AccountLimits, ...]
    ticket: str  # the waiter's id, kept across attempts
    lease_id: str  # used if admitted
    rank: float | None  # None on the first attempt: the store ranks it on its own clock
    aging_s: float


@dataclass(frozen=True)
class Admitted:
    account: str
    lease_id: str


@dataclass(frozen=True)
class Denied:
    reason: DenyReason
    wait_s: float  # until capacity is expected (a hint; the queue bounds it)
    rank: float  # the waiter's rank, to keep across attempts


@dataclass(frozen=True)
class Settlement:
    """What releasing one grant changes in the store."""

    account: AccountLimits
    model: str
    lease_id: str
    extra_tokens: int = 0
    remaining_requests: int | None = None  # trusted values only
    remaining_tokens: int | None = None
    elapsed_s: float = 0.0  # since admission: the upstream's remaining counts refilled meanwhile
    cooldown_s: float | None = None  # a 429: rest at least this long


@dataclass(frozen=True)
class Waiting:
    """A waiter as a store needs to know it when it takes over (failover)."""

    model: str
    ticket: str
    rank: float
    tokens: int


class Backend(Protocol):
    mode: Mode

    async def attempt(self, attempt: Attempt) -> Admitted | Denied: ...

    async def settle(self, settlement: Settlement) -> None: ...

    async def forget(self, model: str, tickets: list[str]) -> None:
        """Drop tickets of waiters that left (timed out, cancelled)."""
        ...

    async def adopt(self, waiting: list[Waiting]) -> None:
        """Register waiters that queued while another store was in charge."""
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
        out.append(AccountLimits(name, limits.rpm, limits.tpm, limits.concurrency, account.weight))
    return out

