"""Demand forecasts per pool and model: pure functions of an hourly history.

A :class:`History` is demand per UTC hour (tokens or requests; ``None`` where nothing was recorded).
A :class:`Model` turns it into forecasts of the next hours, each a mean and an upper quantile.
:func:`backtest` replays a model over the end of a history, hour by hour, seeing only what came
before each hour: that is how a model is judged, here and in ``o1pool forecast-eval``.

Three models:

- :class:`BriefEMA`, the brief's baseline: one exponential moving average per hour of the day
  (0.99 old, 0.01 new), the forecast is the average of that hour.
- :class:`SeasonalNaive`: the same hour a week earlier (a day earlier when that is missing).
- :class:`SeasonalRatio`, o1pool's: an hour-of-week profile (the median of the same hour over the last
  weeks, so a holiday or a spike in one week does not move it; the hour of the day over the last
  days while there are fewer than two weeks), times the recent level — how the last hours compared
  with their profile, weighted toward the newest — which carries trend and one-day shifts such as a
  holiday, fading toward the week's level over the horizon. Its upper quantile is the forecast
  times a high quantile of how actual hours compared with its own forecasts over the last days.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

DAY_H = 24
WEEK_H = 168


@dataclass(frozen=True)
class History:
    """Demand per hour, from ``start`` (hours since the Unix epoch, UTC) on; ``None``: not recorded."""

    start: int
    values: tuple[float | None, ...]

    @property
    def end(self) -> int:
        """The first hour not in the history (the next one to forecast)."""
        return self.start + len(self.values)

    def at(self, hour: int) -> float | None:
        i = hour - self.start
        return self.values[i] if 0 <= i < len(self.values) else None

    def until(self, hour: int) -> History:
        """What was known when ``hour`` began."""
        return History(self.start, self.values[: max(0, hour - self.start)])

    def recorded_hours(self) -> int:
        return sum(v is not None for v in self.values)


@dataclass(frozen=True)
class Forecast:
    hour: int  # hours since the Unix epoch, UTC
    mean: float
    upper: float  # the upper quantile (UPPER_Q of how the model's past forecasts fell short)


class Model(Protocol):
    @property
    def name(self) -> str: ...

    def predict(self, history: History, horizon: int) -> list[Forecast]:
        """Forecasts of the ``horizon`` hours after ``history``."""
        ...


# -- baselines ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BriefEMA:
    """The brief's pattern: per hour of the day, ``ema = 0.99 * ema + 0.01 * usage``."""

    keep: float = 0.99
    name: str = "brief EMA (0.99/0.01 per hour of day)"

    def predict(self, history: History, horizon: int) -> list[Forecast]:
        ema: dict[int, float] = {}
        for i, v in enumerate(history.values):
            if v is None:
                continue
            h = (history.start + i) % DAY_H
            ema[h] = v if h not in ema else self.keep * ema[h] + (1 - self.keep) * v
        out = []
        for k in range(horizon):
            hour = history.end + k
            mean = ema.get(hour % DAY_H, 0.0)
            out.append(Forecast(hour, mean, mean))
        return out


@dataclass(frozen=True)
class SeasonalNaive:
    """The same hour a week earlier (or a day earlier, or 0)."""

    name: str = "seasonal naive (same hour last week)"

    def predict(self, history: History, horizon: int) -> list[Forecast]:
        out = []
        for k in range(horizon):
            hour = history.end + k
            v = _first(history.at(hour - WEEK_H), history.at(hour - DAY_H), 0.0)
            out.append(Forecast(hour, v, v))
        return out


def _first(*values: float | None) -> float:
    for v in values:
        if v is not None:
            return v
    return 0.0


# -- o1pool's model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeasonalRatio:
    """Hour-of-week profile x recent level; see the module's docstring."""

    weeks: int = 4  # weeks of the profile
    days: int = 7  # days of the hour-of-day profile, while there are fewer than two weeks
    level_hours: int = 12  # hours the level looks back at...
    level_half_life_h: float = 3.0  # ...weighted with this half-life
    fade: float = 0.9  # per hour ahead, the recent level keeps this share of its difference...
    week_level_hours: int = WEEK_H  # ...from the level of this many hours
    upper_q: float = 0.9
    residual_hours: int = 72  # one-step forecasts whose errors set the upper quantile
    name: str = "o1pool (hour-of-week profile x recent level)"

    def profile(self, history: History, hour: int) -> float | None:
        """The usual demand of ``hour``'s slot, from before ``history.end``."""
        weekly = [v for w in range(1, self.weeks + 1) if (v := history.at(hour - w * WEEK_H)) is not None]
        if len(weekly) >= 2:
            return statistics.median(weekly)
        daily = [v for d in range(1, self.days + 1) if (v := history.at(hour - d * DAY_H)) is not None]
        if daily:
            return statistics.median(daily)
        return weekly[0] if weekly else None

    def level(self, history: History, hours: int, half_life_h: float) -> float:
        """How the last ``hours`` compared with their profiles (1: as usual), newest weighted most."""
        num = den = 0.0
        for k in range(1, hours + 1):
            hour = history.end - k
            actual, usual = (
                history.at(hour),
                self.profile(history, hour),
            )  # (a profile looks back a day or more)
            if actual is None or usual is None:
                continue
            w = 0.5 ** ((k - 1) / half_life_h)
            num += w * actual
            den += w * usual
        return num / den if den > 0 else 1.0

    def _means(self, history: History, horizon: int) -> list[tuple[int, float]]:
        short = self.level(history, self.level_hours, self.level_half_life_h)
        long = self.level(history, self.week_level_hours, math.inf) if horizon > 1 else short
        out = []
        for k in range(horizon):
            hour = history.end + k
            usual = self.profile(history, hour)
            ratio = long + (short - long) * self.fade**k
            out.append((hour, max(0.0, (usual or 0.0) * ratio)))
        return out

    def predict(self, history: History, horizon: int) -> list[Forecast]:
        spread = self.spread(history)
        return [Forecast(hour, mean, mean * spread) for hour, mean in self._means(history, horizon)]

    def spread(self, history: History) -> float:
        """The ``upper_q`` quantile of actual / forecast over the last ``residual_hours`` (at least 1)."""
        ratios = []
        for k in range(1, self.residual_hours + 1):
            hour = history.end - k
            actual = history.at(hour)
            if actual is None:
                continue
            (_, mean), *_ = self._means(history.until(hour), 1)
            if mean > 0:
                ratios.append(actual / mean)
        if len(ratios) < 10:
            return 1.5
        return max(1.0, quantile(ratios, self.upper_q))


def quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# -- judging a model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    forecast: Forecast
    actual: float


def backtest(model: Model, history: History, hours: int) -> list[Scored]:
    """One-hour-ahead forecasts of the last ``hours`` recorded hours, each from what came before."""
    out = []
    for hour in range(history.end - hours, history.end):
        actual = history.at(hour)
        if actual is None:
            continue
        (forecast,) = model.predict(history.until(hour), 1)
        out.append(Scored(forecast, actual))
    return out


def mape(scored: Sequence[Scored], floor_share: float = 0.1) -> float:
    """Mean absolute percentage error over the hours with demand of at least ``floor_share`` of the mean
    hour (night hours of a few calls would otherwise weigh as much as the peak); NaN if none."""
    if not scored:
        return math.nan
    floor = floor_share * sum(s.actual for s in scored) / len(scored)
    errors = [
        abs(s.forecast.mean - s.actual) / s.actual for s in scored if s.actual > 0 and s.actual >= floor
    ]
    return sum(errors) / len(errors) if errors else math.nan
