"""Admission decisions for one account+model, by the limit algorithm the account's upstream uses.

Each per-minute limit (RPM, TPM) is one ``Quota`` of the chosen algorithm:

- ``token_bucket``: capacity ``limit * burst``, refilled continuously at ``limit / 60`` per second;
- ``sliding_log``: at most ``limit * window_s / 60`` (at least 1) in any ``window_s`` seconds, by an
  exact log;
- ``fixed_window``: at most ``limit * window_s / 60`` (at least 1) per window
  ``[k * window_s, (k + 1) * window_s)``.

A window shorter than 60 s is a *sub-minute* window: the per-minute limit enforced over 1 s or 10 s
as ``limit / 60`` or ``limit / 6``, as OpenAI says it may quantise limits and Azure OpenAI does.
On top: a concurrency limit, daily/monthly request caps and the optional consecutive-429 penalty.

Everything here is a pure function of its inputs and ``now`` (seconds from an injected monotonic
clock), so tests are exact without sleeping. ``SlidingWindow`` is the referee's own record: the most
requests and tokens any 60 s window ever held, whatever the algorithm.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol

from o1emulator.config import LimiterSpec, Penalty, ResolvedLimits

DAY_S = 86_400.0
MONTH_S = 30 * DAY_S
WINDOW_S = 60.0
HOUR_S = 3600.0

RejectKind = Literal["requests", "tokens", "concurrency", "quota", "too_large", "source_ip"]


class Quota(Protocol):
    """One per-minute limit (requests or tokens) under one algorithm."""

    limit: int  # per minute, as published in x-ratelimit-limit-*

    def fits(self, amount: float, now: float) -> bool: ...

    def take(self, amount: float, now: float) -> None: ...

    def spend(self, amount: float, now: float) -> None:
        """Count a refused request against the quota (``count_rejected``)."""
        ...

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` fits (``inf`` if it never can)."""
        ...

    def remaining(self, now: float) -> float:
        """What may still be taken now, in the algorithm's own unit (the window's share of the limit)."""
        ...

    def used(self, now: float) -> float: ...

    def reset_in(self, now: float) -> float:
        """Seconds until the quota is whole again."""
        ...

    def bound_60s(self) -> float:
        """The most this quota can ever admit within any 60 s."""
        ...

    def per_minute(self) -> float:
        """The rate it really enforces, per minute: a sub-minute window admits whole requests only, so
        ``limit * window_s / 60`` is rounded down per window."""
        ...

    def restart(self, now: float) -> None: ...


