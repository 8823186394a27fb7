"""The operator's forecasting loop: every ``interval_s``, for every pool with Redis, read the demand its
sidecars recorded (up to five weeks), assess it (prediction.py), publish the prediction to the pool's
Redis for its sidecars (``PoolKeys.prediction``, JSON, expiring after ``PUBLISHED_TTL_S`` unless
refreshed; removed when there is none: o1sidecar/prediction.py) and, when the assessment changed,
re-reconcile the pool so that its status carries the prediction and the ``Forecasting`` condition.

One operator-wide loop (like sidecars.py), not a kopf timer: a timer puts a finalizer on every pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from typing import Protocol

from o1operator import demand
from o1operator.forecast import History
from o1operator.prediction import BACKTEST_H, Assessment, assess
from o1operator.sidecars import Probes, SidecarProbe, probe_client, redis_error
from o1sidecar.limits.connect import REDIS_FAILURES, RedisClient

log = logging.getLogger("o1operator.forecasting")

HISTORY_DAYS = 35
PUBLISHED_TTL_S = 7200  # a prediction the operator stopped refreshing is gone within two hours

# (namespace, pool) -> the last assessment; read by reconcile.
Forecasts = MutableMapping[tuple[str, str], Assessment]


class Acting(Protocol):
    """What acts on the assessments (autoscale.Scaler)."""

    def act(self, ref: tuple[str, str], assessment: Assessment, now_s: float) -> None: ...
    def release(self, ref: tuple[str, str]) -> None: ...


async def read_demand(
    client: RedisClient, probe: SidecarProbe, now_s: float
) -> tuple[dict[str, History], dict[str, list[float]]]:
    """Tokens offered per hour for each of the pool's models, from ``HISTORY_DAYS`` ago up to the hour
    under way (excluded), and per minute over the last ``BACKTEST_H`` of those hours; models nobody has
    recorded are left out."""
    today = int(now_s // 86_400)
    days = range(today - HISTORY_DAYS, today + 1)
    async with client.pipeline(transaction=False) as pipe:
        for model in probe.models:
            for day in days:
                pipe.hgetall(probe.pool_keys.demand(model, day))
        raw = await pipe.execute()
    end_hour = int(now_s // 3600)
    hours, minutes = {}, {}
    for i, model in enumerate(probe.models):
        recorded = {day: raw[i * len(days) + j] for j, day in enumerate(days) if raw[i * len(days) + j]}
        if recorded:
            first_hour = min(recorded) * 24
            hours[model] = demand.hourly(recorded, first_hour, end_hour)
            minutes[model] = demand.per_minute(recorded, (end_hour - BACKTEST_H) * 60, end_hour * 60)
    return hours, minutes


async def publish(client: RedisClient, probe: SidecarProbe, assessment: Assessment) -> None:
    """The prediction for the pool's sidecars, or none."""
    key = probe.pool_keys.prediction()
    if assessment.prediction is None:
        await client.delete(key)
    else:
        await client.set(key, json.dumps(assessment.prediction), ex=PUBLISHED_TTL_S)


async def forecast_forever(
    probes: Probes,
    forecasts: Forecasts,
    interval_s: float,
    on_change: Callable[[str, str], None],
    clock: Callable[[], float] = time.time,
    scaler: Acting | None = None,
) -> None:
    """Every ``interval_s``: assess each probed pool's recorded demand; record it in ``forecasts`` and
    call ``on_change(namespace, name)`` (in a thread) when it changed; then ``scaler.act(ref,
    assessment, now)`` on it, and ``scaler.release(ref)`` for a pool no longer probed (deleted, or
    without Redis now) that it acted on (in threads; autoscale.Scaler)."""
    while True:
        for ref in set(forecasts) - set(probes):  # (every pool acted on was assessed first)
            del forecasts[ref]
            if scaler is not None:
                try:
                    await asyncio.to_thread(scaler.release, ref)
                except Exception as exc:  # (its namespace may be gone with it)
                    log.warning("O1Pool %s/%s: cannot put back what autoscaling raised: %s", *ref, exc)
        for ref, probe in list(probes.items()):
            now = clock()
            client = probe_client(probe)
            try:
                histories, minutes = await read_demand(client, probe, now)
                # (a thread: weeks of history per model are CPU work, not for the operator's event loop)
                at = datetime.fromtimestamp(now, UTC)
                settings = probe.forecasting
                assessment = await asyncio.to_thread(
                    assess,
                    histories,
                    at,
                    levels=settings.levels,
                    min_history_h=settings.min_history_h,
                    minutes=minutes,
                )
                await publish(client, probe, assessment)
            except REDIS_FAILURES as exc:  # (TimeoutError is an OSError)
                assessment = Assessment(
                    None, "RedisUnreachable", f"cannot read the recorded demand: {redis_error(exc)}", None
                )
            except Exception:  # a defect here must not stop forecasting for every other pool
                log.exception("O1Pool %s/%s: forecasting failed; next try in %gs", *ref, interval_s)
                continue
            finally:
                await client.aclose()
            if not _same(forecasts.get(ref), assessment):
                forecasts[ref] = assessment
                try:
                    await asyncio.to_thread(on_change, *ref)
                except Exception as exc:
                    log.warning("O1Pool %s/%s: cannot report its forecast: %s", *ref, exc)
            if scaler is not None:
                try:
                    await asyncio.to_thread(scaler.act, ref, assessment, now)
                except Exception:  # an API hiccup or a defect: next round tries again
                    log.exception("O1Pool %s/%s: autoscaling failed; next try in %gs", *ref, interval_s)
        await asyncio.sleep(interval_s)


def _same(before: Assessment | None, after: Assessment) -> bool:
    """Equal but for when the prediction was computed."""
    if before is None:
        return False

    def strip(a: Assessment) -> tuple[object, ...]:
        p = None if a.prediction is None else {k: v for k, v in a.prediction.items() if k != "updatedAt"}
        return a.status, a.reason, a.message, p

    return strip(before) == strip(after)
