"""Exact counters per account, model and key, and the JSON the admin endpoint reports."""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from o1emulator.limits import AccountModelLimiter

REJECT_KINDS = ("requests", "tokens", "concurrency", "quota", "too_large", "source_ip")


@dataclass
class Counters:
    admitted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    tokens_charged: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    def admit(self, charge: int) -> None:
        self.admitted += 1
        self.tokens_charged += charge
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight

    def as_dict(self) -> dict[str, Any]:
        return {
            "admitted": self.admitted,
            "rejected": {kind: self.rejected[kind] for kind in REJECT_KINDS},
            "rejected_total": sum(self.rejected.values()),
            "tokens_charged": self.tokens_charged,
            "completion_tokens": self.completion_tokens,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "faults": dict(self.faults),
        }

    def reset(self) -> None:
        """Zero everything but what is in flight now."""
        self.admitted = self.tokens_charged = self.completion_tokens = 0
        self.rejected.clear()
        self.faults.clear()
        self.max_in_flight = self.in_flight


def limiter_report(counters: Counters, limiter: AccountModelLimiter, now: float) -> dict[str, Any]:
    """Counters of one account+model with its limits, remaining headroom and the 60 s window check."""
    limits = limiter.limits
    requests_left, tokens_left, _, _ = limiter.snapshot(now)
    requests_bound, tokens_bound = limiter.bounds()
    window = limiter.window
    concurrency_exceeded = limits.concurrency is not None and limiter.max_in_flight > limits.concurrency
    return {
        **counters.as_dict(),
        "limits": {
            **limits.model_dump(),
            "burst": limiter.burst,
            "algorithm": limiter.spec.algorithm,
            "window_s": limiter.spec.window_s,
            "rpm_enforced": limiter.requests.per_minute(),
            "tpm_enforced": limiter.tokens.per_minute(),
        },
        "remaining": {"requests": requests_left, "tokens": tokens_left},
        "window_60s": {
            "max_requests": window.max_requests,
            "max_tokens": window.max_tokens,
            "requests_bound": requests_bound,
            "tokens_bound": tokens_bound,
        },
        "exceeded": {
            "requests": window.max_requests > requests_bound,
            "tokens": window.max_tokens > tokens_bound,
            "concurrency": concurrency_exceeded,
        },
        "consecutive_429": limiter.consecutive_429,
    }


TIMELINE_SECONDS = 4 * 3600  # per-second counts kept for the last four hours


class Timeline:
    """Admitted and refused requests per second, per account and model: what a plot of the upstream's
    view over time needs (``GET /admin/timeline``)."""

    def __init__(self, now: float) -> None:
        self.start = now
        self.seconds: dict[tuple[str, str], OrderedDict[int, list[int]]] = {}

    def add(self, account: str, model: str, now: float, admitted: bool) -> None:
        counts = self.seconds.setdefault((account, model), OrderedDict())
        second = math.floor(now - self.start)
        row = counts.get(second)
        if row is None:
            row = counts[second] = [0, 0]
            while len(counts) > TIMELINE_SECONDS:
                counts.popitem(last=False)
        row[0 if admitted else 1] += 1

    def clear(self, now: float) -> None:
        self.start = now
        self.seconds.clear()

    def as_dict(self, now: float) -> dict[str, Any]:
        """``{"elapsed_s", "accounts": {account: {model: [[second, admitted, refused], ...]}}}``."""
        accounts: dict[str, dict[str, list[list[int]]]] = {}
        for (account, model), counts in self.seconds.items():
            accounts.setdefault(account, {})[model] = [[second, *row] for second, row in counts.items()]
        return {"elapsed_s": now - self.start, "accounts": accounts}
