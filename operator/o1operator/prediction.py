"""A pool's prediction and its ``Forecasting`` condition, from the recorded demand of its models. Pure.

Per model the model forecasts the hour under way and the 24 after it (mean and upper quantile) from
the hourly history of tokens offered; the pool's prediction adds them up and maps the total to a load
level (``spec.forecasting``'s thresholds, the brief's by default) and the actions that go with it, and
names the busiest hour ahead with the keys the brief suggests for it (status.py: ``PeakCovered``).
Too little history, or a model whose one-hour-ahead forecasts over the last day were too far off (its
own back-test), publishes nothing and says why in the condition, so everything stays as configured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from o1operator.forecast import Forecast, History, Model, SeasonalRatio, backtest, mape
from o1operator.scaling import BUSY_Q, busy_factor

MIN_HISTORY_H = 72  # three days of recorded hours before anything is forecast
BACKTEST_H = 24  # the back-test: one-hour-ahead forecasts of the last day...
MAX_ERROR = 0.5  # ...must be within this MAPE


@dataclass(frozen=True)
class Levels:
    """The brief's load levels: tokens per hour above which the load is medium / high, and what each
    level suggests (keys available, cache TTL, the lowest queue priority protected under it)."""

    medium: float = 50_000.0
    high: float = 100_000.0
    keys: tuple[int, int, int] = (1, 3, 5)
    cache_ttl_s: tuple[int, int, int] = (1800, 3600, 7200)
    priority_threshold: tuple[int, int, int] = (3, 5, 7)

    def index(self, tokens_per_hour: float) -> int:
        return 2 if tokens_per_hour > self.high else 1 if tokens_per_hour > self.medium else 0


LEVEL_NAMES = ("low", "medium", "high")
DAY_AHEAD_H = 24  # the prediction also covers the hours after the hour under way, up to this many


@dataclass(frozen=True)
class ForecastSettings:
    """``spec.forecasting``: the load levels' thresholds and the history needed before forecasts."""

    levels: Levels = Levels()
    min_history_h: int = MIN_HISTORY_H


def get_forecast_settings(spec: Mapping[str, Any]) -> ForecastSettings:
    """``spec.forecasting`` with the CRD's defaults (the brief's thresholds, three days)."""
    f = spec.get("forecasting") or {}
    return ForecastSettings(
        Levels(
            medium=float(f.get("mediumTokensPerHour", Levels.medium)),
            high=float(f.get("highTokensPerHour", Levels.high)),
        ),
        int(f.get("minHistoryHours", MIN_HISTORY_H)),
    )


@dataclass(frozen=True)
class Assessment:
    status: bool | None  # the Forecasting condition's status
    reason: str
    message: str
    prediction: dict[str, Any] | None  # status.prediction, when there is one
    # With a prediction: the pool's forecast (all models) of the hour under way and the 24 after it, and
    # the busy factor learned over the back-test (scaling.busy_factor; 1 without minutes to learn from).
    ahead: tuple[Forecast, ...] = ()
    busy: float = 1.0


