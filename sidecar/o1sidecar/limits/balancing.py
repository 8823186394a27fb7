"""Choosing the account that serves a request, and tracking each account's health.

Accounts the admission rule (rule.py) blocks are skipped. The rest are scored ``weight * (0.3 * RPM
left share + 0.3 * TPM left share + 0.4 * health)``, the shares being what the last minute left of
the effective limits, and the best wins; ties go to the earlier account in the given order.
The Lua admission script (lua/admit.lua) implements the same rule; tests keep the two in step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from o1sidecar.limits.api import UpstreamReport

RPM_WEIGHT = 0.3
TPM_WEIGHT = 0.3
HEALTH_WEIGHT = 0.4

HEALTH_HALF_LIFE_S = 60.0  # a sick account drifts back to full health with no news for this long
HEALTH_ON_SUCCESS = 0.2  # share of the gap to 1.0 that one success closes
HEALTH_ON_FAILURE = 0.5  # factor one network error, timeout or 5xx applies
HEALTH_ON_429 = 0.8  # factor one 429 applies (the cooldown already keeps the account out)


def score(rpm_share: float, tpm_share: float, health: float, weight: float) -> float:
    """Higher is better: the shares of the effective RPM and TPM left over the last minute, and
    health, scaled by the account's weight."""
    return weight * (RPM_WEIGHT * rpm_share + TPM_WEIGHT * tpm_share + HEALTH_WEIGHT * health)


@dataclass(frozen=True)
class Health:
    """An account's health in [0, 1] as of ``updated``; 1 is perfectly healthy."""

    value: float = 1.0
    updated: float = 0.0


def health_at(h: Health, now: float) -> float:
    """Health recovers toward 1 with time, so a sick account is retried once it has rested."""
    elapsed = max(0.0, now - h.updated)
    return 1.0 - (1.0 - h.value) * math.pow(0.5, elapsed / HEALTH_HALF_LIFE_S)


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