@dataclass
class Bucket:
    """A token bucket refilled continuously at ``rate`` per second up to ``capacity``; starts full."""

    capacity: float
    rate: float
    level: float
    updated: float

    @classmethod
    def per_minute(cls, limit: int, burst: float, now: float) -> Bucket:
        capacity = max(1.0, limit * burst)
        return cls(capacity=capacity, rate=limit / 60.0, level=capacity, updated=now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (after :meth:`refill`)."""
        return max(0.0, (amount - self.level) / self.rate)

    def until_full(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


class TokenBucketQuota:
    def __init__(self, limit: int, burst: float, now: float) -> None:
        self.limit = limit
        self.burst = burst
        self.bucket = Bucket.per_minute(limit, burst, now)

    def fits(self, amount: float, now: float) -> bool:
        self.bucket.refill(now)
        return self.bucket.level >= amount

    def take(self, amount: float, now: float) -> None:
        self.bucket.refill(now)
        self.bucket.level -= amount

    def spend(self, amount: float, now: float) -> None:
        self.bucket.refill(now)
        self.bucket.level = max(self.bucket.level - amount, -self.bucket.capacity)

    def wait_for(self, amount: float, now: float) -> float:
        if amount > self.bucket.capacity:
            return math.inf
        self.bucket.refill(now)
        return self.bucket.wait_for(amount)

    def remaining(self, now: float) -> float:
        self.bucket.refill(now)
        return self.bucket.level

    def used(self, now: float) -> float:
        self.bucket.refill(now)
        return self.bucket.capacity - self.bucket.level

    def reset_in(self, now: float) -> float:
        self.bucket.refill(now)
        return self.bucket.until_full()

    def bound_60s(self) -> float:
        return self.bucket.capacity + self.limit

    def per_minute(self) -> float:
        return float(self.limit)

    def restart(self, now: float) -> None:
        self.bucket = Bucket.per_minute(self.limit, self.burst, now)


class SlidingLogQuota:
    """At most ``per_window`` within any ``window_s``: every admission is logged until it ages out."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.per_window = max(1.0, limit * window_s / WINDOW_S)
        self.log: deque[tuple[float, float]] = deque()
        self.total = 0.0

    def _expire(self, now: float) -> None:
        while self.log and self.log[0][0] + self.window_s <= now:
            self.total -= self.log.popleft()[1]
        if not self.log:
            self.total = 0.0

    def fits(self, amount: float, now: float) -> bool:
        self._expire(now)
        return self.total + amount <= self.per_window

    def take(self, amount: float, now: float) -> None:
        self._expire(now)
        self.log.append((now, amount))
        self.total += amount

    spend = take

    def wait_for(self, amount: float, now: float) -> float:
        if amount > self.per_window:
            return math.inf
        self._expire(now)
        excess = self.total + amount - self.per_window
        if excess <= 0:
            return 0.0
        for at, taken in self.log:  # oldest first: each entry leaves the window at ``at + window_s``
            excess -= taken
            if excess <= 0:  # (to the microsecond above, so that it has left by then)
                return max(0.0, math.ceil((at + self.window_s - now) * 1e6) / 1e6)
        return 0.0

    def remaining(self, now: float) -> float:
        self._expire(now)
        return self.per_window - self.total

    def used(self, now: float) -> float:
        self._expire(now)
        return self.total

    def reset_in(self, now: float) -> float:
        self._expire(now)
        return max(0.0, self.log[-1][0] + self.window_s - now) if self.log else 0.0

    def bound_60s(self) -> float:
        return self.per_window * math.ceil(WINDOW_S / self.window_s)

    def per_minute(self) -> float:
        return math.floor(self.per_window) * WINDOW_S / self.window_s

    def restart(self, now: float) -> None:
        self.log.clear()
        self.total = 0.0


class FixedWindowQuota:
    """At most ``per_window`` per window ``[k * window_s, (k + 1) * window_s)`` of the clock."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.per_window = max(1.0, limit * window_s / WINDOW_S)
        self.index = -1
        self.total = 0.0

    def _roll(self, now: float) -> None:
        index = math.floor(now / self.window_s)
        if index != self.index:
            self.index, self.total = index, 0.0

    def fits(self, amount: float, now: float) -> bool:
        self._roll(now)
        return self.total + amount <= self.per_window

    def take(self, amount: float, now: float) -> None:
        self._roll(now)
        self.total += amount

    spend = take

    def wait_for(self, amount: float, now: float) -> float:
        if amount > self.per_window:
            return math.inf
        if self.fits(amount, now):
            return 0.0
        return (self.index + 1) * self.window_s - now

    def remaining(self, now: float) -> float:
        self._roll(now)
        return self.per_window - self.total

    def used(self, now: float) -> float:
        self._roll(now)
        return self.total

    def reset_in(self, now: float) -> float:
        self._roll(now)
        return (self.index + 1) * self.window_s - now if self.total > 0 else 0.0

    def bound_60s(self) -> float:
        return self.per_window * (math.ceil(WINDOW_S / self.window_s) + 1)

    def per_minute(self) -> float:
        return math.floor(self.per_window) * WINDOW_S / self.window_s

    def restart(self, now: float) -> None:
        self.index, self.total = -1, 0.0


def make_quota(limit: int, spec: LimiterSpec, burst: float, now: float) -> Quota:
    if spec.algorithm == "sliding_log":
        return SlidingLogQuota(limit, spec.window_s)
    if spec.algorithm == "fixed_window":
        return FixedWindowQuota(limit, spec.window_s)
    return TokenBucketQuota(limit, burst, now)


@dataclass
class SlidingWindow:
    """Requests and tokens admitted in the last 60 s, and the largest totals ever seen in such a window."""

    events: deque[tuple[float, int]] = field(default_factory=deque)
    requests: int = 0
    tokens: int = 0
    max_requests: int = 0
    max_tokens: int = 0

    def add(self, now: float, tokens: int) -> None:
        events = self.events
        while events and events[0][0] <= now - WINDOW_S:
            self.tokens -= events.popleft()[1]
        events.append((now, tokens))
        self.tokens += tokens
        self.requests = len(events)
        self.max_requests = max(self.max_requests, self.requests)
        self.max_tokens = max(self.max_tokens, self.tokens)

    def clear(self) -> None:
        self.events.clear()
        self.requests = self.tokens = self.max_requests = self.max_tokens = 0


@dataclass(frozen=True)
class Allowed:
    charge: int


@dataclass(frozen=True)
class Refused:
    kind: RejectKind
    retry_after_s: float | None  # None: waiting does not help (too large, quota for the window)
    limit: int
    used: int
    requested: int


Decision = Allowed | Refused


class AccountModelLimiter:
    """Limits of one account for one model, shared by all its keys."""

    def __init__(
        self,
        limits: ResolvedLimits,
        burst: float,
        penalty: Penalty,
        now: float,
        concurrency_retry_after_s: float = 1.0,
        count_rejected: bool = False,
        spec: LimiterSpec | None = None,
    ) -> None:
        self.limits = limits
        self.spec = spec or LimiterSpec()
        self.concurrency_retry_after_s = concurrency_retry_after_s
        self.count_rejected = count_rejected
        self.burst = burst
        self.penalty = penalty
        self.requests = make_quota(limits.rpm, self.spec, burst, now)
        self.tokens = make_quota(limits.tpm, self.spec, burst, now)
        self.in_flight = 0
        self.max_in_flight = 0
        self.window = SlidingWindow()
        self.day_index = 0
        self.day_count = 0
        self.month_index = 0
        self.month_count = 0
        self.consecutive_429 = 0
        self.blocked_until = -math.inf
        self.blocked_kind: RejectKind = "requests"
        self.epoch = now

    def admit(self, charge: int, now: float) -> Decision:
        """Admit a request costing ``charge`` TPM (taking RPM, TPM and a concurrency slot) or say why not."""
        limits = self.limits
        if charge > limits.tpm or self.tokens.wait_for(charge, now) == math.inf:
            return Refused("too_large", None, limits.tpm, 0, charge)
        self._roll_caps(now)
        if now < self.blocked_until:
            return self._reject(self.blocked_kind, self.blocked_until - now, now, *self._used(charge, now))
        if limits.daily_requests is not None and self.day_count >= limits.daily_requests:
            return Refused("quota", None, limits.daily_requests, self.day_count, 1)
        if limits.monthly_requests is not None and self.month_count >= limits.monthly_requests:
            return Refused("quota", None, limits.monthly_requests, self.month_count, 1)
        if limits.concurrency is not None and self.in_flight >= limits.concurrency:
            return self._reject(
                "concurrency", self.concurrency_retry_after_s, now, limits.concurrency, self.in_flight, 1
            )
        if not self.requests.fits(1, now):
            return self._reject("requests", self.requests.wait_for(1, now), now, *self._used(charge, now))
        if not self.tokens.fits(charge, now):
            wait = self.tokens.wait_for(charge, now)
            return self._reject("tokens", wait, now, *self._used(charge, now, "tokens"))
        self.requests.take(1, now)
        self.tokens.take(charge, now)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.day_count += 1
        self.month_count += 1
        self.consecutive_429 = 0
        self.window.add(now, charge)
        return Allowed(charge)

    def release(self) -> None:
        self.in_flight -= 1

    def forget_peaks(self) -> None:
        """Start the peak statistics (max in flight, 60 s window maxima) again from now."""
        self.max_in_flight = self.in_flight
        self.window.max_requests, self.window.max_tokens = self.window.requests, self.window.tokens

    def restart(self, now: float) -> None:
        """Whole quotas, no penalty, fresh caps and window; requests in flight stay counted."""
        self.requests.restart(now)
        self.tokens.restart(now)
        self.window.clear()
        self.max_in_flight = self.in_flight
        self.epoch = now
        self.day_index = self.day_count = self.month_index = self.month_count = 0
        self.consecutive_429 = 0
        self.blocked_until = -math.inf

    def _used(self, charge: int, now: float, kind: str = "requests") -> tuple[int, int, int]:
        if kind == "tokens":
            return self.limits.tpm, max(0, math.ceil(self.tokens.used(now))), charge
        return self.limits.rpm, max(0, math.ceil(self.requests.used(now))), 1

    def _reject(
        self, kind: RejectKind, wait: float, now: float, limit: int, used: int, requested: int
    ) -> Refused:
        self.consecutive_429 += 1
        if self.count_rejected:
            self.requests.spend(1, now)
            if kind in ("requests", "tokens"):
                wait = max(wait, self.requests.wait_for(1, now))
        if self.penalty.enabled:
            penalty = min(self.penalty.base_s * 2 ** (self.consecutive_429 - 1), self.penalty.max_s)
            wait = max(wait, penalty)
            if now + wait > self.blocked_until:
                self.blocked_until = now + wait
                self.blocked_kind = kind
        if self.spec.retry_after_s is not None and kind in ("requests", "tokens", "concurrency"):
            wait = self.spec.retry_after_s  # an upstream that does not say how long
        return Refused(kind, wait, limit, used, requested)

    def _roll_caps(self, now: float) -> None:
        day = int((now - self.epoch) // DAY_S)
        if day != self.day_index:
            self.day_index, self.day_count = day, 0
        month = int((now - self.epoch) // MONTH_S)
        if month != self.month_index:
            self.month_index, self.month_count = month, 0

    def snapshot(self, now: float) -> tuple[float, float, float, float]:
        """Remaining requests and tokens (in the algorithm's unit), seconds until each is whole again."""
        return (
            self.requests.remaining(now),
            self.tokens.remaining(now),
            self.requests.reset_in(now),
            self.tokens.reset_in(now),
        )

    def bounds(self) -> tuple[float, float]:
        """Most requests and tokens the quotas can ever admit in any 60 s window."""
        return self.requests.bound_60s(), self.tokens.bound_60s()


class SourceLimiter:
    """Requests per hour from one client address, across every key and account (a hidden OpenAI limit)."""

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self.buckets: dict[str, Bucket] = {}

    def _bucket(self, source: str, now: float) -> Bucket:
        bucket = self.buckets.get(source)
        if bucket is None:
            rate = self.per_hour / HOUR_S
            bucket = self.buckets[source] = Bucket(self.per_hour, rate, float(self.per_hour), now)
        bucket.refill(now)
        return bucket

    def check(self, source: str, now: float) -> Refused | None:
        """A refusal when ``source`` has no request left this hour, else ``None`` (nothing taken)."""
        bucket = self._bucket(source, now)
        if bucket.level >= 1:
            return None
        used = math.ceil(bucket.capacity - bucket.level)
        return Refused("source_ip", bucket.wait_for(1), self.per_hour, used, 1)

    def take(self, source: str, now: float) -> None:
        self._bucket(source, now).level -= 1
