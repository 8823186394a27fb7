"""The operator's published prediction, read by the sidecars without a restart: under a predicted peak,
requests below the protected priority start at their fallback model, and with ``ttl_follows_load``
new cache entries live as long as the prediction suggests (prediction.py, cache.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import openai
import pytest
from redis.asyncio import Redis

from o1emulator.embedded import EmulatorHandle
from o1sidecar.app import start_sidecar
from o1sidecar.config import ConfigError, SidecarConfig
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.prediction import PredictionMirror, Published, parse
from tests.conftest import RedisServer
from tests.polling import clear_of_the_hour_boundary, until
from tests.sidecar.conftest import SidecarFactory, sidecar_config_dict

KEYS = PoolKeys("o1pool", "tests", "test")
HOUR = datetime(2026, 12, 6, 10, tzinfo=UTC)


def published(load: str, hour: datetime, ttl: object = None) -> str:
    """What the operator writes (o1operator/forecasting.py: the status's prediction as JSON)."""
    data = {"load": load, "hour": hour.strftime("%Y-%m-%dT%H:%M:%SZ"), "tokensPerHour": 1}
    return json.dumps(data if ttl is None else data | {"cacheTTLSeconds": ttl})


def test_only_a_well_formed_prediction_counts() -> None:
    assert parse(published("high", HOUR)) == Published("high", HOUR)
    for bad in (None, "", "{", "[]", json.dumps({"load": "extreme", "hour": "2026-12-06T10:00:00Z"})):
        assert parse(bad) is None
    assert parse(json.dumps({"load": "high", "hour": "noon"})) is None
    assert parse(published("high", HOUR, 7200)) == Published("high", HOUR, 7200)
    for odd in (0, -5, "7200", 1.5, True, 10**9):  # a TTL that is no TTL: the configured one applies
        assert parse(published("high", HOUR, odd)) == Published("high", HOUR)


def test_a_peak_counts_only_in_its_own_hour() -> None:
    mirror = PredictionMirror.__new__(PredictionMirror)  # (no Redis needed to judge the hour)
    mirror.current = Published("high", HOUR)
    assert mirror.peak(HOUR + timedelta(minutes=59))
    assert not mirror.peak(HOUR + timedelta(hours=1)) and not mirror.peak(HOUR - timedelta(seconds=1))
    mirror.current = Published("medium", HOUR)
    assert not mirror.peak(HOUR)


async def test_under_a_predicted_peak_low_priorities_take_the_fallback_model(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle, redis_server: RedisServer
) -> None:
    clear_of_the_hour_boundary(30.0)
    handle = await make_sidecar(
        redis={"url": redis_server.url, "heartbeat_interval_s": 0.1},
        fallback={"chains": {"o1": ["o1-mini"]}},
        cache={"enabled": False},
    )
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    redis = Redis.from_url(redis_server.url)

    async def served(priority: int) -> tuple[str, str]:
        raw = await client.chat.completions.with_raw_response.create(
            model="o1",
            messages=[{"role": "user", "content": "Busy?"}],
            extra_headers={"x-o1pool-priority": str(priority)},
        )
        return raw.headers["x-o1pool-model"], raw.headers["x-o1pool-degraded"]

    try:
        assert await served(2) == ("o1", "false")
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        await redis.set(KEYS.prediction(), published("high", now))
        await until(handle.proxy.admitter.peak, "the sidecar sees the predicted peak")
        assert await served(2) == ("o1-mini", "true")  # below queue.peak_min_priority (7)
        assert await served(7) == ("o1", "false")  # protected
        await redis.set(KEYS.prediction(), published("low", now))
        await until(lambda: not handle.proxy.admitter.peak(), "the peak is over")
        assert await served(2) == ("o1", "false")
    finally:
        await redis.aclose()


async def test_with_ttl_follows_load_new_cache_entries_live_as_long_as_the_prediction_says(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle, redis_server: RedisServer
) -> None:
    clear_of_the_hour_boundary(30.0)
    handle = await make_sidecar(
        redis={"url": redis_server.url, "heartbeat_interval_s": 0.1},
        cache={"l2_ttl_s": 86_400, "ttl_follows_load": True},
    )
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    redis = Redis.from_url(redis_server.url)

    async def ttl_of_a_new_answer(question: str) -> int:
        await client.chat.completions.create(model="o1", messages=[{"role": "user", "content": question}])
        await handle.proxy.cache.flush()  # (L2 is written in the background)
        keys = [k async for k in redis.scan_iter(match=KEYS.cached("*"))]
        ttls = {k: await redis.ttl(k) for k in keys}
        fresh = [k for k in keys if k not in seen]
        seen.update(fresh)
        assert len(fresh) == 1
        return int(ttls[fresh[0]])

    seen: set[bytes] = set()
    try:
        assert 86_000 < await ttl_of_a_new_answer("No prediction yet?") <= 86_400  # l2_ttl_s
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        await redis.set(KEYS.prediction(), published("high", now, 7200))
        await until(lambda: handle.proxy.cache.l2_ttl_s() == 7200, "the sidecar sees the prediction")
        assert 7100 < await ttl_of_a_new_answer("Busy hour?") <= 7200
        await redis.set(KEYS.prediction(), published("low", now, 1800))
        await until(lambda: handle.proxy.cache.l2_ttl_s() == 1800, "the quiet prediction")
        assert 1700 < await ttl_of_a_new_answer("Quiet hour?") <= 1800
        await redis.set(KEYS.prediction(), published("high", now - timedelta(hours=1), 7200))  # stale
        await until(lambda: handle.proxy.cache.l2_ttl_s() == 86_400, "a stale prediction ignored")
    finally:
        await redis.aclose()


def reserve_config(emulator: EmulatorHandle, redis_url: str, *reserve: str) -> dict[str, object]:
    data = sidecar_config_dict(emulator, ("acct-a", "acct-b"))
    for account in data["accounts"]:  # type: ignore[union-attr]
        account["reserve"] = account["name"] in reserve
    data["redis"] = {"url": redis_url, "heartbeat_interval_s": 0.1}
    data["cache"] = {"enabled": False}
    return data


async def test_a_reserve_account_serves_only_under_a_predicted_peak(
    emulator: EmulatorHandle, redis_server: RedisServer, key_env: None
) -> None:
    clear_of_the_hour_boundary(30.0)
    handle = await start_sidecar(
        SidecarConfig.from_dict(reserve_config(emulator, redis_server.url, "acct-b"))
    )
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    redis = Redis.from_url(redis_server.url)

    async def accounts_used(n: int) -> set[str]:
        used = set()
        for i in range(n):
            raw = await client.chat.completions.with_raw_response.create(
                model="o1", messages=[{"role": "user", "content": f"Which account? {i}"}]
            )
            used.add(raw.headers["x-o1pool-account"])
        return used

    try:
        assert await accounts_used(8) == {"acct-a"}  # no prediction: the reserve idles
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        await redis.set(KEYS.prediction(), published("high", now))
        await until(handle.proxy.admitter.peak, "the sidecar sees the predicted peak")
        assert "acct-b" in await accounts_used(8)  # under the peak the reserve serves (most headroom)
        await redis.set(KEYS.prediction(), published("medium", now))
        await until(lambda: not handle.proxy.admitter.peak(), "the peak is over")
        assert await accounts_used(8) == {"acct-a"}
    finally:
        await redis.aclose()
        await handle.close()


def test_config_that_could_never_act_on_a_prediction_is_refused(emulator: EmulatorHandle) -> None:
    with pytest.raises(ConfigError, match="served only by reserve accounts"):
        SidecarConfig.from_dict(reserve_config(emulator, "redis://127.0.0.1:1", "acct-a", "acct-b"))
    without_redis = reserve_config(emulator, "redis://127.0.0.1:1", "acct-b")
    del without_redis["redis"]
    with pytest.raises(ConfigError, match=r"acct-b.* is a reserve.*set redis\.url"):
        SidecarConfig.from_dict(without_redis)
    without_redis = reserve_config(emulator, "redis://127.0.0.1:1")
    del without_redis["redis"]
    without_redis["cache"] = {"ttl_follows_load": True}
    with pytest.raises(ConfigError, match="ttl_follows_load follows a prediction published through Redis"):
        SidecarConfig.from_dict(without_redis)
