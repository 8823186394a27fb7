"""What the operator reads from a pool's Redis: where (pure), and live sidecars and refused keys."""

from __future__ import annotations

import asyncio
import base64

import redis.asyncio as aioredis

from o1operator.render import render
from o1operator.sidecars import USAGE_MINUTES, Usage, get_sidecar_probe, get_usage, observe
from o1sidecar.config import Account
from o1sidecar.demand import DemandCounts, DemandRecorder
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.outage_sync import SharedOutages
from o1sidecar.outages import ModelOutages, ModelState
from o1sidecar.quarantine import SharedQuarantine
from o1sidecar.upstream import AccountRoute, UpstreamKey
from tests.conftest import RedisServer
from tests.operator.conftest import FAKE_REDIS_PASSWORD, REPO, fake_secrets, load_example

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
    shared = SharedQuarantine(client, keys, {"main": route}, 60)
    await shared.refused(route, route.keys[0])
    await client.hset(keys.refused_keys(), mapping={"gone/key": "abcd1234;1;1;2", "main/odd": "junk"})
    seconds, _ = await client.time()
    await client.zadd(keys.sidecars(), {"a": seconds, "b": seconds, "dead": seconds - 60})

    outages = ModelOutages(3, 30.0)
    sync = SharedOutages(
        aioredis.from_url(redis_server.url, decode_responses=True), keys, outages, ["o1"], 60
    )
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
    recorder = DemandRecorder(client, PoolKeys("u", "default", "basic"), 60, counts, [model])
    await recorder.flush()
    usage = (await observe(probe)).usage
    assert usage is not None
    assert usage.upstream_429s == 3
    assert usage.calls_per_minute == 10 / USAGE_MINUTES
    assert usage.rpm_use == (10 / USAGE_MINUTES) / rpm
    await client.aclose()
