"""End to end: the real ``openai`` SDK (async and sync) -> sidecar -> the emulator."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest

from o1emulator.embedded import EmulatorHandle
from o1sidecar.app import SidecarHandle, start_sidecar
from o1sidecar.config import SidecarConfig
from tests.sidecar.conftest import EmulatorFactory, SidecarFactory, sidecar_config_dict

USER = [{"role": "user", "content": "Explain token buckets in one line."}]


def emulator_admitted(emulator: EmulatorHandle, model: str) -> int:
    return sum(a["models"][model]["admitted"] for a in emulator.stats()["accounts"].values())


async def test_chat_completion_async(sidecar: SidecarHandle, emulator: EmulatorHandle) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="anything")
    raw = await client.chat.completions.with_raw_response.create(model="o1", messages=USER)
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens > 0
    assert raw.headers["x-o1pool-account"] == "acct-a"
    assert raw.headers["x-o1pool-model"] == "o1"
    assert raw.headers["x-o1pool-degraded"] == "false"
    assert raw.headers["x-o1pool-cache"] == "miss"
    assert int(raw.headers["x-o1pool-queue-wait-ms"]) >= 0
    assert emulator_admitted(emulator, "o1") == 1


async def test_keys_round_robin(sidecar: SidecarHandle, emulator: EmulatorHandle) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="anything")
    for i in range(4):
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"q{i}"}])
    keys = emulator.stats()["accounts"]["acct-a"]["keys"]
    assert keys["a1"]["admitted"] == 2 and keys["a2"]["admitted"] == 2


async def test_chat_completion_sync_client(sidecar: SidecarHandle) -> None:
    def call() -> str:
        with openai.OpenAI(base_url=sidecar.url, api_key="sk-dummy") as client:
            completion = client.chat.completions.create(model="o1", messages=USER)
            chunks = list(client.chat.completions.create(model="o1", messages=USER, stream=True, seed=1))
            assert any(c.choices and c.choices[0].delta.content for c in chunks)
            return completion.choices[0].message.content or ""

    assert await asyncio.to_thread(call)


async def test_stream_strips_usage_the_client_did_not_ask_for(
    sidecar: SidecarHandle, emulator: EmulatorHandle
) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="anything")
    stream = await client.chat.completions.create(model="o1", messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks, "no chunks"
    assert all(chunk.choices for chunk in chunks), "the usage-only chunk reached the client"
    assert all(chunk.usage is None for chunk in chunks)
    assert all("usage" not in chunk.model_dump(exclude_unset=True) for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    assert emulator_admitted(emulator, "o1") == 1


async def test_stream_keeps_usage_when_asked(sidecar: SidecarHandle) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="anything")
    stream = await client.chat.completions.create(
        model="o1", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


async def test_stream_reports_usage_to_the_limiter(make_sidecar: SidecarFactory) -> None:
    handle = await make_sidecar(cache={"enabled": False})
    released = []
    limiter = handle.proxy.limiter
    original = limiter.release

    async def spy(grant, report):  # type: ignore[no-untyped-def]
        released.append(report)
        await original(grant, report)

    limiter.release = spy  # type: ignore[method-assign]
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="anything")
    stream = await client.chat.completions.create(model="o1", messages=USER, stream=True)
    async for _ in stream:
        pass
    assert len(released) == 1
    assert released[0].status == 200 and released[0].usage_tokens and not released[0].failed


async def test_responses_api(sidecar: SidecarHandle) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="anything")
    response = await client.responses.create(model="o1", input="Say hello.")
    assert response.output_text
    assert response.usage is not None and response.usage.total_tokens > 0
    stream = await client.responses.create(model="o1", input="Say hello again.", stream=True)
    types = [event.type async for event in stream]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert "response.output_text.delta" in types


async def test_embeddings(sidecar: SidecarHandle) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="anything")
    result = await client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert [len(d.embedding) for d in result.data] == [64, 64]


async def test_models_lists_the_pool(sidecar: SidecarHandle) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="anything")
    ids = [model.id async for model in client.models.list()]
    assert ids == sorted(["o1", "o1-mini", "gpt-4o", "text-embedding-3-small"])
    assert (await client.models.retrieve("o1")).id == "o1"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("davinci")


async def test_unknown_model_is_404_naming_the_pool_models(sidecar: SidecarHandle) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="anything", max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        await client.chat.completions.create(model="gpt-2", messages=USER)
    assert "gpt-4o" in err.value.message and "not served by this pool" in err.value.message
    async with aiohttp.ClientSession() as session, session.get(sidecar.metrics_url) as response:
        metrics = await response.text()
    assert "gpt-2" not in metrics
    assert 'o1_api_requests_total{key="-",model="-",status="404"} 1.0' in metrics


async def test_cache_hit_on_repeat_and_stream_replay(
    sidecar: SidecarHandle, emulator: EmulatorHandle
) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="anything")
    first = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER, seed=3)
    second = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER, seed=3)
    assert first.headers["x-o1pool-cache"] == "miss"
    assert second.headers["x-o1pool-cache"] == "l1"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=USER, seed=3, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.parse().choices[0].message.content
    assert chunks[-1].usage is not None
    other = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER, seed=4)
    assert other.headers["x-o1pool-cache"] == "miss"
    assert emulator_admitted(emulator, "gpt-4o") == 2


async def test_azure_account_uses_deployment_urls_and_api_key(
    make_emulator: EmulatorFactory, key_env: None
) -> None:
    upstream = await make_emulator(deployments={"reasoner-prod": "o1"})
    config = sidecar_config_dict(upstream)
    config["accounts"][0] |= {
        "kind": "azure",
        "base_url": upstream.url + "/openai",
        "api_version": "2024-10-21",
        "deployments": {"o1": "reasoner-prod"},
    }
    azure = await start_sidecar(SidecarConfig.from_dict(config))
    try:
        client = openai.AsyncOpenAI(base_url=azure.url, api_key="x", max_retries=0)
        completion = await client.chat.completions.create(model="o1", messages=USER)
        assert completion.choices[0].message.content
        assert upstream.stats()["accounts"]["acct-a"]["models"]["o1"]["admitted"] == 1
    finally:
        await azure.close()


async def test_stream_is_passed_through_as_it_comes(
    make_sidecar: SidecarFactory, make_emulator: EmulatorFactory
) -> None:
    upstream = await make_emulator(
        latency_scale=1.0,
        stream_chunk_tokens=1,
        models={"gpt-4o": {"output_tokens": [30, 30], "latency": {"ttft_ms": 0, "tokens_per_s": 30}}},
    )
    handle = await make_sidecar(upstream=upstream)
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x")
    started = time.monotonic()
    arrivals = []
    stream = await client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 20
    assert arrivals[-1] > 0.6  # the upstream takes about a second to write 30 tokens
    assert arrivals[0] < arrivals[-1] / 2, "the first chunk waited for the whole answer"


async def test_health_and_readiness(sidecar: SidecarHandle) -> None:
    root = sidecar.url.removesuffix("/v1")
    async with aiohttp.ClientSession() as session:
        async with session.get(root + "/healthz") as r:
            assert r.status == 200
        async with session.get(root + "/readyz") as r:
            assert r.status == 200 and (await r.json())["limiter"] == "local"


async def test_client_leaving_mid_stream_is_not_an_upstream_failure(
    make_sidecar: SidecarFactory, make_emulator: EmulatorFactory
) -> None:
    upstream = await make_emulator(
        latency_scale=1.0,
        stream_chunk_tokens=1,
        models={"gpt-4o": {"output_tokens": [40, 40], "latency": {"ttft_ms": 0, "tokens_per_s": 40}}},
    )
    handle = await make_sidecar(upstream=upstream)
    reports = []
    limiter = handle.proxy.limiter
    original = limiter.release

    async def spy(grant, report):  # type: ignore[no-untyped-def]
        reports.append(report)
        await original(grant, report)

    limiter.release = spy  # type: ignore[method-assign]
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x")
    stream = await client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    async for _chunk in stream:
        break
    await stream.close()
    for _ in range(100):
        if reports:
            break
        await asyncio.sleep(0.02)
    assert len(reports) == 1 and reports[0].status == 499 and not reports[0].failed
    async with aiohttp.ClientSession() as session, session.get(handle.metrics_url) as response:
        assert "stream_cut" not in await response.text()


async def test_streamed_answers_are_cached_too(sidecar: SidecarHandle, emulator: EmulatorHandle) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="anything")
    question = [{"role": "user", "content": "Stream me something cacheable."}]

    async def streamed() -> tuple[str, str]:
        async with client.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=question, stream=True
        ) as response:
            text = ""
            async for chunk in await response.parse():
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
            return text, response.headers["x-o1pool-cache"]

    first_text, first_cache = await streamed()
    second_text, second_cache = await streamed()
    plain = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=question)
    assert (first_cache, second_cache, plain.headers["x-o1pool-cache"]) == ("miss", "l1", "l1")
    assert first_text and second_text == first_text == plain.parse().choices[0].message.content
    assert plain.parse().usage is not None and plain.parse().usage.total_tokens > 0
    assert emulator_admitted(emulator, "gpt-4o") == 1


def test_collector_gives_up_on_tool_calls() -> None:
    from o1sidecar.streaming import ChatStreamCollector

    collector = ChatStreamCollector()
    collector.add(
        b'data: {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "a"}}]}\n\n'
    )
    collector.add(
        b'data: {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}, '
        b'"finish_reason": "tool_calls"}]}\n\n'
    )
    assert collector.completion(None) is None


async def test_responses_stream_replayed_from_cache(sidecar: SidecarHandle, emulator: EmulatorHandle) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="anything")
    first = await client.responses.create(model="o1", input="Cache this answer.", instructions="Be brief.")
    async with client.responses.with_streaming_response.create(
        model="o1", input="Cache this answer.", instructions="Be brief.", stream=True
    ) as raw:
        assert raw.headers["x-o1pool-cache"] == "l1"
        events = [event async for event in await raw.parse()]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == first.output_text
    assert events[-1].response.usage.total_tokens == first.usage.total_tokens
    assert emulator_admitted(emulator, "o1") == 1


async def test_streamed_responses_are_cached_too(sidecar: SidecarHandle, emulator: EmulatorHandle) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="anything")
    stream = await client.responses.create(model="o1", input="Stream, then cache.", stream=True)
    streamed = [event async for event in stream]
    raw = await client.responses.with_raw_response.create(model="o1", input="Stream, then cache.")
    assert raw.headers["x-o1pool-cache"] == "l1"
    assert raw.parse().output_text == streamed[-1].response.output_text
    assert emulator_admitted(emulator, "o1") == 1
