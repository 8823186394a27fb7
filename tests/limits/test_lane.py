"""The multiplexed lane (limits/lane.py) behind ``LanedRedis`` (connect.py), against a real redis-server:
it answers as redis-py's own client does, matches each reply to its own command however many overlap,
rides one connection, and fails as redis-py does (a lost server, one that stops answering, a caller that
gives up) without handing anyone another command's reply."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

from o1pool.rediscluster import LocalCluster
from o1sidecar.config import RedisConfig
from o1sidecar.limits.connect import LanedRedis, QueuedCluster, redis_client, register_script
from tests.conftest import RedisServer

pytestmark = pytest.mark.redis

ECHO = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}"


def laned(url: str, **settings: Any) -> LanedRedis:
    client = redis_client(RedisConfig(url=url, **settings))
    assert isinstance(client, LanedRedis)
    return client


@contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    """The server takes no turn (SIGSTOP) until the block ends: connected, but not answering."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


async def connections(plain: aioredis.Redis) -> set[str]:
    """The ids of the server's open connections (ids are never reused: a new one is a new connection,
    whatever connections of earlier tests close meanwhile)."""
    return {str(c["id"]) for c in await plain.client_list()}


@pytest.mark.parametrize("decode", [True, False])
async def test_the_lane_answers_every_command_it_carries_as_redis_py_does(
    redis_server: RedisServer, decode: bool
) -> None:
    lane = redis_client(RedisConfig(url=redis_server.url), decode_responses=decode)
    assert isinstance(lane, LanedRedis)
    plain = aioredis.Redis.from_url(redis_server.url, decode_responses=decode)
    try:
        answers: dict[str, list[Any]] = {}
        for name, client in (("lane", lane), ("redis-py", plain)):
            key = f"{{t}}:{name}"
            sha = await plain.script_load(ECHO)
            async with client.pipeline(transaction=False) as pipe:
                pipe.hset(key + ":h", mapping={"a": "1", "b": "2"})
                pipe.hmget(key + ":h", ["a", "b", "c"])
                pipe.zadd(key + ":z", {"m": 1.5})
                pipe.get(key + ":missing")
                in_pipeline = await pipe.execute()
            answers[name] = [
                await client.set(key, "v", ex=100),
                await client.set(key, "w", nx=True),
                await client.get(key),
                await client.pttl(key) > 99_000,
                await client.exists(key, key + ":none"),
                await client.evalsha(sha, 1, "k", "x", 41),  # type: ignore[misc]
                await client.publish("{t}:nobody", "hello"),
                await client.delete(key, key + ":h"),
                in_pipeline,
            ]
        assert answers["lane"] == answers["redis-py"]
        assert answers["lane"][0] is True and answers["lane"][5][2] == 42
    finally:
        await lane.aclose()
        await plain.aclose()


async def overlapping_calls_over_one_connection(url: str) -> None:
    plain = aioredis.Redis.from_url(url)
    client = laned(url)
    try:
        before = await connections(plain)
        script = register_script(client, ECHO)
        await script(keys=["warm"], args=["x", 0])  # (loaded: the calls below are all EVALSHA)
        replies = await asyncio.gather(*(script(keys=[f"k{i}"], args=[f"a{i}", i]) for i in range(2000)))
        assert replies == [[f"k{i}", f"a{i}", i + 1] for i in range(2000)]
        assert len(await connections(plain) - before) == 1  # (the lane; redis-py's pool took none)
    finally:
        await client.aclose()
        await plain.aclose()


async def test_overlapping_calls_each_get_their_own_reply_over_one_connection(
    redis_server: RedisServer,
) -> None:
    await overlapping_calls_over_one_connection(redis_server.url)


def test_the_lane_runs_on_uvloop_the_sidecars_event_loop(redis_server: RedisServer) -> None:
    uvloop.run(overlapping_calls_over_one_connection(redis_server.url))


