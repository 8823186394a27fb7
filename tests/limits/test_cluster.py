"""The shared limiter on a real Redis Cluster (``redis.cluster: true``): sidecars that count each other
and keep priority across them, every key and script of the pool on the one primary of its slot, and a
primary that dies under load (local limits while the cluster fails over, shared again on the promoted
replica)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
import yaml
from pydantic import ValidationError
from redis.asyncio.cluster import RedisCluster

from o1sidecar.config import RedisConfig, SidecarConfig
from o1sidecar.limits import Demand, UpstreamReport, build_limiter
from o1sidecar.limits.connect import QueuedCluster, redis_client
from o1sidecar.limits.shared import SharedLimiter
from tests.conftest import LocalCluster, start_cluster
from tests.polling import until

from .helpers import config

pytestmark = pytest.mark.redis

MODEL = "o1-mini"
FAST_REDIS = {
    "cluster": True,
    "heartbeat_interval_s": 0.2,
    "breaker_failures": 2,
    "breaker_reset_s": 0.5,
    "op_timeout_ms": 200,
}


def demand(priority: int = 5, deadline_s: float = 30.0, tokens: int = 100) -> Demand:
    return Demand(MODEL, tokens, priority, time.time() + deadline_s)


Start = Callable[..., Any]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """``await start(cluster, limits, n=2)``: ``n`` SharedLimiters of one pool on ``cluster``."""
    started: list[SharedLimiter] = []

    async def make(cluster: LocalCluster, limits: dict[str, Any], n: int = 2) -> list[SharedLimiter]:
        cfg: SidecarConfig = config({"a": limits}, redis_url=cluster.url, redis=dict(FAST_REDIS))
        out = []
        for i in range(n):
            limiter = build_limiter(cfg)
            assert isinstance(limiter, SharedLimiter)
            limiter.sidecar_id = f"sidecar-{i}"
            await limiter.start()
            out.append(limiter)
        started.extend(out)
        return out

    yield make
    for limiter in started:
        await asyncio.wait_for(limiter.close(), 10)


def test_cluster_config_names_one_node_over_tcp() -> None:
    assert RedisConfig(url="redis://10.0.0.1:6379", cluster=True).cluster
    assert RedisConfig(url="rediss://redis:6380/0", cluster=True).cluster
    for url, why in (
        ("unix:///run/redis.sock", "unix sockets"),
        ("redis://redis:6379/2", "database 0 only"),
        ("redis://redis:6379?db=1", "database 0 only"),
        (None, "needs redis.url"),
    ):
        with pytest.raises(ValidationError, match=why):
            RedisConfig(url=url, cluster=True)
    # Off, it is not written out: a config without it renders as it did before it existed.
    plain = config({"a": {"rpm": 1, "tpm": 1}}, redis_url="redis://r:6379/0")
    assert "cluster" not in plain.to_yaml()
    on = config({"a": {"rpm": 1, "tpm": 1}}, redis_url="redis://r:6379/0", redis={"cluster": True})
    assert "cluster: true" in on.to_yaml()
    assert SidecarConfig.from_dict(yaml.safe_load(on.to_yaml())).redis.cluster


def test_the_client_of_a_cluster_is_a_cluster_client() -> None:
    client = redis_client(RedisConfig(url="redis://127.0.0.1:1", cluster=True, op_timeout_ms=300))
    assert isinstance(client, QueuedCluster) and isinstance(client, RedisCluster)
    assert client.op_timeout_s == 0.3 and client.get_connection_kwargs()["decode_responses"] is True
    assert client.retry.get_retries() == 0  # fail fast: the breaker decides


async def test_the_clients_of_a_process_read_the_command_table_once(redis_cluster: LocalCluster) -> None:
    """Each part of a sidecar has its own client; redis-py's table of where commands have their keys
    (COMMAND, 0.1 s of CPU to parse) is read by the first of them and taken by the others."""
    cfg = RedisConfig(url=redis_cluster.url, cluster=True)
    text, raw = redis_client(cfg), redis_client(cfg, decode_responses=False)  # (the limiter's, the cache's)
    try:
        await text.set("{t}:k", "v")
        assert await raw.get("{t}:k") == b"v"
        assert isinstance(text, QueuedCluster) and isinstance(raw, QueuedCluster)
        assert raw.commands_parser.commands is text.commands_parser.commands
    finally:
        await text.aclose()
        await raw.aclose()


async def test_two_limiters_count_each_other_and_keep_priority_on_a_cluster(
    start: Start, redis_cluster: LocalCluster
) -> None:
    s1, s2 = await start(redis_cluster, {"rpm": 10_000, "tpm": 10_000_000, "concurrency": 1})
    await until(lambda: s1.state().live_sidecars == s2.state().live_sidecars == 2, "both heartbeats seen")
    assert s1.state().mode == s2.state().mode == "shared"

    blocker = await s1.acquire(demand(), ["a"])
    order: list[str] = []

    async def one(limiter: SharedLimiter, label: str, priority: int) -> None:
        grant = await limiter.acquire(demand(priority), ["a"])
        order.append(label)
        await asyncio.sleep(0.02)
        await limiter.release(grant, UpstreamReport(status=200))

    tasks = [asyncio.create_task(one(s1, "low", 1)) for _ in range(3)]
    await until(lambda: s1.state().queue_length == {1: 3}, "the lows queued first, in sidecar 1")
    tasks += [asyncio.create_task(one(s2, "high", 9)) for _ in range(3)]
    await until(lambda: s2.state().queue_length == {9: 3}, "the highs queued in sidecar 2")
    await s1.release(blocker, None)
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert order == ["high"] * 3 + ["low"] * 3  # one queue for the pool, across sidecars
    assert s1.state().mode == s2.state().mode == "shared"

    # Every key of the pool, and its scripts, on the primary that serves the pool's slot; none elsewhere.
    owner = redis_cluster.primary_of_key(s1.keys.tag)
    keys = owner.client().keys("*")
    assert keys and all(k.startswith(s1.keys.tag) for k in keys)
    assert {k.split(":", 2)[2].split(":")[0] for k in keys} >= {"acct", "win", "sidecars"}
    channel = s1.keys.wake_channel()
    await until(
        lambda: asyncio.to_thread(lambda: owner.client().pubsub_numsub(channel) == [(channel, 2)]),
        "both wake-up listeners subscribed there",
    )
    sha = s1.redis_backend.scripts.admit.sha
    for node in redis_cluster.nodes:
        assert node.client().dbsize() == (len(keys) if node is owner else 0)
        assert node.client().script_exists(sha) == [node is owner]


async def test_a_release_wakes_waiters_of_another_limiter_through_cluster_pubsub(
    start: Start, redis_cluster: LocalCluster
) -> None:
    s1, s2 = await start(redis_cluster, {"rpm": 10_000, "tpm": 10_000_000, "concurrency": 1})
    pubsub = s1.client.pubsub(ignore_subscribe_messages=True)  # as the limiters' wake-up listener does
    await pubsub.subscribe(s1.keys.wake_channel_of(s2.wake_tag))  # (the waiter's sidecar's own channel)
    held = await s1.acquire(demand(), ["a"])
    waiter = asyncio.create_task(s2.acquire(demand(), ["a"]))
    await until(lambda: s2.state().queue_length == {5: 1}, "a waiter in sidecar 2")
    await s1.release(held, None)
    messages = []

    async def published() -> bool:
        message = await pubsub.get_message(timeout=0.1)
        if message is not None:
            messages.append(message["data"])
        return bool(messages)

    await until(published, "a wake-up published for the model", 2.0)
    assert messages[0].startswith(MODEL)  # (the model, and what else the scripts say of it)
    await asyncio.wait_for(waiter, 5)
    await pubsub.aclose()


async def test_the_pools_primary_dies_under_load_and_its_replica_takes_over(start: Start) -> None:
    """Three primaries with a replica each; the primary of the pool's slot is killed while two limiters
    admit. They limit locally while the cluster fails over, and share again on the promoted replica."""
    cluster = await asyncio.to_thread(start_cluster, 3, 1)
    try:
        s1, s2 = await start(cluster, {"rpm": 600, "tpm": 10_000_000})  # 10 a second for the pool
        await until(lambda: s1.state().live_sidecars == s2.state().live_sidecars == 2, "both heartbeats")
        admitted: list[str] = []  # the mode each grant was made in
        stop = asyncio.Event()

        async def worker(limiter: SharedLimiter) -> None:
            while not stop.is_set():
                grant = await limiter.acquire(demand(deadline_s=60), ["a"])
                admitted.append(limiter.state().mode)
                await limiter.release(grant, UpstreamReport(status=200))

        workers = [asyncio.create_task(worker(s)) for s in (s1, s2) for _ in range(4)]
        await until(lambda: admitted.count("shared") >= 5, "admissions through the cluster")

        owner = cluster.primary_of_key(s1.keys.tag)
        [replica] = cluster.replicas_of(owner)
        cluster.kill(owner)
        await until(lambda: s1.state().mode == s2.state().mode == "local", "the switch to local limits")
        local_from = len(admitted)
        await until(lambda: admitted[local_from:].count("local") >= 3, "admissions on local limits", 10)

        def promoted() -> bool:
            try:
                return cluster.primary_of_key(s1.keys.tag) is replica
            except redis.RedisError:
                return False

        await until(lambda: asyncio.to_thread(promoted), "the replica promoted", 30)
        await until(lambda: s1.state().mode == s2.state().mode == "shared", "shared limits again", 30)
        shared_from = len(admitted)
        await until(lambda: admitted[shared_from:].count("shared") >= 5, "admissions on the new primary")
        await until(lambda: s1.state().live_sidecars == s2.state().live_sidecars == 2, "both heartbeats")
        channel = s1.keys.wake_channel()
        new = replica.client()
        await until(
            lambda: asyncio.to_thread(lambda: new.pubsub_numsub(channel) == [(channel, 2)]),
            "both wake-up listeners subscribed on the new primary",
        )
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), 20)  # (no worker failed)

        assert s1.failover.switches >= 2 and s2.failover.switches >= 2  # to local and back
        assert new.zcard(s1.keys.sidecars()) == 2
        assert new.zcard(s1.keys.window("a", MODEL)) >= 5  # admissions counted on the new primary
        assert new.script_exists(s1.redis_backend.scripts.admit.sha) == [True]
    finally:
        await asyncio.to_thread(cluster.close)
