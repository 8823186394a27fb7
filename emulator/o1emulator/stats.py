"""Exact counters per account, model and key, and the JSON the admin endpoint reports."""

from __future__ import annotations

from collections import Counter
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
        "limits": {**limits.model_dump(), "burst": limiter.burst},
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
