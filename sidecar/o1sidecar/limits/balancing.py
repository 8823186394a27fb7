"""Choosing the account that serves a request, and tracking each account's health.

Accounts without RPM or TPM headroom for the demand, without a free concurrency slot, or in
cooldown are skipped. The rest are scored ``weight * (0.3 * RPM left share + 0.3 * TPM left share
+ 0.4 * health)`` and the best wins; ties go to the earlier account in the given order.
The Lua admission script (lua/admit.lua) implements the same rule; tests keep the two in step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from o1sidecar.limits.api import UpstreamReport
from o1sidecar.limits.buckets import Bucket, refill

RPM_WEIGHT = 0.3
TPM_WEIGHT = 0.3
HEALTH_WEIGHT = 0.4

HEALTH_HALF_LIFE_S = 60.0  # a sick account drifts back to full health with no news for this long
HEALTH_ON_SUCCESS = 0.2  # share of the gap to 1.0 that one success closes
HEALTH_ON_FAILURE = 0.5  # factor one network error, timeout or 5xx applies
HEALTH_ON_429 = 0.8  # factor one 429 applies (the cooldown already keeps the account out)


@dataclass(frozen=True)
class Candidate:
    """One account's standing for one model at one moment."""

    name: str
    rpm: Bucket
    tpm: Bucket
    free_slots: int | None = None  # None: no concurrency limit
    cooling_until: float = 0.0
    health: float = 1.0
    weight: float = 1.0


def fits(c: Candidate, tokens: float, now: float) -> bool:
    """Whether ``c`` could admit a request costing ``tokens`` right now."""
    if c.cooling_until > now:
        return False
    if c.free_slots is not None and c.free_slots < 1:
        return False
    return refill(c.rpm, now).level >= 1 and refill(c.tpm, now).level >= tokens


def score(c: Candidate, now: float) -> float:
    """Higher is better: remaining shares of RPM and TPM and health, scaled by the account's weight."""
    rpm, tpm = refill(c.rpm, now), refill(c.tpm, now)
    rpm_share = max(0.0, rpm.level) / rpm.capacity if rpm.capacity > 0 else 0.0
    tpm_share = max(0.0, tpm.level) / tpm.capacity if tpm.capacity > 0 else 0.0
    return c.weight * (RPM_WEIGHT * rpm_share + TPM_WEIGHT * tpm_share + HEALTH_WEIGHT * c.health)


def choose(candidates: Sequence[Candidate], tokens: float, now: float) -> Candidate | None:
    """The best account that fits the demand, or ``None`` when none does."""
    best: Candidate | None = None
    best_score = -math.inf
    for c in candidates:
        if not fits(c, tokens, now):
            continue
        s = score(c, now)
        if s > best_score:
            best, best_score = c, s
    return best


@dataclass(frozen=True)
class Health:
    """An account's health in [0, 1] as of ``updated``; 1 is perfectly healthy."""

    value: float = 1.0
    updated: float = 0.0


def health_at(h: Health, now: float) -> float:
    """Health recovers toward 1 with time, so a sick account is retried once it has rested."""
    elapsed = max(0.0, now - h.updated)
    return 1.0 - (1.0 - h.value) * 0.5 ** (elapsed / HEALTH_HALF_LIFE_S)


def update_health(h: Health, report: UpstreamReport, now: float) -> Health:
    """Errors and 429s lower health; successes restore it."""
    value = health_at(h, now)
    if report.failed or report.status >= 500:
        value *= HEALTH_ON_FAILURE
    elif report.status == 429:
        value *= HEALTH_ON_429
    elif report.status < 400:
        value += (1.0 - value) * HEALTH_ON_SUCCESS
    return Health(value=min(1.0, max(0.0, value)), updated=now)
