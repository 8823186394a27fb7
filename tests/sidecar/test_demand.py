"""Demand recording: every answered request counts once in the pool's per-minute demand HASHes in Redis,
batched (no round trip per request), kept through a Redis outage (demand.py)."""

from __future__ import annotations

import openai
import pytest
from redis.asyncio import Redis

from o1emulator.embedded import EmulatorHandle
from o1sidecar.demand import MAX_PENDING_MINUTES, RETENTION_DAYS, DemandCounts, DemandRecorder, fields_of
from o1sidecar.limits.keys import PoolKeys
from tests.conftest import RedisServer
from tests.polling import until
from tests.sidecar.conftest import SidecarFactory

NOON = 20_000 * 86_400 + 12 * 3600  # day 20000, 12:00 UTC
KEYS = PoolKeys("o1pool", "tests", "test")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_one_request_counts_per_minute_and_per_hour_and_priority() -> None:
    minute = NOON // 60 + 5  # 12:05
    assert fields_of(minute, 8, admitted=True, queued=True, refused=False, cached=False, tokens=120) == {
        "725:r": 1,
        "725:t": 120,
        "h12:8:r": 1,
        "h12:8:t": 120,
        "h12:8:a": 1,
        "h12:8:q": 1,
        "h12:8:at": 120,
    }
    refused = fields_of(minute, 2, admitted=False, queued=True, refused=True, cached=False, tokens=50)
    assert refused["h12:2:x"] == 1 and "h12:2:a" not in refused and "h12:2:at" not in refused


def test_counts_add_up_per_model_and_day_until_taken() -> None:
    clock = Clock(NOON)
    counts = DemandCounts(clock)
    for _ in range(3):
        counts.record("o1", 5, admitted=True, queued=False, refused=False, cached=False, tokens=10)
    counts.record("o1-mini", 5, admitted=False, queued=False, refused=False, cached=True, tokens=0)
    clock.t += 12 * 3600  # midnight: the next day's HASH
    counts.record("o1", 5, admitted=True, queued=False, refused=False, cached=False, tokens=10)
    taken = counts.take()
    assert taken[("o1", 20_000)]["720:r"] == 3 and taken[("o1", 20_000)]["h12:5:t"] == 30
    assert taken[("o1-mini", 20_000)]["h12:5:c"] == 1 and "720:t" not in taken[("o1-mini", 20_000)]
    assert taken[("o1", 20_001)]["0:r"] == 1
    assert counts.take() == {}


def test_upstream_calls_count_under_the_model_called() -> None:
    """A request for o1 that was refused twice (429) and answered by its fallback o1-mini."""
    counts = DemandCounts(Clock(NOON + 5 * 60))
    counts.record("o1", 5, admitted=True, queued=True, refused=False, cached=False, tokens=80)
    counts.called("o1", 2, 2)
    counts.called("o1-mini", 1, 0)
    taken = counts.take()
    o1, mini = taken[("o1", 20_000)], taken[("o1-mini", 20_000)]
    assert (o1["725:r"], o1["725:u"], o1["725:z"]) == (1, 2, 2)
    assert mini == {"725:u": 1}  # its calls; no demand (nobody asked for it)


def test_counts_given_back_join_the_next_flush_and_the_oldest_minutes_go_first() -> None:
    clock = Clock(NOON)
    counts = DemandCounts(clock)
    counts.record("o1", 5, admitted=True, queued=False, refused=False, cached=False, tokens=10)
    batch = counts.take()
    counts.record("o1", 5, admitted=True, queued=False, refused=False, cached=False, tokens=10)
    counts.give_back(batch)
    assert counts.take()[("o1", 20_000)]["720:r"] == 2
    for m in range(MAX_PENDING_MINUTES + 3):  # Redis away for longer than the counts are kept
        clock.t = NOON + 60 * m
        counts.record("o1", 5, admitted=True, queued=False, refused=False, cached=False, tokens=10)
        counts.called("o1", 2, 1)
    assert counts.dropped == 3
    kept = counts.take()
    minutes = [k for fields in kept.values() for k in fields if k.endswith(":r") and not k.startswith("h")]
    assert len(minutes) == MAX_PENDING_MINUTES
    assert not {"720:r", "720:t", "720:u", "720:z"} & set(kept[("o1", 20_000)])  # the whole minute went
    assert kept[("o1", 20_000)]["723:u"] == 2


