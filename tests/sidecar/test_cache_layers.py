"""The response cache's two layers on a real redis-server: L2 fills L1, entries expire, and a Redis
that fails is a miss (and is left alone for the breaker's pause)."""

from __future__ import annotations

import redis.asyncio as aioredis

from o1sidecar.cache import Hit, ResponseCache
from o1sidecar.config import CachePolicy, PoolRef, RedisConfig
from o1sidecar.limits.keys import PoolKeys
from tests.conftest import RedisServer

POOL = PoolRef(name="pool", namespace="ns")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_l1_only_without_redis() -> None:
    cache = ResponseCache(CachePolicy(l1_entries=2), RedisConfig(), POOL)
    assert not cache.has_l2
    for key in ("a", "b", "c"):
        await cache.put(key, key.encode())
    assert await cache.get("a") is None  # evicted, least recently used
    assert await cache.get("c") == Hit(b"c", "l1")


async def test_l2_is_shared_and_fills_l1(redis_server: RedisServer) -> None:
    config = RedisConfig(url=redis_server.url, key_prefix="t")
    writer = ResponseCache(CachePolicy(l2_ttl_s=60), config, POOL)
    reader = ResponseCache(CachePolicy(l2_ttl_s=60), config, POOL)
    try:
        writer.store("k", b"answer")
        await writer.flush()
        assert await reader.get("k") == Hit(b"answer", "l2")
        assert await reader.get("k") == Hit(b"answer", "l1")
        client = aioredis.from_url(redis_server.url)
        ttl = await client.ttl(PoolKeys("t", "ns", "pool").cached("k"))
        await client.aclose()
        assert 0 < ttl <= 60
    finally:
        await writer.close()
        await reader.close()


async def test_failing_redis_is_a_miss_and_pauses(redis_server: RedisServer) -> None:
    clock = Clock()
    config = RedisConfig(url=redis_server.url, op_timeout_ms=100, connect_timeout_ms=100, breaker_reset_s=2.0)
    cache = ResponseCache(CachePolicy(l1_entries=0), config, POOL, clock=clock)
    try:
        await cache.put("k", b"v")
        assert await cache.get("k") == Hit(b"v", "l2")
        redis_server.stop()
        assert await cache.get("k") is None
        assert cache.breaker.state == "open"  # no more waiting on a dead Redis
        redis_server.start()
        assert await cache.get("k") is None  # still paused
        clock.now += 2.5
        await cache.put("k", b"v2")
        assert await cache.get("k") == Hit(b"v2", "l2")
    finally:
        await cache.close()


async def test_entries_expire_in_l1_as_in_l2(redis_server: RedisServer) -> None:
    clock = Clock()
    config = RedisConfig(url=redis_server.url, key_prefix="t")
    cache = ResponseCache(CachePolicy(l2_ttl_s=5), config, POOL, clock=clock)
    alone = ResponseCache(CachePolicy(l2_ttl_s=5), RedisConfig(), POOL, clock=clock)  # L1 only
    try:
        await cache.put("k", b"answer")
        await alone.put("k", b"answer")
        clock.now += 4.9
        assert await cache.get("k") == Hit(b"answer", "l1") and await alone.get("k") == Hit(b"answer", "l1")
        clock.now += 0.2  # past the TTL: not from memory (L2 keeps it on Redis's own clock)
        assert await alone.get("k") is None
        assert await cache.get("k") == Hit(b"answer", "l2")
        # Filled from L2, the L1 copy expires when the L2 entry does (about 5 s from its store).
        assert await cache.get("k") == Hit(b"answer", "l1")
        clock.now += 5.1
        assert await cache.get("k") == Hit(b"answer", "l2")  # (L2's own clock has not moved on)
    finally:
        await cache.close()
        await alone.close()


async def test_an_l1_entry_lives_as_long_as_the_ttl_it_was_stored_with() -> None:
    clock = Clock()
    ttl = [60]
    cache = ResponseCache(
        CachePolicy(l2_ttl_s=60, ttl_follows_load=True), RedisConfig(), POOL, clock=clock,
        suggested_ttl_s=lambda: ttl[0],
    )  # fmt: skip
    await cache.put("short", b"1")
    ttl[0] = 600
    await cache.put("long", b"2")
    clock.now += 61
    assert await cache.get("short") is None and await cache.get("long") == Hit(b"2", "l1")
    clock.now += 540
    assert await cache.get("long") is None
