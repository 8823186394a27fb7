"""A pool's recorded demand, as the forecasts read it: pure functions of the sidecars' demand HASHes.

The sidecars keep one HASH per model and UTC day (o1sidecar/demand.py): per minute of the day
``<minute>:r`` / ``:t`` (requests, tokens offered) and ``h<hour>:live`` for every hour in which some
sidecar was counting. Here a day's fields become the model's hourly :class:`History` (an hour without
the mark is a gap, ``None``; an hour with it and no requests is 0) and its minutes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from o1operator.forecast import History

Measure = Literal["r", "t"]  # requests or tokens offered
Day = Mapping[str, str]  # one day's HASH as Redis returns it


def hourly(days: Mapping[int, Day], first_hour: int, end_hour: int, measure: Measure = "t") -> History:
    """Demand per hour from ``first_hour`` up to ``end_hour`` (hours since the epoch, UTC)."""
    values: list[float | None] = []
    for hour in range(first_hour, end_hour):
        day, of_day = divmod(hour, 24)
        fields = days.get(day, {})
        if f"h{of_day}:live" not in fields:
            values.append(None)
            continue
        first = of_day * 60
        minutes = range(first, first + 60)
        values.append(float(sum(field_number(fields.get(f"{m}:{measure}")) for m in minutes)))
    return History(first_hour, tuple(values))


def per_minute(
    days: Mapping[int, Day], first_minute: int, end_minute: int, measure: Measure = "t"
) -> list[float]:
    """Demand per minute (0 where nothing was recorded)."""
    out = []
    for minute in range(first_minute, end_minute):
        day, of_day = divmod(minute, 1440)
        out.append(field_number(days.get(day, {}).get(f"{of_day}:{measure}")))
    return out


def field_number(value: str | None) -> float:
    """A demand HASH field's value as a number (0 when absent, or not one: a field something else wrote)."""
    try:
        return float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