async def test_a_script_flushed_from_the_server_is_loaded_again(redis_server: RedisServer) -> None:
    client = laned(redis_server.url)
    try:
        script = register_script(client, ECHO)
        assert await script(keys=["k"], args=["a", 1]) == ["k", "a", 2]
        redis_server.flush()  # (SCRIPT FLUSH)
        with pytest.raises(NoScriptError):
            await client.evalsha(script.sha, 1, "k", "a", 1)  # type: ignore[misc]
        assert await script(keys=["k"], args=["b", 2]) == ["k", "b", 3]
        with pytest.raises(ResponseError, match="ERR"):
            await client.evalsha(script.sha, 1, "k", "a", "not a number")  # type: ignore[misc]
        assert await client.get("k") is None  # (an error reply leaves the lane in step)
    finally:
        await client.aclose()


async def test_calls_that_meet_noscript_together_share_one_reload(redis_server: RedisServer) -> None:
    """A flushed (restarted, promoted) server answers NOSCRIPT to every call in flight: the script is
    loaded again once, not once per call."""
    client = laned(redis_server.url)
    plain = aioredis.Redis.from_url(redis_server.url, decode_responses=True)

    async def loads() -> int:
        stats = await plain.info("commandstats")
        return int((stats.get("cmdstat_script|load") or stats.get("cmdstat_script") or {}).get("calls", 0))

    try:
        script = register_script(client, ECHO)
        before = await loads()
        replies = await asyncio.gather(*(script(keys=[f"k{i}"], args=[f"a{i}", i]) for i in range(300)))
        assert replies == [[f"k{i}", f"a{i}", i + 1] for i in range(300)]
        assert await loads() - before == 1
    finally:
        await client.aclose()
        await plain.aclose()


async def test_a_server_that_stops_answering_times_every_call_out_and_the_next_call_reconnects(
    redis_server: RedisServer,
) -> None:
    client = laned(redis_server.url, op_timeout_ms=200)
    try:
        await client.set("k", "before")
        with stopped(redis_server):
            calls = [asyncio.ensure_future(client.get("k")) for _ in range(5)]
            done = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(e, TimeoutError) for e in done), done
        assert "200 ms (redis.op_timeout_ms)" in str(done[0])
        assert await client.set("k", "after") is True
        assert await client.get("k") == "after"
    finally:
        await client.aclose()


async def test_a_busy_event_loop_before_the_write_is_not_taken_for_a_slow_redis(
    redis_server: RedisServer,
) -> None:
    """A command's time to be answered starts when it is written, not when it was issued: the sidecar's
    own event loop, busy for longer than the op timeout before the write, times nothing out."""
    client = laned(redis_server.url, op_timeout_ms=200)
    try:
        await client.set("k", "v")
        call = asyncio.ensure_future(client.get("k"))
        await asyncio.sleep(0)  # (the call is issued; its write is due in the loop's next turn)
        time.sleep(0.4)  # noqa: ASYNC251  (on purpose: the loop busy elsewhere)
        assert await call == "v"
    finally:
        await client.aclose()


async def test_a_caller_that_gives_up_never_leaves_its_reply_to_the_next(redis_server: RedisServer) -> None:
    client = laned(redis_server.url, op_timeout_ms=5000)
    try:
        await client.set("mine", "the first call's")
        await client.set("yours", "the second call's")
        with stopped(redis_server):
            first = asyncio.ensure_future(client.get("mine"))
            await asyncio.sleep(0.05)
            first.cancel()
            second = asyncio.ensure_future(client.get("yours"))
            await asyncio.sleep(0.05)
        assert await second == "the second call's"
        assert first.cancelled()
        assert await client.get("mine") == "the first call's"
    finally:
        await client.aclose()


