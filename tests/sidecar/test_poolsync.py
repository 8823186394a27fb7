"""The pool's sync (poolsync.py, sync.lua): a sidecar's demand counts and its clients' spend, and its
reads of the pool's refused keys, outages and prediction, go to Redis in one command per interval, on
one server and on a Redis Cluster (every key of the pool on its slot)."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime

import pytest
import redis
from redis.asyncio import Redis

from o1pool.rediscluster import LocalCluster
from o1sidecar.config import Account, RedisConfig
from o1sidecar.demand import DemandCounts, DemandRecorder
from o1sidecar.limits import build_limiter
from o1sidecar.limits.connect import REDIS_FAILURES, redis_client, register_script
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.limits.shared import SharedLimiter
from o1sidecar.outage_sync import SharedOutages
from o1sidecar.outages import ModelOutages, ModelState
from o1sidecar.poolsync import SCRIPT, Op, PoolSync, Sync, run_syncs
from o1sidecar.prediction import PredictionMirror
from o1sidecar.quarantine import SharedQuarantine
from o1sidecar.spend import SpendLedger, SpendRecorder, day_period
from o1sidecar.upstream import AccountRoute, UpstreamKey
from tests.conftest import RedisServer
from tests.limits.helpers import config
from tests.polling import until

KEYS = PoolKeys("o1pool", "tests", "counters")
NOON = 20_000 * 86_400 + 12 * 3600


async def _commands(client: Redis, name: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


async def test_adds_and_reads_of_many_keys_take_one_command_and_return_what_each_asked(
    redis_server: RedisServer,
) -> None:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    took: list[tuple[list[object], float]] = []
    try:
        await client.hset(KEYS.spend("d1"), "a:usd", 5)
        await client.hset(KEYS.outages(), mapping={"o1": "down;1;2"})
        await client.set(KEYS.prediction(), '{"load": "high"}')
        script = register_script(client, SCRIPT)
        adds = Sync(
            [
                Op("add", KEYS.spend("d1"), 100, [("a:usd", 7), ("a:tokens", 0)]),
                Op("add", KEYS.spend("m1"), 200, [("a:usd", 7)]),
            ],
            lambda replies, now: took.append((list(replies), now)),
        )
        reads = Sync(
            [Op("hash", KEYS.outages()), Op("get", KEYS.prediction()), Op("get", KEYS.prediction() + "x")],
            lambda replies, now: took.append((list(replies), now)),
        )
        await run_syncs(script, [adds, reads])  # (the first call loads the script)
        evalsha = await _commands(client, "evalsha")
        await run_syncs(script, [adds, None, reads])
        await run_syncs(script, [None, Sync([], lambda _r, _n: None)])
        assert await _commands(client, "evalsha") - evalsha == 1  # (both in one; nothing to do: nothing sent)
        (first, t1), (reads1, _), (second, t2), (reads2, _) = took
        assert first == [[12, 0], [7]] and second == [[19, 0], [14]]
        assert reads1 == reads2 == [{"o1": "down;1;2"}, '{"load": "high"}', ""]
        server, _ = await client.time()
        assert abs(t2 - server) < 5 and t1 <= t2  # (the server's clock)
        assert await client.hgetall(KEYS.spend("d1")) == {"a:usd": "19", "a:tokens": "0"}
        assert 90 < await client.ttl(KEYS.spend("d1")) <= 100
        assert 190 < await client.ttl(KEYS.spend("m1")) <= 200
    finally:
        await client.aclose()


async def test_a_sidecars_parts_sync_in_one_command_and_a_failed_sync_keeps_what_they_would_write(
    redis_server: RedisServer,
) -> None:
    """Every part of a sidecar's pool state (refused keys, outages, demand, prediction, spend) in one
    EVALSHA; with Redis unreachable the demand counts and spend stay, and go with the next sync."""
    client = redis_client(RedisConfig(url=redis_server.url))
    reader = Redis.from_url(redis_server.url, decode_responses=True)
    account = {
        "name": "main",
        "base_url": "http://127.0.0.1:1",
        "tier": 1,
        "keys": [{"name": "primary", "env": "X"}],
    }
    route = AccountRoute(Account.model_validate(account), [UpstreamKey("main", "primary", "sk-test")])
    seen, publisher = ModelOutages(3, 30.0), ModelOutages(3, 30.0)
    counts, ledger = DemandCounts(lambda: NOON), SpendLedger()
    demand = DemandRecorder(client, KEYS, counts, ["o1"], lambda: NOON)
    spend = SpendRecorder(client, KEYS, ledger, ["web"])
    prediction = PredictionMirror(client, KEYS)
    parts = [SharedQuarantine(client, KEYS, {"main": route}), SharedOutages(client, KEYS, seen, ["o1"])]
    sync = PoolSync(client, [*parts, demand, prediction, spend], 60.0)
    hour = datetime.now(UTC).strftime("%Y-%m-%dT%H:00:00Z")
    try:
        await sync.tick()  # (loads the script)
        counts.record("o1", 8, admitted=True, queued=False, refused=False, cached=False, tokens=100)
        ledger.add("web", 0.25, 40)
        await reader.set(KEYS.prediction(), json.dumps({"load": "high", "hour": hour}))
        now = publisher.now()
        await SharedOutages(client, KEYS, publisher, ["o1"]).publish(
            "o1", ModelState("down", since=now - 5, probe_at=now + 25), now
        )
        await SharedQuarantine(client, KEYS, {"main": route}).refused(route, route.keys[0])
        route.lift("primary")
        before = {c: await _commands(reader, c) for c in ("evalsha", "get", "hgetall", "hincrby")}
        await sync.tick()
        after = {c: await _commands(reader, c) for c in before}
        assert after["evalsha"] - before["evalsha"] == 1
        assert after["get"] - before["get"] == 1 and after["hgetall"] - before["hgetall"] == 2  # (its own)
        assert prediction.peak()
        assert seen.down("o1")
        assert route.in_quarantine() == ["primary"]
        assert await reader.hget(KEYS.demand("o1", 20_000), "720:r") == "1"
        assert ledger.spent("web").today.tokens == 40

        counts.record("o1", 8, admitted=True, queued=False, refused=False, cached=False, tokens=100)
        ledger.add("web", 0.5, 60)
        gone = PoolSync(redis_client(RedisConfig(url="redis://127.0.0.1:1")), [demand, spend], 60.0)
        with pytest.raises(REDIS_FAILURES):
            await gone.tick()
        assert ledger.spent("web").today.tokens == 100  # (still counted here)
        await sync.tick()
        assert await reader.hget(KEYS.demand("o1", 20_000), "720:r") == "2"  # (kept, then written)
        assert ledger.spent("web").today.tokens == 100
        assert await reader.hget(KEYS.spend(day_period(time.time())), "web:tokens") == "100"
    finally:
        await sync.close()
        await reader.aclose()


async def test_demand_of_several_models_flushes_in_one_command_on_a_cluster(
    redis_cluster: LocalCluster,
) -> None:
    """The HASHes of two models and their hour marks are several keys of the pool's one slot."""
    client = redis_client(RedisConfig(url=redis_cluster.url, cluster=True))
    counts = DemandCounts(lambda: NOON)
    recorder = DemandRecorder(client, KEYS, counts, ["o1", "o1-mini"], lambda: NOON)
    owner = redis_cluster.primary_of_key(KEYS.demand("o1", 20_000)).client()
    try:
        counts.record("o1", 8, admitted=True, queued=False, refused=False, cached=False, tokens=100)
        await recorder.flush()  # (loads the script on the slot's primary)
        counts.record("o1", 8, admitted=True, queued=False, refused=False, cached=False, tokens=100)
        counts.record("o1-mini", 2, admitted=False, queued=True, refused=True, cached=False, tokens=0)
        before = _calls(owner, "evalsha")
        await recorder.flush()
        assert _calls(owner, "evalsha") - before == 1
        assert owner.hget(KEYS.demand("o1", 20_000), "720:r") == "2"
        assert owner.hget(KEYS.demand("o1-mini", 20_000), "h12:2:x") == "1"
        assert owner.hget(KEYS.demand("o1-mini", 20_000), "h12:live") == "1"
    finally:
        await recorder.close()
        owner.close()


