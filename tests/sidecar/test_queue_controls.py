"""Priority and deadline headers reach admission; a queued request past its deadline gets 429."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from o1emulator.embedded import EmulatorHandle
from tests.polling import until
from tests.sidecar.conftest import EmulatorFactory, SidecarFactory

USER = [{"role": "user", "content": "hello"}]
NO_CACHE = {"enabled": False}


async def test_priority_and_deadline_headers_shape_the_demand(make_sidecar: SidecarFactory) -> None:
    handle = await make_sidecar()
    seen = []
    limiter = handle.proxy.limiter
    original = limiter.acquire

    async def spy(demand, accounts):  # type: ignore[no-untyped-def]
        seen.append((demand, list(accounts)))
        return await original(demand, accounts)

    limiter.acquire = spy  # type: ignore[method-assign]
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    before = time.time()
    await client.chat.completions.create(
        model="o1",
        messages=USER,
        max_completion_tokens=300,
        extra_headers={"x-o1pool-priority": "high", "x-o1pool-deadline-ms": "1500"},
    )
    await client.chat.completions.create(model="o1", messages=[{"role": "user", "content": "other"}])
    (high, accounts), (default, _) = seen
    assert accounts == ["acct-a"]
    assert high.priority == 8 and default.priority == 5
    assert before + 1.4 < high.deadline < time.time() + 1.5
    assert default.deadline > time.time() + 100  # queue.default_deadline_ms = 120 s
    assert high.tokens == 300  # charge "max": the budget 300 is above the prompt estimate
    assert default.tokens == 4096  # tokens.default_max_tokens when the request sets no budget


async def test_deadline_passing_in_the_queue_is_429_with_retry_after(make_sidecar: SidecarFactory) -> None:
    handle = await make_sidecar(limits={"o1": {"rpm": 1, "tpm": 1_000_000}}, cache=NO_CACHE)
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    await client.chat.completions.create(model="o1", messages=USER)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as err:
        await client.chat.completions.create(
            model="o1", messages=USER, extra_headers={"x-o1pool-deadline-ms": "300"}
        )
    assert 0.25 < time.monotonic() - started < 5
    assert err.value.code == "queue_timeout"
    assert "Queued for" in err.value.message and "deadline (300 ms)" in err.value.message
    assert int(err.value.response.headers["retry-after"]) >= 1
    metrics = await _scrape(handle.metrics_url)
    assert 'o1_api_queue_rejections_total{reason="timeout"} 1.0' in metrics
    assert 'o1_api_requests_total{key="-",model="o1",status="429"} 1.0' in metrics


async def test_high_priority_overtakes_queued_low_priority(
    make_sidecar: SidecarFactory, make_emulator: EmulatorFactory
) -> None:
    upstream = await make_emulator(latency_scale=1.0, models={"o1": {"latency": {"ttft_ms": 400}}})
    handle = await make_sidecar(
        upstream=upstream, limits={"o1": {"rpm": 10_000, "tpm": 50_000_000, "concurrency": 1}}, cache=NO_CACHE
    )
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    done: list[str] = []

    async def call(name: str, priority: str) -> None:
        await client.chat.completions.create(
            model="o1",
            messages=[{"role": "user", "content": name}],
            extra_headers={"x-o1pool-priority": priority},
        )
        done.append(name)

    def waiting() -> int:
        return sum(handle.proxy.limiter.state().queue_length.values())

    first = asyncio.create_task(call("first", "low"))
    await until(
        lambda: upstream.stats()["accounts"]["acct-a"]["models"]["o1"]["in_flight"] == 1, "first call"
    )
    lows = [asyncio.create_task(call(f"low{i}", "low")) for i in range(3)]
    await until(lambda: waiting() == 3, "three lows queued")
    high = asyncio.create_task(call("high", "high"))
    await until(lambda: waiting() == 4, "the high queued")
    await asyncio.gather(first, *lows, high)
    assert done[:2] == ["first", "high"], done


async def _scrape(url: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


async def test_client_that_hangs_up_leaves_the_queue(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    handle = await make_sidecar(limits={"o1": {"rpm": 1, "tpm": 1_000_000}}, cache=NO_CACHE)
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    await client.chat.completions.create(model="o1", messages=USER)
    impatient = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        await impatient.chat.completions.create(model="o1", messages=USER)
    for _ in range(50):
        if sum(handle.proxy.limiter.state().queue_length.values()) == 0:
            break
        await asyncio.sleep(0.05)
    assert sum(handle.proxy.limiter.state().queue_length.values()) == 0
    assert emulator.stats()["accounts"]["acct-a"]["models"]["o1"]["admitted"] == 1


async def test_full_queue_is_429_at_once(make_sidecar: SidecarFactory) -> None:
    handle = await make_sidecar(
        limits={"o1": {"rpm": 1, "tpm": 1_000_000}}, cache=NO_CACHE, queue={"max_length": 1}
    )
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    await client.chat.completions.create(model="o1", messages=USER)
    waiting = asyncio.create_task(
        client.chat.completions.create(
            model="o1", messages=USER, extra_headers={"x-o1pool-deadline-ms": "2000"}
        )
    )
    for _ in range(40):
        if sum(handle.proxy.limiter.state().queue_length.values()):
            break
        await asyncio.sleep(0.025)
    with pytest.raises(openai.RateLimitError) as err:
        await client.chat.completions.create(model="o1", messages=USER)
    assert err.value.code == "queue_full" and "queue.max_length" in err.value.message
    assert err.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.RateLimitError):
        await waiting


async def test_request_no_account_can_ever_admit_is_400(make_sidecar: SidecarFactory) -> None:
    handle = await make_sidecar(
        limits={"o1": {"rpm": 100, "tpm": 1_000}, "o1-mini": {"rpm": 100, "tpm": 100_000}}
    )
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="o1", messages=USER, max_completion_tokens=5_000)
    assert err.value.code == "request_too_large" and "5000" in err.value.message


async def test_request_too_large_for_one_model_falls_back(make_sidecar: SidecarFactory) -> None:
    handle = await make_sidecar(
        limits={"o1": {"rpm": 100, "tpm": 1_000}, "gpt-4o": {"rpm": 100, "tpm": 100_000}},
        fallback={"chains": {"o1": ["gpt-4o"]}},
    )
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model="o1", messages=USER, max_completion_tokens=5_000
    )
    assert raw.headers["x-o1pool-model"] == "gpt-4o" and raw.headers["x-o1pool-degraded"] == "true"


async def test_a_request_missing_its_deadline_is_served_by_a_fallback_with_headroom(
    make_sidecar: SidecarFactory,
) -> None:
    handle = await make_sidecar(
        limits={"o1": {"rpm": 1, "tpm": 1_000_000}, "o1-mini": {"rpm": 600, "tpm": 1_000_000}},
        fallback={"chains": {"o1": ["o1-mini"]}},
        cache=NO_CACHE,
    )
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    await client.chat.completions.create(model="o1", messages=USER)  # o1's one request a minute
    started = time.monotonic()
    raw = await client.chat.completions.with_raw_response.create(
        model="o1", messages=USER, extra_headers={"x-o1pool-deadline-ms": "300"}
    )
    assert time.monotonic() - started < 5
    assert raw.headers["x-o1pool-model"] == "o1-mini" and raw.headers["x-o1pool-degraded"] == "true"
    assert int(raw.headers["x-o1pool-queue-wait-ms"]) >= 300  # it waited its deadline for o1 first
    assert raw.parse().model == "o1-mini"


async def test_spent_request_caps_are_insufficient_quota_then_the_fallback(
    make_sidecar: SidecarFactory,
) -> None:
    capped = {"rpm": 600, "tpm": 1_000_000, "daily_requests": 1}
    handle = await make_sidecar(limits={"o1": capped, "o1-mini": capped}, cache=NO_CACHE)
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    await client.chat.completions.create(model="o1", messages=USER)
    with pytest.raises(openai.RateLimitError) as err:
        await client.chat.completions.create(model="o1", messages=USER)
    assert err.value.code == "insufficient_quota" and err.value.type == "insufficient_quota"
    assert 0 < int(err.value.response.headers["retry-after"]) <= 86_400
    assert "daily_requests" in err.value.message
    scrape = await _scrape(handle.metrics_url)
    assert 'o1_api_quota_remaining{account="acct-a",model="o1",period="day"} 0.0' in scrape
    assert 'o1_api_effective_limit{account="acct-a",model="o1",type="requests"} 600.0' in scrape
    assert 'o1_api_queue_rejections_total{reason="quota"} 1.0' in scrape
    fallback = await make_sidecar(
        limits={"o1": capped, "o1-mini": capped}, cache=NO_CACHE, fallback={"chains": {"o1": ["o1-mini"]}}
    )
    client = openai.AsyncOpenAI(base_url=fallback.url, api_key="x", max_retries=0)
    await client.chat.completions.create(model="o1", messages=USER)
    raw = await client.chat.completions.with_raw_response.create(model="o1", messages=USER)
    assert raw.headers["x-o1pool-model"] == "o1-mini"  # o1's cap is spent: its fallback serves
