"""Sidecars of a pool whose Redis is a real Redis Cluster (``redis.cluster: true``): shared limits, the
L2 cache, coalescing and the pool's shared state all on the one primary that serves the pool's slot."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import openai
import pytest

from o1pool.rediscluster import Tls
from o1sidecar.coalescing import Lead
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.limits.shared import SharedLimiter
from tests.conftest import LocalCluster, start_cluster
from tests.kube.pki import generate_pki
from tests.polling import until
from tests.sidecar.conftest import SidecarFactory

pytestmark = pytest.mark.redis
USER = [{"role": "user", "content": "Where does a pool live in a Redis Cluster?"}]
KEYS = PoolKeys("o1pool", "tests", "test")  # the sidecar fixture's pool
PASSWORD = "p@ss:w/rd"
PATIENT = {"op_timeout_ms": 2000, "connect_timeout_ms": 2000, "breaker_reset_s": 0.5}


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


async def test_two_sidecars_share_limits_and_the_l2_cache_on_a_cluster(
    make_sidecar: SidecarFactory, redis_cluster: LocalCluster
) -> None:
    # (A generous op timeout: on two busy cores a 250 ms one sends a sidecar to local limits now and
    # then, which is not what this test is about; test_cluster.py kills a primary for that.)
    redis = {"url": redis_cluster.url, "cluster": True, "heartbeat_interval_s": 0.2} | PATIENT
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
    for handle in (one, two):
        limiter = handle.proxy.limiter
        assert isinstance(limiter, SharedLimiter)
        await until(lambda s=limiter: s.state().mode == "shared", "shared limits")  # (local a while if slow)
        assert 'o1_api_limiter_mode{mode="shared"} 1.0' in await scrape(handle.metrics_url)

    # The pool's shared state reads and writes on the cluster (each raises if it cannot).
    assert one.proxy.sync is not None  # refused keys, outages, demand, prediction: one command
    await one.proxy.sync.tick()
    lead = await one.proxy.coalescer.join("a-cache-key", time.time() + 5)
    assert isinstance(lead, Lead) and lead.remote  # it took the pool's in-flight key
    lead.done()

    owner = redis_cluster.primary_of_key(KEYS.tag)
    stored = owner.client().keys("*")
    kinds = {k.split(":", 2)[2].split(":")[0] for k in stored}
    assert kinds >= {"acct", "win", "sidecars", "cache", "demand"}
    assert all(k.startswith(KEYS.tag) for k in stored)
    assert all(n.client().dbsize() == 0 for n in redis_cluster.nodes if n is not owner)


async def test_a_cluster_over_tls_with_a_password(
    make_sidecar: SidecarFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rediss://`` to one node, ``tls_ca_file`` and a password: the same settings reach every node."""
    pki = generate_pki(tmp_path / "pki")
    serving, node = pki.apiserver_serving, pki.admin_client  # (serving: IP SAN 127.0.0.1)
    tls = Tls(serving.cert, serving.key, node.cert, node.key, pki.ca.cert)
    cluster = await asyncio.to_thread(start_cluster, 3, 0, tls=tls, password=PASSWORD)
    try:
        monkeypatch.setenv("O1T_REDIS_PASSWORD", PASSWORD)
        redis = {"url": cluster.url, "cluster": True, "tls_ca_file": str(pki.ca.cert)} | PATIENT
        one = await make_sidecar(redis=redis | {"password_env": "O1T_REDIS_PASSWORD"})
        client = openai.AsyncOpenAI(base_url=one.url, api_key="x", max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(model="o1", messages=USER)
        assert raw.parse().choices and raw.headers["x-o1pool-cache"] == "miss"
        await one.proxy.cache.flush()
        limiter = one.proxy.limiter
        assert isinstance(limiter, SharedLimiter)
        await until(lambda: limiter.state().mode == "shared", "shared limits")
        stored = cluster.primary_of_key(KEYS.tag).client().keys("*")
        assert {k.split(":", 2)[2].split(":")[0] for k in stored} >= {"acct", "sidecars", "cache"}

        # Without the password, or trusting another CA, the sidecar cannot use it: local limits.
        other = generate_pki(tmp_path / "other")
        for wrong in ({"tls_ca_file": str(other.ca.cert)}, {}):
            refused = await make_sidecar(redis=redis | wrong)
            refused_limiter = refused.proxy.limiter
            assert isinstance(refused_limiter, SharedLimiter) and refused_limiter.state().mode == "local"
    finally:
        await asyncio.to_thread(cluster.close)