def _calls(node: redis.Redis, name: str) -> int:
    stats = node.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


async def test_the_limiters_heartbeat_carries_the_pools_sync(redis_server: RedisServer) -> None:
    """With a shared limiter the parts ride along with its heartbeat: one command a sidecar per interval
    for both, and the sync's own script is never sent."""
    cfg = config(
        {"a": {"rpm": 60, "tpm": 100_000}}, redis_url=redis_server.url, redis={"heartbeat_interval_s": 0.2}
    )
    limiter = build_limiter(cfg)
    assert isinstance(limiter, SharedLimiter)
    client = redis_client(cfg.redis)
    reader = Redis.from_url(redis_server.url, decode_responses=True)
    counts = DemandCounts(lambda: NOON)
    demand, prediction = (
        DemandRecorder(client, KEYS, counts, ["o1"], lambda: NOON),
        PredictionMirror(client, KEYS),
    )
    sync = PoolSync(client, [demand, prediction], 0.2, carrier=limiter)
    hour = datetime.now(UTC).strftime("%Y-%m-%dT%H:00:00Z")
    await limiter.start()
    await sync.start()
    try:
        counts.record("o1", 8, admitted=True, queued=False, refused=False, cached=False, tokens=100)
        await reader.set(KEYS.prediction(), json.dumps({"load": "high", "hour": hour}))
        await until(prediction.peak, "the prediction read with a heartbeat", timeout_s=5)
        await until(
            lambda: _written(reader, KEYS.demand("o1", 20_000), "720:r"), "the demand counted", timeout_s=5
        )
        sha = hashlib.sha1(SCRIPT.encode()).hexdigest()
        assert await reader.script_exists(sha) == [False]  # (never sent on its own)
    finally:
        await limiter.close()
        await sync.close()  # (its last sync goes on its own: the limiter is closed)
        await reader.aclose()
    assert await Redis.from_url(redis_server.url).script_exists(sha) == [True]


async def _written(reader: Redis, key: str, field: str) -> bool:
    return await reader.hget(key, field) == "1"
