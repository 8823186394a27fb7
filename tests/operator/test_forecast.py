"""The forecast models and how they are judged: pure functions on synthetic hourly series."""

from __future__ import annotations

import math

import pytest

from o1operator import demand
from o1operator.forecast import (
    DAY_H,
    WEEK_H,
    BriefEMA,
    Forecast,
    History,
    Scored,
    SeasonalNaive,
    SeasonalRatio,
    backtest,
    mape,
)

START = 489_984  # a Monday 00:00 UTC, in hours since the epoch


def weekly(hour: int) -> float:
    """A working week: busy weekday afternoons, quiet nights and weekends."""
    day, h = divmod(hour, DAY_H)
    level = 100.0 + (900.0 if 9 <= h < 18 else 0.0)
    return level * (0.3 if day % 7 >= 5 else 1.0)


def series(weeks: float, shape=weekly) -> History:  # type: ignore[no-untyped-def]
    return History(START, tuple(shape(h) for h in range(int(weeks * WEEK_H))))


def test_a_regular_week_is_forecast_exactly() -> None:
    history = series(4)
    forecasts = SeasonalRatio().predict(history, 24)
    assert [f.hour for f in forecasts] == list(range(history.end, history.end + 24))
    assert [f.mean for f in forecasts] == pytest.approx([weekly(4 * WEEK_H + k) for k in range(24)])
    assert all(f.upper >= f.mean for f in forecasts)


def test_a_level_change_today_carries_into_the_next_hours() -> None:
    def shape(h: int) -> float:  # demand 50% higher since yesterday
        return weekly(h) * (1.5 if h >= 4 * WEEK_H - DAY_H else 1.0)

    history = series(4, shape)
    (nxt,) = SeasonalRatio().predict(history, 1)
    assert nxt.mean == pytest.approx(1.5 * weekly(history.end - START), rel=0.02)
    assert SeasonalNaive().predict(history, 1)[0].mean == pytest.approx(weekly(history.end - START))


def test_a_holiday_a_week_ago_does_not_move_the_profile() -> None:
    holiday = 2 * WEEK_H + 2 * DAY_H  # Wednesday of the third week

    def shape(h: int) -> float:
        return weekly(h) * (0.3 if holiday <= h < holiday + DAY_H else 1.0)

    history = series(4, shape).until(START + holiday + 7 * DAY_H + 12)  # the next Wednesday, noon
    assert history.end - START == 3 * WEEK_H + 2 * DAY_H + 12
    (nxt,) = SeasonalRatio().predict(history, 1)
    assert nxt.mean == pytest.approx(weekly(history.end - START), rel=0.02)
    assert SeasonalNaive().predict(history, 1)[0].mean == pytest.approx(0.3 * weekly(history.end - START))


def test_a_short_history_uses_the_hour_of_day_and_an_empty_one_forecasts_nothing() -> None:
    history = series(3 / 7)  # Monday to Wednesday
    (nxt,) = SeasonalRatio().predict(history, 1)
    assert nxt.mean == pytest.approx(weekly(history.end - START))
    assert SeasonalRatio().predict(History(START, ()), 1)[0].mean == 0.0


def test_gaps_are_skipped_not_read_as_zero() -> None:
    history = series(4)
    gaps = History(
        START, tuple(None if 2 * WEEK_H <= i < 3 * WEEK_H else v for i, v in enumerate(history.values))
    )
    assert SeasonalRatio().predict(gaps, 6)[0].mean == pytest.approx(
        SeasonalRatio().predict(history, 6)[0].mean
    )
    assert gaps.recorded_hours() == 3 * WEEK_H


def test_the_upper_quantile_covers_the_usual_shortfall() -> None:
    def noisy(h: int) -> float:  # every fifth hour a third busier than usual
        return weekly(h) * (4 / 3 if h % 5 == 0 else 1.0)

    history = series(4, noisy)
    model = SeasonalRatio()
    spread = model.spread(history)
    assert 1.1 < spread < 1.6
    (f,) = model.predict(history, 1)
    assert f.upper == pytest.approx(f.mean * spread)


def test_the_brief_ema_moves_one_percent_per_observation() -> None:
    history = History(START, (100.0,) + (0.0,) * (DAY_H - 1) + (200.0,))  # hour 0, then hour 0 again
    (f,) = BriefEMA().predict(history.until(START + DAY_H + 1), 1)
    assert f.hour == START + DAY_H + 1
    ema = BriefEMA().predict(History(START, history.values[: DAY_H + 1]), DAY_H)
    assert ema[-1].mean == pytest.approx(0.99 * 100 + 0.01 * 200)


def test_a_backtest_sees_only_the_past() -> None:
    history = series(4)
    changed = History(START, (*history.values[:-1], 1e9))  # the last hour's actual changed
    before = backtest(SeasonalRatio(), history, 24)
    after = backtest(SeasonalRatio(), changed, 24)
    assert [s.forecast for s in before] == [s.forecast for s in after]
    assert after[-1].actual == 1e9


def test_mape_ignores_hours_far_below_the_mean() -> None:
    scored = [Scored(Forecast(0, 110.0, 110.0), 100.0), Scored(Forecast(1, 5.0, 5.0), 1.0)]
    assert mape(scored) == pytest.approx(0.10)  # the 1-token hour (400% off) is below 10% of the mean
    assert math.isnan(mape([]))


# -- reading the sidecars' demand HASHes ------------------------------------------------------------------


def test_recorded_demand_becomes_hours_with_gaps_and_minutes() -> None:
    day = 20_000
    days = {
        day: {
            "h12:live": "1",
            "720:t": "100",
            "721:t": "50",
            "779:t": "10",
            "720:r": "2",
            "h13:live": "1",  # counted, nobody asked: no demand
            "800:t": "junk",  # not a number: not demand
        }
    }
    history = demand.hourly(days, day * 24 + 11, day * 24 + 15)
    assert history.values == (None, 160.0, 0.0, None)  # 11:00 and 14:00 were not recorded: gaps
    assert demand.hourly(days, day * 24 + 12, day * 24 + 13, "r").values == (2.0,)
    minutes = demand.per_minute(days, day * 1440 + 719, day * 1440 + 722)
    assert minutes == [0.0, 100.0, 50.0]
