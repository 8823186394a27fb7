"""A key the upstream refused rests for the whole pool: shared through Redis (quarantine.py), lifted
by the first success, not applied to another value of the key (a rotation)."""

from __future__ import annotations

import asyncio

import openai
import pytest
import redis.asyncio as aioredis

from o1common.keyprint import key_fingerprint
from o1sidecar.config import Account
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.quarantine import SharedQuarantine, read_refused
from o1sidecar.upstream import AccountRoute, UpstreamKey
from tests.conftest import RedisServer
from tests.polling import until
from tests.sidecar.conftest import EmulatorHandle, SidecarFactory

pytestmark = pytest.mark.redis
KEYS = PoolKeys("t", "tests", "pool")


def route(value: str = "sk-one") -> AccountRoute:
    account = Account.model_validate(
        {
            "name": "acct-a",
            "base_url": "http://127.0.0.1:1",
            "keys": [{"name": "a1", "env": "X"}],
            "tier": 1,
        }
    )
    return AccountRoute(account, [UpstreamKey("acct-a", "a1", value)])


async def test_a_key_refused_through_one_sidecar_is_not_tried_by_another(
    make_sidecar: SidecarFactory,
    emulator: EmulatorHandle,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("O1T_A_1", "sk-revoked-key-0000000000000000")
    redis = {"url": redis_server.url, "heartbeat_interval_s": 0.1}
    first, second = [await make_sidecar(redis=redis, cache={"enabled": False}) for _ in range(2)]
    client = openai.AsyncOpenAI(base_url=first.url, api_key="x", max_retries=0)
    for i in range(2):  # round robin: one of these goes to a1 and is refused, then served by a2
        await client.chat.completions.create(model="o1", messages=[{"role": "user", "content": f"q{i}"}])
    assert emulator.stats()["totals"]["401"] == 1

    async def second_knows() -> bool:
        return second.proxy.routes["acct-a"].in_quarantine() == ["a1"]

    await until(second_knows, "the other sidecar rests a1", timeout_s=5)
    other = openai.AsyncOpenAI(base_url=second.url, api_key="x", max_retries=0)
    for i in range(6):
        await other.chat.completions.create(model="o1", messages=[{"role": "user", "content": f"r{i}"}])
    assert emulator.stats()["totals"]["401"] == 1  # the second sidecar never tried the refused key
    await client.close()
    await other.close()
    async with aioredis.from_url(redis_server.url, decode_responses=True) as reader:
        entries = read_refused(await reader.hgetall(PoolKeys("o1pool", "tests", "test").refused_keys()))
    assert [(e.label, e.refusals) for e in entries] == [("acct-a/a1", 1)]
    assert "0000" not in repr(entries) and entries[0].fingerprint == key_fingerprint(
        "acct-a/a1", "sk-revoked-key-0000000000000000"
    )


async def test_refusals_double_the_rest_echoes_do_not_and_a_success_lifts_it_for_all(
    redis_server: RedisServer,
) -> None:
    a, b = route(), route()
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    one = SharedQuarantine(client, KEYS, {"acct-a": a}, first_rest_s=0.2, longest_rest_s=10)
    two = SharedQuarantine(
        aioredis.from_url(redis_server.url, decode_responses=True),
        KEYS,
        {"acct-a": b},
        first_rest_s=0.2,
        longest_rest_s=10,
    )
    key = a.keys[0]
    held = await one.refused(a, key)
    assert (held.refusals, held.rest_s) == (1, 0.2)
    echo = await two.refused(b, b.keys[0])  # refused while resting: a call sent before it was known
    assert echo.refusals == 1
    await two.sync_alone()
    assert b.in_quarantine() == ["a1"]

    async def rest_over() -> bool:
        return a.in_quarantine() == []

    await until(rest_over, "the first rest is over", timeout_s=5)
    again = await one.refused(a, key)  # refused on its one try: the rest doubles
    assert (again.refusals, again.rest_s) == (2, 0.4)

    assert a.accepted(key)
    await one.accepted(key)
    await two.sync_alone()
    assert b.in_quarantine() == []
    assert await client.hgetall(KEYS.refused_keys()) == {}
    await one.close()
    await two.close()


async def test_another_value_of_the_key_is_not_rested(redis_server: RedisServer) -> None:
    """After a rotation the new value is not the one the upstream refused."""
    old, new = route("sk-old"), route("sk-new")
    one = SharedQuarantine(aioredis.from_url(redis_server.url, decode_responses=True), KEYS, {"acct-a": old})
    two = SharedQuarantine(aioredis.from_url(redis_server.url, decode_responses=True), KEYS, {"acct-a": new})
    await one.refused(old, old.keys[0])
    await two.sync_alone()
    assert new.in_quarantine() == []
    held = await two.refused(new, new.keys[0])  # the new value refused too: its own first refusal
    assert held.refusals == 1
    await one.close()
    await two.close()


async def test_without_redis_a_refusal_rests_the_key_here(redis_server: RedisServer) -> None:
    r = route()
    redis_server.stop()
    client = aioredis.from_url(redis_server.url, decode_responses=True, socket_connect_timeout=0.2)
    shared = SharedQuarantine(client, KEYS, {"acct-a": r})
    held = await shared.refused(r, r.keys[0])
    assert held.refusals == 1 and r.in_quarantine() == ["a1"]
    await shared.close()
    await asyncio.sleep(0)
