"""What the operator reads from a pool's Redis: where (pure), and live sidecars and refused keys."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from datetime import UTC, datetime

import redis.asyncio as aioredis

from o1operator.forecasting import publish, read_demand
from o1operator.prediction import Assessment
from o1operator.render import render
from o1operator.sidecars import (
    USAGE_MINUTES,
    Usage,
    get_sidecar_probe,
    get_spend,
    get_usage,
    observe,
    observe_forever,
    probe_client,
)
from o1sidecar.config import Account
from o1sidecar.demand import DemandCounts, DemandRecorder
from o1sidecar.limits.connect import redis_client
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.outage_sync import SharedOutages
from o1sidecar.outages import ModelOutages, ModelState
from o1sidecar.quarantine import SharedQuarantine
from o1sidecar.spend import ClientSpend, SpendLedger, SpendRecorder, Spent
from o1sidecar.upstream import AccountRoute, UpstreamKey
from tests.conftest import LocalCluster, RedisServer
from tests.operator.conftest import FAKE_REDIS_PASSWORD, REPO, fake_secrets, load_example
from tests.polling import until

EXAMPLES = REPO / "examples"


def test_probe_uses_the_sidecars_heartbeat_key_and_password() -> None:
    pool = load_example(EXAMPLES / "o1pool-multi-account.yaml")
    probe = get_sidecar_probe(render(pool, fake_secrets(pool["spec"])))
    assert probe is not None
    assert probe.key == "{research:default/research}:sidecars"
    assert probe.url == "redis://redis.example:6379/0"
    assert probe.password == FAKE_REDIS_PASSWORD
    assert probe.stale_after_s == 6.0
    assert FAKE_REDIS_PASSWORD not in repr(probe)


def test_no_probe_without_redis_or_config() -> None:
    pool = load_example(EXAMPLES / "o1pool-basic.yaml")
    assert get_sidecar_probe(render(pool, {})) is None
    del pool["spec"]["redis"]
    assert get_sidecar_probe(render(pool, fake_secrets(pool["spec"]))) is None
    pool = load_example(EXAMPLES / "o1pool-basic.yaml")
    probe = get_sidecar_probe(render(pool, fake_secrets(pool["spec"])))
    assert probe is not None and probe.password is None and probe.key == "{o1pool:default/basic}:sidecars"


async def test_observe_counts_sidecars_and_drops_refusals_of_values_no_longer_held(
    redis_server: RedisServer,
) -> None:
    """A refusal recorded by a sidecar (its own code) is reported while the pool holds that value of
    the key; after a rotation, or for a key gone from the spec, the entry is deleted."""
    pool = load_example(EXAMPLES / "o1pool-basic.yaml")
    pool["spec"]["redis"] = {"url": redis_server.url, "keyPrefix": "t"}
    secrets = fake_secrets(pool["spec"])
    probe = get_sidecar_probe(render(pool, secrets))
    assert probe is not None
    value = base64.b64decode(secrets["openai-keys"]["primary"]).decode()
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    keys = PoolKeys("t", "default", "basic")
    route = AccountRoute(
        Account.model_validate(
            {
                "name": "main",
                "base_url": "http://127.0.0.1:1",
                "tier": 5,
                "keys": [{"name": "primary", "env": "X"}],
            }
        ),
        [UpstreamKey("main", "primary", value)],
    )
    shared = SharedQuarantine(client, keys, {"main": route})
    await shared.refused(route, route.keys[0])
    await client.hset(keys.refused_keys(), mapping={"gone/key": "abcd1234;1;1;2", "main/odd": "junk"})
    seconds, _ = await client.time()
    await client.zadd(keys.sidecars(), {"a": seconds, "b": seconds, "dead": seconds - 60})

    outages = ModelOutages(3, 30.0)
    sync = SharedOutages(aioredis.from_url(redis_server.url, decode_responses=True), keys, outages, ["o1"])
    now = outages.now()
    await sync.publish("o1", ModelState("down", since=now - 5, probe_at=now + 25), now)
    await sync.publish("o1-mini", ModelState("ramp", since=now - 181), now)  # its ramp is over: up

    seen = await observe(probe)
    [(model, state)] = seen.outages
    assert model == "o1" and state.phase == "down" and 24 < state.probe_at - seconds < 27
    assert seen.live == 2
    assert [(k.label, k.refusals) for k in seen.refused] == [("main/primary", 1)]
    assert list(await client.hgetall(keys.refused_keys())) == ["main/primary"]

    rotated = {**secrets, "openai-keys": {"primary": base64.b64encode(b"sk-rotated").decode()}}
    after = get_sidecar_probe(render(pool, rotated))
    assert after is not None
    assert (await observe(after)).refused == ()
    assert await client.hgetall(keys.refused_keys()) == {}
    await shared.close()
    await sync.close()


def test_usage_is_the_busiest_models_share_of_its_configured_rpm() -> None:
    rpm = [("o1", 100), ("o1-mini", 1000)]
    usage = get_usage(rpm, {"o1": 5 * 42.0, "o1-mini": 5 * 300.0}, {"o1": 3.0})
    assert usage == Usage(calls_per_minute=342.0, rpm_use=0.42, upstream_429s=3)
    assert usage.status() == {"rpmUse": "42%", "callsPerMinute": 342.0, "upstream429s": 3, "minutes": 5}
    assert get_usage(rpm, {}, {}) == Usage(0.0, 0.0, 0)
    assert get_usage([], {"o1": 10.0}, {}).rpm_use == 0.0  # no model served: nothing to use


async def test_observe_reads_the_calls_and_429s_the_sidecars_recorded_in_the_last_minutes(
    redis_server: RedisServer,
) -> None:
    """Demand written by the sidecars' own recorder (demand.py): the minute under way and minutes older
    than the window do not count."""
    pool = load_example(EXAMPLES / "o1pool-basic.yaml")
    pool["spec"]["redis"] = {"url": redis_server.url, "keyPrefix": "u"}
    probe = get_sidecar_probe(render(pool, fake_secrets(pool["spec"])))
    assert probe is not None
    [(model, rpm)] = [(m, r) for m, r in probe.rpm if m == "o1"]
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    seconds, _ = await client.time()
    if seconds % 60 > 45:  # the window must not move between writing and reading
        await asyncio.sleep(60 - seconds % 60)
        seconds, _ = await client.time()
    minute = seconds // 60
    counts = DemandCounts()
    for arrived_minute, calls, rate_limited in (
        (minute, 50, 0),  # under way: not complete
        (minute - 1, 4, 1),
        (minute - USAGE_MINUTES, 6, 2),
        (minute - USAGE_MINUTES - 1, 70, 9),  # before the window
    ):
        counts.called(model, calls, rate_limited, arrived=arrived_minute * 60 + 1)
    recorder = DemandRecorder(client, PoolKeys("u", "default", "basic"), counts, [model])
    await recorder.flush()
    usage = (await observe(probe)).usage
    assert usage is not None
    assert usage.upstream_429s == 3
    assert usage.calls_per_minute == 10 / USAGE_MINUTES
    assert usage.rpm_use == (10 / USAGE_MINUTES) / rpm
    await client.aclose()


def test_spend_status_rounds_dollars_to_4_decimals() -> None:
    spend = ClientSpend(today=Spent(0.123456, 1200), month=Spent(12.000061, 98765))
    assert get_spend([("web", spend), ("idle", ClientSpend(Spent(), Spent()))]) == [
        {"client": "web", "todayUsd": 0.1235, "monthUsd": 12.0001, "todayTokens": 1200, "monthTokens": 98765},
        {"client": "idle", "todayUsd": 0.0, "monthUsd": 0.0, "todayTokens": 0, "monthTokens": 0},
    ]


async def test_observe_reads_what_the_clients_spent_today_and_this_month_as_the_sidecars_recorded_it(
    redis_server: RedisServer,
) -> None:
    """Spend written by the sidecars' own ledger and recorder (spend.py), on Redis time: another day of
    the month counts for the month only, another month for neither, a name that is no client not at all."""
    pool = load_example(EXAMPLES / "o1pool-basic.yaml")
    pool["spec"] |= {
        "redis": {"url": redis_server.url, "keyPrefix": "s"},
        "clients": [
            {"name": "web", "match": {}, "budgets": {"dailyUsd": 10}},
            {"name": "batch", "match": {}},
            {"name": "idle", "match": {}},
        ],
    }
    probe = get_sidecar_probe(render(pool, fake_secrets(pool["spec"])))
    assert probe is not None and probe.clients == ("web", "batch", "idle")
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    seconds, _ = await client.time()
    if seconds % 86_400 > 86_400 - 30:  # the day must not turn between writing and reading
        await asyncio.sleep(86_400 - seconds % 86_400 + 1)
        seconds, _ = await client.time()
    keys = PoolKeys("s", "default", "basic")
    names = ["web", "batch", "other"]

    async def spend_at(at: float, entries: list[tuple[str, float, int]]) -> None:
        ledger = SpendLedger(clock=lambda: at)
        for name, usd, tokens in entries:
            ledger.add(name, usd, tokens)
        await SpendRecorder(client, keys, ledger, names, clock=lambda: at).flush()

    await spend_at(
        seconds, [("web", 0.02466, 1052), ("web", 1.5, 300), ("batch", 0.00001, 7), ("other", 9, 9)]
    )
    if datetime.fromtimestamp(seconds, UTC).day > 1:
        await spend_at(seconds - 86_400, [("web", 3.0, 1000)])  # yesterday, this month
        web_month = Spent(4.52466, 2352)
    else:  # (yesterday was last month)
        web_month = Spent(1.52466, 1352)
    await spend_at(seconds - 40 * 86_400, [("web", 100.0, 100_000), ("batch", 5.0, 5)])  # another month

    seen = await observe(probe)
    assert seen.spend is not None
    spend = dict(seen.spend)
    assert list(spend) == ["web", "batch", "idle"]
    assert spend["web"].today == Spent(1.52466, 1352)
    assert spend["web"].month == web_month
    assert spend["batch"] == ClientSpend(Spent(0.00001, 7), Spent(0.00001, 7))
    assert spend["idle"] == ClientSpend(Spent(), Spent())
    assert get_spend(seen.spend)[0] == {
        "client": "web",
        "todayUsd": 1.5247,
        "monthUsd": round(web_month.usd, 4),
        "todayTokens": 1352,
        "monthTokens": web_month.tokens,
    }
    del pool["spec"]["clients"]
    without = get_sidecar_probe(render(pool, fake_secrets(pool["spec"])))
    assert without is not None and (await observe(without)).spend is None  # no clients: nothing to say
    await client.aclose()


async def test_the_loop_patches_spend_when_it_changes_and_again_after_each_reconciliation(
    redis_server: RedisServer,
) -> None:
    """A reconciliation may remove status.spend (status.py) and makes a new probe: the loop's next read
    patches again even though what it read is unchanged."""
    pool = load_example(EXAMPLES / "o1pool-basic.yaml")
    pool["spec"] |= {
        "redis": {"url": redis_server.url, "keyPrefix": "l"},
        "clients": [{"name": "web", "match": {}}],
    }
    secrets = fake_secrets(pool["spec"])
    probe = get_sidecar_probe(render(pool, secrets))
    assert probe is not None
    patches: list[dict[str, object]] = []
    spent: list[dict[str, ClientSpend]] = []

    class FakeKube:
        def patch_status(self, namespace: str, name: str, status: dict[str, object]) -> None:
            patches.append(status)

    probes = {("default", "basic"): probe}
    loop = asyncio.create_task(
        observe_forever(
            FakeKube(),  # type: ignore[arg-type]
            probes,
            {},
            0.01,
            lambda namespace, name: None,
            on_spend=lambda namespace, name, spend: spent.append(dict(spend)),
        )
    )
    try:
        await until(lambda: len(spent) >= 3, "three reads")
        assert len(patches) == 1 and patches[0]["spend"] == [
            {"client": "web", "todayUsd": 0.0, "monthUsd": 0.0, "todayTokens": 0, "monthTokens": 0}
        ]
        client = aioredis.from_url(redis_server.url, decode_responses=True)
        ledger = SpendLedger()
        ledger.add("web", 0.5, 100)
        await SpendRecorder(client, PoolKeys("l", "default", "basic"), ledger, ["web"]).flush()
        await client.aclose()
        await until(lambda: len(patches) == 2, "a patch of the new spend")
        assert patches[1]["spend"] == [
            {"client": "web", "todayUsd": 0.5, "monthUsd": 0.5, "todayTokens": 100, "monthTokens": 100}
        ]
        assert spent[-1]["web"].today == Spent(0.5, 100)
        probes[("default", "basic")] = get_sidecar_probe(render(pool, secrets))  # type: ignore[assignment]
        await until(lambda: len(patches) == 3, "a patch after the reconciliation")
        assert patches[2] == patches[1]
        reads = len(spent)
        await until(lambda: len(spent) >= reads + 3, "three more reads")
        assert len(patches) == 3
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


async def test_observe_and_forecasting_read_a_pool_on_a_redis_cluster(redis_cluster: LocalCluster) -> None:
    """``spec.redis.cluster``: the sidecars' own code writes the pool's state through cluster clients,
    and the operator reads it back through one (the probe's), every read on the pool's primary."""
    pool = load_example(EXAMPLES / "o1pool-basic.yaml")
    pool["spec"] |= {
        "redis": {"url": redis_cluster.url, "cluster": True, "keyPrefix": "c"},
        "clients": [{"name": "web", "match": {}}],
    }
    secrets = fake_secrets(pool["spec"])
    rendering = render(pool, secrets)
    assert rendering.config is not None and rendering.config.redis.cluster
    probe = get_sidecar_probe(rendering)
    assert probe is not None and probe.cluster
    redis = rendering.config.redis
    keys = PoolKeys("c", "default", "basic")
    value = base64.b64decode(secrets["openai-keys"]["primary"]).decode()
    account = {
        "name": "main",
        "base_url": "http://127.0.0.1:1",
        "tier": 5,
        "keys": [{"name": "primary", "env": "X"}],
    }
    route = AccountRoute(Account.model_validate(account), [UpstreamKey("main", "primary", value)])
    owner = redis_cluster.primary_of_key(keys.tag).client()
    seconds, _ = owner.time()
    ledger = SpendLedger(clock=lambda: seconds)
    counts = DemandCounts(clock=lambda: seconds)
    outages = ModelOutages(3, 30.0)
    shared = SharedQuarantine(redis_client(redis), keys, {"main": route})
    sync = SharedOutages(redis_client(redis), keys, outages, ["o1"])
    recorder = SpendRecorder(redis_client(redis), keys, ledger, ["web"], clock=lambda: seconds)
    demand = DemandRecorder(redis_client(redis), keys, counts, ["o1"], clock=lambda: seconds)
    client = probe_client(probe)
    try:
        await shared.refused(route, route.keys[0])
        now = outages.now()
        await sync.publish("o1", ModelState("down", since=now - 5, probe_at=now + 25), now)
        # (live however slow this test runs: observe counts heartbeats newer than a few seconds ago)
        owner.zadd(keys.sidecars(), {"a": seconds + 3600, "b": seconds + 3600, "dead": seconds - 60})
        ledger.add("web", 1.5, 300)
        await recorder.flush()
        counts.record("o1", 5, admitted=True, queued=False, refused=False, cached=False, tokens=100)
        await demand.flush()

        seen = await observe(probe)
        assert seen.live == 2
        assert [(k.label, k.refusals) for k in seen.refused] == [("main/primary", 1)]
        assert [(model, state.phase) for model, state in seen.outages] == [("o1", "down")]
        assert seen.spend is not None and dict(seen.spend)["web"].today == Spent(1.5, 300)

        hours, _ = await read_demand(client, probe, seconds + 3600)
        assert "o1" in hours
        await publish(client, probe, Assessment(True, "Predicted", "", {"load": "high"}))
        assert json.loads(owner.get(keys.prediction()) or "{}") == {"load": "high"}
    finally:
        await client.aclose()
        for closing in (shared, sync, recorder, demand):
            await closing.close()
