"""A Redis-configured pool: the shared limiter and the L2 cache shared by two sidecars; a Redis that
goes away makes the cache miss, never fail a request."""

from __future__ import annotations

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis

from o1sidecar.app import SidecarHandle
from tests.conftest import RedisServer
from tests.sidecar.conftest import EmulatorFactory, SidecarFactory

pytestmark = pytest.mark.redis
USER = [{"role": "user", "content": "What does a shared limiter share?"}]


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


async def test_two_sidecars_share_limits_and_the_l2_cache(
    make_sidecar: SidecarFactory, redis_server: RedisServer
) -> None:
    redis = {"url": redis_server.url, "heartbeat_interval_s": 0.2}
    one = await make_sidecar(redis=redis)
    two = await make_sidecar(redis=redis)
    first = await openai.AsyncOpenAI(base_url=one.url, api_key="x").chat.completions.with_raw_response.create(
        model="o1", messages=USER, seed=1
    )
    await one.proxy.cache.flush()
    second = await openai.AsyncOpenAI(
        base_url=two.url, api_key="x"
    ).chat.completions.with_raw_response.create(model="o1", messages=USER, seed=1)
    assert first.headers["x-o1pool-cache"] == "miss"
    assert second.headers["x-o1pool-cache"] == "l2"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    metrics = await scrape(one.metrics_url)
    assert 'o1_api_limiter_mode{mode="shared"} 1.0' in metrics


async def test_two_pools_on_one_redis_never_see_each_others_cache(
    make_sidecar: SidecarFactory, make_emulator: EmulatorFactory, redis_server: RedisServer
) -> None:
    """Same prefix, same Redis, same request: each pool's answer comes from its own upstream, and an
    answer stored by one pool (here from an upstream that answers differently) never reaches the other."""
    redis = {"url": redis_server.url}
    upstream_a, upstream_b = await make_emulator(seed=1), await make_emulator(seed=2)
    team_a = await make_sidecar(
        upstream=upstream_a, redis=redis, pool={"name": "shared", "namespace": "team-a"}
    )
    team_b = await make_sidecar(
        upstream=upstream_b, redis=redis, pool={"name": "shared", "namespace": "team-b"}
    )

    async def ask(handle: SidecarHandle) -> tuple[str, str | None]:
        client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(model="o1", messages=USER, seed=1)
        await handle.proxy.cache.flush()
        return raw.headers["x-o1pool-cache"], raw.parse().choices[0].message.content

    a_first, b_first = await ask(team_a), await ask(team_b)
    assert a_first[0] == "miss" and b_first[0] == "miss"
    assert upstream_a.stats()["totals"]["admitted"] == 1
    assert upstream_b.stats()["totals"]["admitted"] == 1
    assert a_first[1] != b_first[1]  # two upstreams, two answers: a leak would show
    another_a = await make_sidecar(
        upstream=upstream_a, redis=redis, pool={"name": "shared", "namespace": "team-a"}
    )
    assert await ask(another_a) == ("l2", a_first[1])  # team-a's entry, not team-b's newer one
    assert upstream_a.stats()["totals"]["admitted"] == 1
    client = aioredis.from_url(redis_server.url)
    keys = sorted(k.decode() for k in await client.keys("*cache*"))
    await client.aclose()
    assert len(keys) == 2
    assert keys[0].startswith("{o1pool:team-a/shared}:cache:")
    assert keys[1].startswith("{o1pool:team-b/shared}:cache:")


async def test_redis_going_away_is_a_cache_miss_not_an_error(
    make_sidecar: SidecarFactory, redis_server: RedisServer
) -> None:
    handle = await make_sidecar(
        redis={"url": redis_server.url, "op_timeout_ms": 100, "connect_timeout_ms": 100}
    )
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    await client.chat.completions.create(model="o1", messages=USER)
    redis_server.stop()
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="o1", messages=[{"role": "user", "content": "while Redis is down"}]
        )
        assert raw.parse().choices
        assert raw.headers["x-o1pool-cache"] == "miss"
        again = await client.chat.completions.with_raw_response.create(model="o1", messages=USER)
        assert again.headers["x-o1pool-cache"] == "l1"
    finally:
        redis_server.start()
