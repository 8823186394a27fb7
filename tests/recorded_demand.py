"""Weeks of demand written by the sidecars' own recorder (o1sidecar/demand.py) into a real Redis, for
the tests of the operator's forecasts on a real API server and on a real node."""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis as AsyncRedis

from o1sidecar.demand import DemandCounts, DemandRecorder
from o1sidecar.limits.keys import PoolKeys


def weekly_tokens(hour: int) -> int:
    """Tokens offered per minute in ``hour`` (hours since the recording began): a working week."""
    day, of_day = divmod(hour, 24)
    return 100 * (1 if day % 7 >= 5 else 4) * (5 if 9 <= of_day < 18 else 1)


async def record_weeks(
    url: str,
    keys: PoolKeys,
    models: list[str],
    hours: range,
    start_s: float,
    per_minute: Callable[[int], int] = weekly_tokens,
) -> None:
    """Demand for ``models[0]`` in ``hours`` (since ``start_s``; ``per_minute(hour)`` tokens a minute),
    counted and flushed hour by hour by the sidecars' own recorder (every model gets its hours marked
    as counted)."""

    class Clock:
        t = start_s

        def __call__(self) -> float:
            return self.t

    clock = Clock()
    counts = DemandCounts(clock)
    recorder = DemandRecorder(AsyncRedis.from_url(url), keys, counts, models, clock)
    try:
        for hour in hours:
            for minute in range(60):
                clock.t = start_s + hour * 3600 + minute * 60
                tokens = per_minute(hour)
                counts.record(
                    models[0], 5, admitted=True, queued=False, refused=False, cached=False, tokens=tokens
                )
            await recorder.flush()
    finally:
        await recorder.close()