async def test_a_lost_server_fails_calls_with_a_connection_error_then_serves_again_after_restart(
    redis_server: RedisServer,
) -> None:
    client = laned(redis_server.url, connect_timeout_ms=300)
    try:
        await client.set("k", "v")
        redis_server.stop()
        with pytest.raises(ConnectionError, match="Redis"):
            await client.get("k")
        with pytest.raises(
            ConnectionError, match=f"could not connect to Redis at 127.0.0.1:{redis_server.port}"
        ):
            await client.get("k")
        redis_server.start()
        assert await client.set("k", "back") is True
        assert await client.get("k") == "back"
    finally:
        await client.aclose()


async def test_the_lane_logs_in_and_selects_the_database_of_the_url(redis_server: RedisServer) -> None:
    port = redis_server.port
    plain = aioredis.Redis.from_url(redis_server.url)
    await plain.config_set("requirepass", "s3cret")
    await plain.aclose()
    admin = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{port}/3", decode_responses=True)
    try:
        refused = laned(f"redis://127.0.0.1:{port}/0")
        with pytest.raises(ConnectionError):  # (redis-py's AuthenticationError is one)
            await refused.get("k")
        await refused.aclose()
        wrong = laned(f"redis://:n0t-it@127.0.0.1:{port}/0")
        with pytest.raises(ConnectionError) as refused_again:
            await wrong.get("k")
        assert "n0t-it" not in str(refused_again.value)
        await wrong.aclose()
        client = laned(f"redis://:s3cret@127.0.0.1:{port}/3")
        assert "s3cret" not in repr(client.lane.endpoint)
        assert await client.set("k", "in db 3") is True
        await client.aclose()
        assert await admin.get("k") == "in db 3"
    finally:
        await admin.config_set("requirepass", "")
        await admin.aclose()


async def test_on_a_cluster_each_primarys_commands_ride_one_lane_and_a_redirect_goes_redis_pys_way(
    redis_cluster: LocalCluster,
) -> None:
    """Overlapping script calls of two pools (hash tags on different primaries) each get their own reply,
    over one connection to each primary; a command the cluster redirects (MOVED: here the client's slot
    table is made stale) is sent again the way redis-py routes it, and answered."""
    client = redis_client(RedisConfig(url=redis_cluster.url, cluster=True))
    assert isinstance(client, QueuedCluster)
    tags = ["{a}", "{b}"]
    primaries = [redis_cluster.primary_of_key(tag) for tag in tags]
    assert primaries[0] is not primaries[1]

    admins = [p.client() for p in primaries]  # (one connection each, open before and after)

    def connected(admin: redis.Redis) -> set[str]:
        return {str(c["id"]) for c in admin.client_list()}

    try:
        script = register_script(client, ECHO)
        await script(keys=[f"{tags[0]}:warm"], args=["x", 0])  # (the slots, and SCRIPT LOAD on {a}'s primary)
        await script(keys=[f"{tags[1]}:warm"], args=["x", 0])
        before = [connected(a) for a in admins]
        replies = await asyncio.gather(
            *(script(keys=[f"{tags[i % 2]}:k{i}"], args=[f"a{i}", i]) for i in range(1000))
        )
        assert replies == [[f"{tags[i % 2]}:k{i}", f"a{i}", i + 1] for i in range(1000)]
        new = [connected(a) - then for a, then in zip(admins, before, strict=True)]
        assert new == [set(), set()]  # (the lanes were open; redis-py's path took no connection)

        # A stale slot table: {b}'s slot said to be {a}'s primary's. The lane there answers MOVED.
        slot = client.keyslot(f"{tags[1]}:moved")
        good = client.nodes_manager.slots_cache[slot]
        wrong = client.get_node_from_key(f"{tags[0]}:x")
        client.nodes_manager.slots_cache[slot] = [wrong]
        assert await client.set(f"{tags[1]}:moved", "there") is True
        client.nodes_manager.slots_cache[slot] = good
        assert primaries[1].client().get(f"{tags[1]}:moved") == "there"
    finally:
        await client.aclose()
