"""Admission decisions for one account+model: continuous-refill RPM and TPM token buckets, a
concurrency limit, daily/monthly request caps and the optional consecutive-429 penalty.

Everything here is a pure function of its inputs and ``now`` (seconds from an injected monotonic
clock), so tests are exact without sleeping.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from o1emulator.config import Penalty, ResolvedLimits

DAY_S = 86_400.0
MONTH_S = 30 * DAY_S
WINDOW_S = 60.0

RejectKind = Literal["requests", "tokens", "concurrency", "quota", "too_large", "source_ip"]
HOUR_S = 3600.0


@dataclass
class Bucket:
    """A token bucket refilled continuously at ``rate`` per second up to ``capacity``; starts full."""

    capacity: float
    rate: float
    level: float
    updated: float

    @classmethod
    def per_minute(cls, limit: int, burst: float, now: float) -> Bucket:
        return cls(capacity=limit * burst, rate=limit / 60.0, level=limit * burst, updated=now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (after :meth:`refill`)."""
        return max(0.0, (amount - self.level) / self.rate)

    def until_full(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


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
class Admitted:
    charge: int


@dataclass(frozen=True)
class Rejected:
    kind: RejectKind
    retry_after_s: float | None  # None: waiting does not help (too large, quota for the window)
    limit: int
    used: int
    requested: int


Decision = Admitted | Rejected


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
    ) -> None:
        self.limits = limits
        self.concurrency_retry_after_s = concurrency_retry_after_s
        self.count_rejected = count_rejected
        self.burst = burst
        self.penalty = penalty
        self.requests = Bucket.per_minute(limits.rpm, burst, now)
        self.tokens = Bucket.per_minute(limits.tpm, burst, now)
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
        if charge > limits.tpm:
            return Rejected("too_large", None, limits.tpm, 0, charge)
        self.requests.refill(now)
        self.tokens.refill(now)
        self._roll_caps(now)
        if now < self.blocked_until:
            return self._reject(self.blocked_kind, self.blocked_until - now, now, *self._used(charge))
        if limits.daily_requests is not None and self.day_count >= limits.daily_requests:
            return Rejected("quota", None, limits.daily_requests, self.day_count, 1)
        if limits.monthly_requests is not None and self.month_count >= limits.monthly_requests:
            return Rejected("quota", None, limits.monthly_requests, self.month_count, 1)
        if limits.concurrency is not None and self.in_flight >= limits.concurrency:
            return self._reject(
                "concurrency", self.concurrency_retry_after_s, now, limits.concurrency, self.in_flight, 1
            )
        if self.requests.level < 1:
            return self._reject("requests", self.requests.wait_for(1), now, *self._used(charge))
        if self.tokens.level < charge:
            return self._reject("tokens", self.tokens.wait_for(charge), now, *self._used(charge, "tokens"))
        self.requests.level -= 1
        self.tokens.level -= charge
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.day_count += 1
        self.month_count += 1
        self.consecutive_429 = 0
        self.window.add(now, charge)
        return Admitted(charge)

    def release(self) -> None:
        self.in_flight -= 1

    def forget_peaks(self) -> None:
        """Start the peak statistics (max in flight, 60 s window maxima) again from now."""
        self.max_in_flight = self.in_flight
        self.window.max_requests, self.window.max_tokens = self.window.requests, self.window.tokens

    def restart(self, now: float) -> None:
        """Full buckets, no penalty, fresh caps and window; requests in flight stay counted."""
        limits = self.limits
        self.requests = Bucket.per_minute(limits.rpm, self.burst, now)
        self.tokens = Bucket.per_minute(limits.tpm, self.burst, now)
        self.window.clear()
        self.max_in_flight = self.in_flight
        self.epoch = now
        self.day_index = self.day_count = self.month_index = self.month_count = 0
        self.consecutive_429 = 0
        self.blocked_until = -math.inf

    def _used(self, charge: int, kind: str = "requests") -> tuple[int, int, int]:
        if kind == "tokens":
            return self.limits.tpm, max(0, math.ceil(self.tokens.capacity - self.tokens.level)), charge
        return self.limits.rpm, max(0, math.ceil(self.requests.capacity - self.requests.level)), 1

    def _reject(
        self, kind: RejectKind, wait: float, now: float, limit: int, used: int, requested: int
    ) -> Rejected:
        self.consecutive_429 += 1
        if self.count_rejected:
            self.requests.level = max(self.requests.level - 1, -self.requests.capacity)
            if kind in ("requests", "tokens"):
                wait = max(wait, self.requests.wait_for(1))
        if self.penalty.enabled:
            penalty = min(self.penalty.base_s * 2 ** (self.consecutive_429 - 1), self.penalty.max_s)
            wait = max(wait, penalty)
            if now + wait > self.blocked_until:
                self.blocked_until = now + wait
                self.blocked_kind = kind
        return Rejected(kind, wait, limit, used, requested)

    def _roll_caps(self, now: float) -> None:
        day = int((now - self.epoch) // DAY_S)
        if day != self.day_index:
            self.day_index, self.day_count = day, 0
        month = int((now - self.epoch) // MONTH_S)
        if month != self.month_index:
            self.month_index, self.month_count = month, 0

    def snapshot(self, now: float) -> tuple[float, float, float, float]:
        """Remaining requests, remaining tokens, seconds until each bucket is full again."""
        self.requests.refill(now)
        self.tokens.refill(now)
        return self.requests.level, self.tokens.level, self.requests.until_full(), self.tokens.until_full()

    def bounds(self) -> tuple[float, float]:
        """Most requests and tokens the buckets can ever admit in any 60 s window."""
        return self.requests.capacity + self.limits.rpm, self.tokens.capacity + self.limits.tpm


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

    def check(self, source: str, now: float) -> Rejected | None:
        """A refusal when ``source`` has no request left this hour, else ``None`` (nothing taken)."""
        bucket = self._bucket(source, now)
        if bucket.level >= 1:
            return None
        used = math.ceil(bucket.capacity - bucket.level)
        return Rejected("source_ip", bucket.wait_for(1), self.per_hour, used, 1)

    def take(self, source: str, now: float) -> None:
        self._bucket(source, now).level -= 1
