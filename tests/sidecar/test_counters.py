"""The pool's counters (counters.lua): a sidecar's demand counts and its clients' spend go to Redis in one
command per interval, on one server and on a Redis Cluster (every HASH of the pool on its slot)."""

from __future__ import annotations

import redis
from redis.asyncio import Redis

from o1pool.rediscluster import LocalCluster
from o1sidecar.config import RedisConfig
from o1sidecar.counters import Counters, Increments
from o1sidecar.demand import DemandCounts, DemandRecorder
from o1sidecar.limits.connect import redis_client
from o1sidecar.limits.keys import PoolKeys
from tests.conftest import RedisServer

KEYS = PoolKeys("o1pool", "tests", "counters")
NOON = 20_000 * 86_400 + 12 * 3600


async def _commands(client: Redis, name: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


async def test_many_hashes_and_fields_take_one_command_and_return_the_new_values(
    redis_server: RedisServer,
) -> None:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await client.hset(KEYS.spend("d1"), "a:usd", 5)
        counters = Counters(client)
        batch = [
            Increments(KEYS.spend("d1"), 100, [("a:usd", 7), ("a:tokens", 0)]),
            Increments(KEYS.spend("m1"), 200, [("a:usd", 7)]),
        ]
        assert await counters.add(batch) == [12, 0, 7]  # (the first call loads the script)
        evalsha = await _commands(client, "evalsha")
        assert await counters.add(batch) == [19, 0, 14]
        assert await counters.add([]) == []
        assert await _commands(client, "evalsha") - evalsha == 1  # (the empty batch sent nothing)
        assert await client.hgetall(KEYS.spend("d1")) == {"a:usd": "19", "a:tokens": "0"}
        assert 90 < await client.ttl(KEYS.spend("d1")) <= 100
        assert 190 < await client.ttl(KEYS.spend("m1")) <= 200
    finally:
        await client.aclose()


async def test_demand_of_several_models_flushes_in_one_command_on_a_cluster(
    redis_cluster: LocalCluster,
) -> None:
    """The HASHes of two models and their hour marks are several keys of the pool's one slot."""
    client = redis_client(RedisConfig(url=redis_cluster.url, cluster=True))
    counts = DemandCounts(lambda: NOON)
    recorder = DemandRecorder(client, KEYS, 60.0, counts, ["o1", "o1-mini"], lambda: NOON)
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
