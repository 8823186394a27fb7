"""The pool's prediction and Forecasting condition from recorded demand: pure."""

from __future__ import annotations

from datetime import UTC, datetime

from o1operator.forecast import WEEK_H, History
from o1operator.prediction import MIN_HISTORY_H, ForecastSettings, Levels, assess, get_forecast_settings
from tests.operator.test_forecast import START, weekly

NOW = datetime(2026, 12, 6, 10, 30, tzinfo=UTC)


def week(weeks: float, scale: float = 100.0) -> History:
    return History(START, tuple(weekly(h) * scale for h in range(int(weeks * WEEK_H))))


def test_too_little_history_publishes_nothing_and_says_how_much_is_needed() -> None:
    a = assess({"o1": History(START, (1000.0,) * (MIN_HISTORY_H - 1))}, NOW)
    assert (a.status, a.reason, a.prediction) == (None, "InsufficientHistory", None)
    assert f"{MIN_HISTORY_H - 1} hours" in a.message and "3 days" in a.message
    gaps = History(START, (None,) * 100 + (1000.0,) * (MIN_HISTORY_H - 1))
    assert assess({"o1": gaps}, NOW).reason == "InsufficientHistory"  # gaps are not history
    assert assess({}, NOW).reason == "NoDemand"


def test_a_regular_pool_gets_a_prediction_summed_over_its_models() -> None:
    histories = {"o1": week(4), "o1-mini": week(4, scale=50.0)}  # Monday 00:00 next: a quiet hour
    a = assess(histories, NOW)
    assert (a.status, a.reason) == (True, "Forecasting")
    p = a.prediction
    assert p is not None
    assert p["tokensPerHour"] == round(weekly(0) * 150) and p["upperTokensPerHour"] >= p["tokensPerHour"]
    assert [m["model"] for m in p["models"]] == ["o1", "o1-mini"]
    assert (p["load"], p["suggestedKeys"], p["cacheTTLSeconds"], p["priorityThreshold"]) == (
        "low",
        1,
        1800,
        3,
    )
    assert p["recentError"] == "0.0%" and p["updatedAt"] == "2026-12-06T10:30:00Z"


def test_the_level_follows_the_upper_quantile_and_the_thresholds() -> None:
    levels = Levels(medium=5_000.0, high=9_000.0)
    busy = History(START, tuple(weekly(h) * 10 for h in range(4 * WEEK_H + 10)))  # Monday 10:00 next
    p = assess({"o1": busy}, NOW, levels=levels).prediction
    assert p is not None and p["load"] == "high" and p["suggestedKeys"] == 5 and p["priorityThreshold"] == 7
    assert assess({"o1": busy}, NOW, levels=Levels(medium=5_000.0, high=1e9)).prediction["load"] == "medium"  # type: ignore[index]


def test_a_model_that_fails_its_back_test_publishes_nothing() -> None:
    values = [weekly(h) * 100 for h in range(4 * WEEK_H)]
    for h in range(4 * WEEK_H - 24, 4 * WEEK_H):  # the last day: demand unlike any week before
        values[h] *= 5 if h % 2 else 0.2
    a = assess({"o1": History(START, tuple(values))}, NOW)
    assert (a.status, a.reason, a.prediction) == (False, "BacktestFailed", None)
    assert (
        a.message.startswith("o1: the forecasts of the last 24 hours were") and "as configured" in a.message
    )


def test_a_model_nobody_asks_for_forecasts_nothing_without_failing() -> None:
    quiet = History(START, (0.0,) * (4 * WEEK_H))
    a = assess({"o1": week(4), "o1-mini": quiet}, NOW)
    assert a.status is True and a.prediction is not None
    assert a.prediction["models"][1] == {
        "model": "o1-mini",
        "tokensPerHour": 0,
        "upperTokensPerHour": 0,
        "recentError": "0.0%",
    }


def test_the_prediction_covers_the_next_day_and_names_its_peak() -> None:
    a = assess({"o1": week(4, scale=150.0)}, NOW)  # the hour under way: Monday 00:00; then 9-18 busy
    p = a.prediction
    assert p is not None and len(p["nextHours"]) == 24
    assert [h["tokensPerHour"] for h in p["nextHours"]] == [round(weekly(h) * 150) for h in range(1, 25)]
    busiest = max(p["nextHours"], key=lambda h: h["upperTokensPerHour"])
    assert p["peak"]["hour"] == busiest["hour"] and p["peak"]["tokensPerHour"] == round(weekly(9) * 150)
    assert (p["peak"]["load"], p["peak"]["suggestedKeys"]) == ("high", 5)  # 150,000 an hour
    assert [f.hour for f in a.ahead] == list(range(START + 4 * WEEK_H, START + 4 * WEEK_H + 25))


def test_the_thresholds_and_the_history_needed_are_pool_settings() -> None:
    s = get_forecast_settings(
        {"forecasting": {"mediumTokensPerHour": 10, "highTokensPerHour": 20, "minHistoryHours": 48}}
    )
    assert (s.levels.medium, s.levels.high, s.min_history_h) == (10.0, 20.0, 48)
    assert get_forecast_settings({}) == ForecastSettings()
    a = assess({"o1": History(START, (1000.0,) * 50)}, NOW, levels=s.levels, min_history_h=s.min_history_h)
    assert a.status is True and a.prediction is not None and a.prediction["load"] == "high"
