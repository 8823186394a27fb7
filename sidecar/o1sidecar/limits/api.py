"""The contract between the proxy and admission control.

The proxy describes what a request will cost (a ``Demand``) and which accounts may serve it; the
limiter makes it wait, in priority order across every sidecar of the pool, until one account has
RPM, TPM and a concurrency slot for it, and hands back a ``Grant``. After the upstream answers, the
proxy reports what happened (``UpstreamReport``) so the limiter can reconcile usage, adopt the
upstream's view of what remains and of its limits, and correct its model of the upstream after a 429.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from o1sidecar.limits.caps import Cap


@dataclass(frozen=True)
class Demand:
    model: str
    tokens: int  # TPM charged at admission, by the upstream's rule (see TokenPolicy)
    priority: int  # 0..9, higher is served first
    deadline: float  # wall-clock epoch seconds (shared across sidecars); past it the request gives up
    client: str = ""  # the pool's client it is from ("" none: no fair share; fairness.py)
    weight: float = 1.0  # the client's weight in the fair share
    cap: Cap | None = None  # the client's own RPM/TPM limits (caps.py; None: none)


@dataclass(frozen=True)
class Grant:
    account: str
    model: str
    tokens: int
    lease_id: str
    waited_s: float


@dataclass(frozen=True)
class UpstreamReport:
    """What one upstream call told us. Every field is optional: upstreams omit or garble headers."""

    status: int
    usage_tokens: int | None = None  # prompt + completion (reasoning included), from `usage`
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None
    limit_requests: int | None = None  # x-ratelimit-limit-*: the upstream's own per-minute limits
    limit_tokens: int | None = None
    retry_after_s: float | None = None
    limit_type: Literal["requests", "tokens", "concurrency", "quota"] | None = None  # for a 429
    failed: bool = False  # network error, timeout or 5xx: counts against the account's health


class QueueTimeout(Exception):
    """The request's deadline passed while it waited; answer 429 with ``retry_after_s``."""

    def __init__(self, reason: str, retry_after_s: float, waited_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.waited_s = waited_s


class QuotaExhausted(Exception):
    """Every account's request cap (daily or monthly) for the model is spent until after the
    request's deadline; answer 429 ``insufficient_quota`` with ``retry_after_s`` (when it resets)."""

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class ClientLimited(Exception):
    """The request's client is at its own RPM/TPM limit (caps.py) until after the request's deadline;
    answer 429 with ``retry_after_s``. Another model would not help: the limit is the client's."""

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class QueueFull(Exception):
    """This sidecar's wait queue is at ``queue.max_length``; answer 429 at once."""


class NoCapacity(Exception):
    """No given account can ever serve the demand (for example it exceeds the account's TPM)."""


@dataclass(frozen=True)
class Usage:
    """One account+model as the limiter last saw it."""

    requests_ratio: float  # share of the configured RPM used over the last minute
    tokens_ratio: float
    effective_rpm: float  # the limits admission acts on now (configured, or lower after 429s)
    effective_tpm: float
    daily_left: int | None = None  # requests left under the caps (None: no cap)
    monthly_left: int | None = None


@dataclass
class LimiterState:
    """A snapshot for metrics and the demo."""

    mode: Literal["shared", "local"]
    live_sidecars: int
    queue_length: dict[int, int] = field(default_factory=dict)  # priority -> waiting here
    usage: dict[tuple[str, str], Usage] = field(default_factory=dict)  # (account, model) -> usage


class Limiter(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def drain(self) -> None:
        """Shutting down: hand waiting requests back (QueueTimeout) and queue no more; calls already
        admitted go on."""
        ...

    async def acquire(self, demand: Demand, accounts: Sequence[str]) -> Grant:
        """Wait until one of ``accounts`` admits ``demand``; raise QueueTimeout, QueueFull, NoCapacity,
        QuotaExhausted or ClientLimited."""
        ...

    async def try_acquire(self, demand: Demand, accounts: Sequence[str]) -> Grant | None:
        """Admit ``demand`` now if an account has headroom and no better-ranked request waits for it;
        ``None`` otherwise (nothing waits, nothing is queued)."""
        ...

    async def release(self, grant: Grant, report: UpstreamReport | None) -> None:
        """Free the concurrency lease and reconcile; ``report`` is None when no upstream call was made."""
        ...

    def state(self) -> LimiterState: ...
