"""How many replicas a forecast asks for, and when: pure functions, no API calls.

The operator never scales a workload in because of a forecast: it raises a replica *floor* (a
Deployment's replicas, or an HPA's ``minReplicas``) ahead of a predicted peak and lowers the floor
afterwards; the HPA or the owner scales in. ``lead_min`` ahead of the peak's hour covers the pods'
start-up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from o1operator.forecast import Forecast, quantile

BUSY_Q = 0.85  # a busy minute: this quantile of minutes over their hour's forecast per minute


@dataclass(frozen=True)
class Capacity:
    """What one replica of a target serves, and the bounds of the floor."""

    per_replica_per_min: float  # demand (tokens or requests) per minute one replica serves
    target_utilisation: float = 0.8  # as an HPA's target: the floor leaves this much headroom
    min_replicas: int = 1
    max_replicas: int = 10


def replica_floor(forecast: Forecast, busy_factor: float, cap: Capacity) -> int:
    """Replicas for a busy minute of ``forecast``'s hour: its mean per minute times ``busy_factor``
    (a high quantile of how a minute's demand compared with its hour's forecast, as learned: it holds
    both the forecast's error and the minutes' own spread), at the target utilisation, within the
    bounds."""
    busy = forecast.mean / 60 * max(1.0, busy_factor)
    wanted = math.ceil(
        busy / (cap.per_replica_per_min * cap.target_utilisation) - 1e-9
    )  # (not 11.0000001 -> 12)
    return max(cap.min_replicas, min(cap.max_replicas, wanted))


def busy_factor(minutes: Sequence[float], hour_means: Sequence[float], q: float) -> float:
    """The ``q`` quantile of minute demand over its hour's forecast per minute, ``minutes[i]`` falling
    in the hour forecast as ``hour_means[i // 60]`` (1 when there is nothing to learn from)."""
    ratios = [x / (hour_means[i // 60] / 60) for i, x in enumerate(minutes) if hour_means[i // 60] > 0]
    return quantile(ratios, q) if ratios else 1.0


def floor_hour(now_min: int, lead_min: int) -> int:
    """The hour (since the epoch) whose floor applies at minute ``now_min``: the floor of an hour is
    in place ``lead_min`` before it begins."""
    return (now_min + lead_min) // 60