async def test_a_flush_writes_one_hash_per_model_and_day_with_retention(redis_server: RedisServer) -> None:
    counts = DemandCounts(Clock(NOON))
    recorder = DemandRecorder(Redis.from_url(redis_server.url), KEYS, counts, ["o1", "o1-mini"], Clock(NOON))
    reader = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        counts.record("o1", 8, admitted=True, queued=True, refused=False, cached=False, tokens=100)
        await recorder.flush()
        counts.record("o1", 8, admitted=True, queued=False, refused=False, cached=False, tokens=100)
        await recorder.flush()
        stored = await reader.hgetall(KEYS.demand("o1", 20_000))
        assert stored == {
            "720:r": "2",
            "720:t": "200",
            "h12:8:r": "2",
            "h12:8:t": "200",
            "h12:8:a": "2",
            "h12:8:q": "1",
            "h12:8:at": "200",
            "h12:live": "1",
        }
        assert await reader.hgetall(KEYS.demand("o1-mini", 20_000)) == {"h12:live": "1"}  # no demand there
        ttl = await reader.ttl(KEYS.demand("o1", 20_000))
        assert RETENTION_DAYS * 86_400 - 5 < ttl <= RETENTION_DAYS * 86_400
    finally:
        await recorder.close()
        await reader.aclose()


async def test_counts_survive_redis_being_down(redis_server: RedisServer) -> None:
    counts = DemandCounts(Clock(NOON))
    client = Redis.from_url(redis_server.url, socket_timeout=1)
    recorder = DemandRecorder(client, KEYS, counts, ["o1"], Clock(NOON))
    reader = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        counts.record("o1", 5, admitted=True, queued=False, refused=False, cached=False, tokens=7)
        redis_server.stop()
        with pytest.raises(Exception):  # noqa: B017 (the mirror loop logs whatever the client raised)
            await recorder.flush()
        counts.record("o1", 5, admitted=True, queued=False, refused=False, cached=False, tokens=7)
        redis_server.start()
        await recorder.flush()
        assert await reader.hget(KEYS.demand("o1", 20_000), "720:r") == "2"
    finally:
        await recorder.close()
        await reader.aclose()


async def test_a_sidecar_records_what_its_clients_asked(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle, redis_server: RedisServer
) -> None:
    handle = await make_sidecar(redis={"url": redis_server.url, "heartbeat_interval_s": 0.1})
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    for priority, question in (("8", "How many are we?"), ("8", "How many are we?"), ("2", "And now?")):
        await client.chat.completions.create(
            model="o1",
            messages=[{"role": "user", "content": question}],
            extra_headers={"x-o1pool-priority": priority},
        )
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "?"}]
        )
    reader = Redis.from_url(redis_server.url, decode_responses=True)
    try:

        async def recorded() -> dict[str, int]:
            fields: dict[str, int] = {}
            for key in await reader.keys(f"{KEYS.tag}:demand:*"):
                for name, value in (await reader.hgetall(key)).items():
                    kind = name.split(":", 2)[-1] if name.startswith("h") else name.split(":")[1]
                    prio = name.split(":")[1] if name.startswith("h") else "-"
                    fields[f"{prio}:{kind}"] = fields.get(f"{prio}:{kind}", 0) + int(value)
            return fields

        async def three() -> bool:
            return (await recorded()).get("-:r") == 3

        await until(three, "three requests recorded")
        fields = await recorded()
        # the second priority-8 request was the first's question again: answered from the cache
        assert (fields["8:r"], fields["8:a"], fields["8:c"]) == (2, 1, 1)
        assert (fields["2:r"], fields["2:a"]) == (1, 1)
        assert fields["-:t"] > 0 and fields["8:at"] > 0
        assert fields["-:u"] == 2 and "-:z" not in fields  # two upstream calls, no 429
        keys = await reader.keys(f"{KEYS.tag}:demand:*")
        assert not [k for k in keys if ":demand:nope:" in k]  # a model the pool does not serve: nothing
        assert any(":demand:o1-mini:" in k for k in keys)  # served, not asked: an hour of no demand
    finally:
        await reader.aclose()
