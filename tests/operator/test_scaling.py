"""The replica floor a forecast asks for: pure policy."""

from __future__ import annotations

import pytest

from o1operator.forecast import Forecast
from o1operator.scaling import Capacity, busy_factor, floor_hour, replica_floor

CAP = Capacity(per_replica_per_min=100.0, target_utilisation=0.8, min_replicas=2, max_replicas=12)


def test_the_floor_serves_a_busy_minute_at_the_target_utilisation() -> None:
    hour = Forecast(0, mean=48_000.0, upper=60_000.0)  # 800 a minute on average
    assert replica_floor(hour, 1.0, CAP) == 10  # 800 / (100 * 0.8)
    assert replica_floor(hour, 1.1, CAP) == 11  # a busy minute 10% above the hour's mean


def test_the_floor_stays_within_the_bounds() -> None:
    assert replica_floor(Forecast(0, 0.0, 0.0), 1.0, CAP) == CAP.min_replicas
    assert replica_floor(Forecast(0, 1e9, 1e9), 1.0, CAP) == CAP.max_replicas
    assert replica_floor(Forecast(0, 48_000.0, 48_000.0), 0.5, CAP) == 10  # never below the mean


def test_the_busy_factor_is_a_quantile_of_minutes_over_their_hours_forecast() -> None:
    minutes = [10.0] * 50 + [20.0] * 10 + [5.0] * 60  # hour 0 as forecast or busier; hour 1 half
    hour_means = [600.0, 600.0]  # 10 a minute forecast for both
    assert busy_factor(minutes, hour_means, 0.9) == pytest.approx(1.0)
    assert busy_factor(minutes, hour_means, 0.99) == pytest.approx(2.0)
    assert busy_factor([], [], 0.9) == 1.0
    assert busy_factor([3.0] * 60, [0.0], 0.9) == 1.0  # an hour forecast at 0 teaches nothing


def test_the_floor_of_an_hour_is_in_place_the_lead_before_it() -> None:
    assert floor_hour(10 * 60 - 5, lead_min=4) == 9
    assert floor_hour(10 * 60 - 4, lead_min=4) == 10
