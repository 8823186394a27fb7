"""Synthetic demand traces for judging forecasts: seeded, per minute, several weeks long.

A trace is a pool's demand in tokens per minute: a working-day shape (two bumps, at 11:00 and 15:00
UTC, over a night floor), weekends at a fraction of a weekday, multiplicative noise per minute and
a slower one per hour (a busy afternoon), and optionally a weekly trend, a holiday (a weekday at
weekend level) and a one-off spike (a batch job: several times the usual demand for two hours).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

MINUTE_S = 60
DAY_MIN = 1440
WEEK_MIN = 7 * DAY_MIN


@dataclass(frozen=True)
class TraceSpec:
    name: str
    weeks: int = 5
    peak_tokens_per_min: float = 3_000.0
    night_share: float = 0.08
    weekend_share: float = 0.3
    trend_per_week: float = 0.0  # 0.05: 5% more each week
    noise_minute: float = 0.25  # sigma of the per-minute lognormal noise
    noise_hour: float = 0.06  # sigma of the per-hour one
    holiday_day: int | None = None  # day index (0: the first day) at weekend level
    spike_hour: int | None = None  # hour index where a 2-hour spike begins
    spike_factor: float = 4.0
    seed: int = 1
    stress: bool = False  # noisier than the forecast targets are about (see SPECS)
    start_hour: int = 489_984  # hours since the epoch of the first minute: Monday 2025-11-24 00:00 UTC

    @property
    def regular(self) -> bool:
        """No holiday, no spike, the usual noise: what the MAPE target is about."""
        return self.holiday_day is None and self.spike_hour is None and not self.stress


def shape(minute_of_day: int) -> float:
    """The working-day shape, 0..1: two bumps over the night floor (set apart in :func:`generate`)."""
    h = minute_of_day / 60
    return max(math.exp(-(((h - 11) / 2.2) ** 2)), 0.85 * math.exp(-(((h - 15) / 2.5) ** 2)))


def generate(spec: TraceSpec) -> list[float]:
    """Tokens per minute, ``spec.weeks`` weeks from ``spec.start_hour``."""
    rng = random.Random(spec.seed)
    out = []
    hour_noise = 1.0
    for m in range(spec.weeks * WEEK_MIN):
        day, minute = divmod(m, DAY_MIN)
        if minute % 60 == 0:
            hour_noise = math.exp(rng.gauss(0, spec.noise_hour) - spec.noise_hour**2 / 2)
        weekend = day % 7 >= 5 or day == spec.holiday_day
        level = spec.night_share + (1 - spec.night_share) * shape(minute)
        if weekend:
            level *= spec.weekend_share
        level *= (1 + spec.trend_per_week) ** (m / WEEK_MIN)
        if spec.spike_hour is not None and spec.spike_hour <= m // 60 < spec.spike_hour + 2:
            level *= spec.spike_factor
        noise = math.exp(rng.gauss(0, spec.noise_minute) - spec.noise_minute**2 / 2)
        out.append(spec.peak_tokens_per_min * level * hour_noise * noise)
    return out


def hourly(per_minute: list[float]) -> list[float]:
    return [sum(per_minute[i : i + 60]) for i in range(0, len(per_minute) - 59, 60)]


SPECS = (
    TraceSpec("regular", seed=1),
    # A stress case: its hour-to-hour noise alone puts a perfect forecast 9.5% off on average.
    TraceSpec("noisy (stress)", noise_minute=0.4, noise_hour=0.1, seed=2, stress=True),
    TraceSpec("growing 10%/week", trend_per_week=0.10, seed=3),
    TraceSpec("holiday in week 5", holiday_day=30, seed=4),  # a Wednesday
    TraceSpec("one-off spike in week 5", spike_hour=(29 * 24) + 20, seed=5),  # Tuesday 20:00
)