def assess(
    histories: Mapping[str, History],
    now: datetime,
    model: Model | None = None,
    levels: Levels | None = None,
    min_history_h: int = MIN_HISTORY_H,
    minutes: Mapping[str, Sequence[float]] | None = None,
) -> Assessment:
    """The prediction for the hour after ``histories`` (each model's tokens offered per hour, ending
    with the hour under way excluded), or why there is none. ``minutes``: each model's tokens offered
    per minute over the last ``BACKTEST_H`` hours of its history (``BACKTEST_H * 60`` values), for the
    busy factor."""
    model = model or SeasonalRatio()
    levels = levels or Levels()
    if not histories:
        return Assessment(None, "NoDemand", "no demand recorded yet (needs sidecars with Redis)", None)
    recorded = min(h.recorded_hours() for h in histories.values())
    if recorded < min_history_h:
        short = min(histories, key=lambda m: histories[m].recorded_hours())
        return Assessment(
            None,
            "InsufficientHistory",
            f"{recorded} hours of demand recorded for {short}; forecasts start after {min_history_h} "
            f"({min_history_h / 24:g} days); until then everything stays as configured",
            None,
        )
    per_model = []
    ahead: list[Forecast] = []
    hour_means: dict[int, float] = {}  # the back-test's one-hour-ahead means, all models
    for name, history in sorted(histories.items()):
        hours = model.predict(history, 1 + DAY_AHEAD_H)
        forecast = hours[0]
        ahead = [_plus(a, b) for a, b in zip(ahead, hours, strict=True)] if ahead else hours
        scored = backtest(model, history, BACKTEST_H)
        for s in scored:
            hour_means[s.forecast.hour] = hour_means.get(s.forecast.hour, 0.0) + s.forecast.mean
        error = mape(scored)
        if math.isnan(error) and scored and not any(s.actual for s in scored):
            error = 0.0  # a model nobody asked for lately: nothing to be wrong about
        if math.isnan(error) or error > MAX_ERROR:
            shown = "no hour busy enough to judge" if math.isnan(error) else f"{error:.0%} off"
            return Assessment(
                False,
                "BacktestFailed",
                f"{name}: the forecasts of the last {BACKTEST_H} hours were {shown} (at most "
                f"{MAX_ERROR:.0%}); nothing is published, everything stays as configured",
                None,
            )
        per_model.append((name, forecast, error))
    mean = sum(f.mean for _, f, _ in per_model)
    upper = sum(f.upper for _, f, _ in per_model)
    level = levels.index(upper)
    hour = datetime.fromtimestamp(per_model[0][1].hour * 3600, UTC)
    worst = max(e for _, _, e in per_model)
    prediction = {
        "load": LEVEL_NAMES[level],
        "hour": hour_text(per_model[0][1].hour),
        "tokensPerHour": round(mean),
        "upperTokensPerHour": round(upper),
        "recentError": f"{worst:.1%}",
        "suggestedKeys": levels.keys[level],
        "cacheTTLSeconds": levels.cache_ttl_s[level],
        "priorityThreshold": levels.priority_threshold[level],
        "models": [
            {
                "model": name,
                "tokensPerHour": round(f.mean),
                "upperTokensPerHour": round(f.upper),
                "recentError": f"{e:.1%}",
            }
            for name, f, e in per_model
        ],
        "peak": _peak(ahead[1:], levels),
        "nextHours": [
            {"hour": hour_text(f.hour), "tokensPerHour": round(f.mean), "upperTokensPerHour": round(f.upper)}
            for f in ahead[1:]
        ],
        "updatedAt": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return Assessment(
        True,
        "Forecasting",
        f"{LEVEL_NAMES[level]} load expected at {hour:%H:00} UTC: about {mean:,.0f} tokens "
        f"(upper {upper:,.0f}); recent error {worst:.0%}",
        prediction,
        tuple(ahead),
        _busy(histories, minutes or {}, hour_means),
    )


def _peak(hours: Sequence[Forecast], levels: Levels) -> dict[str, Any]:
    """The busiest of ``hours`` by its upper quantile, its level and the keys the brief suggests."""
    busiest = max(hours, key=lambda f: f.upper)
    level = levels.index(busiest.upper)
    return {
        "hour": hour_text(busiest.hour),
        "tokensPerHour": round(busiest.mean),
        "upperTokensPerHour": round(busiest.upper),
        "load": LEVEL_NAMES[level],
        "suggestedKeys": levels.keys[level],
    }


def hour_text(hour: int) -> str:
    """An hour since the epoch as the status writes it (RFC 3339, UTC)."""
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%dT%H:00:00Z")


def _plus(a: Forecast, b: Forecast) -> Forecast:
    return Forecast(a.hour, a.mean + b.mean, a.upper + b.upper)


def _busy(
    histories: Mapping[str, History], minutes: Mapping[str, Sequence[float]], hour_means: Mapping[int, float]
) -> float:
    """The busy factor of the pool's minutes (all models) over the back-test's hours."""
    end = min(h.end for h in histories.values())
    total = [sum(x) for x in zip(*minutes.values(), strict=True)] if minutes else []
    if len(total) != BACKTEST_H * 60 or not any(total):
        return 1.0
    return busy_factor(total, [hour_means.get(h, 0.0) for h in range(end - BACKTEST_H, end)], BUSY_Q)
