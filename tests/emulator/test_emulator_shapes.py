"""Bodies and stream events parse with the ``openai`` SDK's own types; identical requests, identical bytes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai.types import CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from o1emulator import EmulatorHandle, start_emulator

KEY_A = "sk-test-account-a-1"
AUTH = {"Authorization": f"Bearer {KEY_A}"}
EVENTS = TypeAdapter(ResponseStreamEvent)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(url, json=body, headers=AUTH) as r:
        return r.status, await r.json()


async def post_sse(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[str]:
    async with session.post(url, json=body, headers=AUTH) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        text = (await r.read()).decode()
    return [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]


async def test_chat_completion_shape(emulator: EmulatorHandle, session: aiohttp.ClientSession) -> None:
    body = {"model": "o1", "messages": [{"role": "user", "content": "hello"}], "max_completion_tokens": 500}
    status, data = await post_json(session, emulator.base_url + "/chat/completions", body)
    assert status == 200
    completion = ChatCompletion.model_validate(data)
    assert completion.object == "chat.completion" and completion.model == "o1"
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert reasoning is not None and 32 <= reasoning <= 64
    visible = len(completion.choices[0].message.content.split())  # type: ignore[union-attr]
    assert usage.completion_tokens == visible + reasoning
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_budget_cuts_the_answer(emulator: EmulatorHandle, session: aiohttp.ClientSession) -> None:
    body = {"model": "o1", "messages": [{"role": "user", "content": "hello"}], "max_completion_tokens": 40}
    status, data = await post_json(session, emulator.base_url + "/chat/completions", body)
    assert status == 200
    completion = ChatCompletion.model_validate(data)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 40


@pytest.mark.parametrize("include_usage", [True, False])
async def test_chat_stream_shape(
    emulator: EmulatorHandle, session: aiohttp.ClientSession, include_usage: bool
) -> None:
    body = {
        "model": "o1",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "stream_options": {"include_usage": include_usage},
    }
    lines = await post_sse(session, emulator.base_url + "/chat/completions", body)
    assert lines[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(line)) for line in lines[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens_details.reasoning_tokens  # type: ignore[union-attr]
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert all(c.usage is None and c.choices for c in chunks)
        assert all("usage" not in json.loads(line) for line in lines[:-1])


async def test_responses_shape_and_events(emulator: EmulatorHandle, session: aiohttp.ClientSession) -> None:
    body = {"model": "o1", "input": "hello", "instructions": "be brief", "max_output_tokens": 500}
    status, data = await post_json(session, emulator.base_url + "/responses", body)
    assert status == 200
    response = Response.model_validate(data)
    assert response.status == "completed" and response.output_text
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens >= 32

    lines = await post_sse(session, emulator.base_url + "/responses", {**body, "stream": True})
    events = [EVENTS.validate_python(json.loads(line)) for line in lines]
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert deltas == response.output_text
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == response.output_text and final.usage == response.usage


async def test_embeddings_and_models_shapes(emulator: EmulatorHandle, session: aiohttp.ClientSession) -> None:
    body = {"model": "text-embedding-3-small", "input": ["alpha", "beta"], "dimensions": 16}
    status, data = await post_json(session, emulator.base_url + "/embeddings", body)
    assert status == 200
    embedding = CreateEmbeddingResponse.model_validate(data)
    assert [len(d.embedding) for d in embedding.data] == [16, 16]
    assert embedding.usage.prompt_tokens == 2  # cl100k tokens of the 9 characters (charged: ceil(9 / 4))
    _, again = await post_json(session, emulator.base_url + "/embeddings", {**body, "input": "beta"})
    assert again["data"][0]["embedding"] == data["data"][1]["embedding"]  # per-text, batch-independent

    async with session.get(emulator.base_url + "/models", headers=AUTH) as r:
        listing = await r.json()
    assert sorted(Model.model_validate(m).id for m in listing["data"]) == [
        "gpt-4o",
        "o1",
        "text-embedding-3-small",
    ]


async def test_embedding_model_on_chat_endpoint_is_refused(
    emulator: EmulatorHandle, session: aiohttp.ClientSession
) -> None:
    body = {"model": "text-embedding-3-small", "messages": [{"role": "user", "content": "x"}]}
    status, data = await post_json(session, emulator.base_url + "/chat/completions", body)
    assert status == 400 and "embedding" in data["error"]["message"]


async def test_identical_requests_identical_bytes_with_seed(
    session: aiohttp.ClientSession, make_config: Any
) -> None:
    emu = await start_emulator(make_config(seed=7))
    try:
        body = {"model": "o1", "messages": [{"role": "user", "content": "same"}], "stream": True}
        raw = []
        for _ in range(2):
            async with session.post(emu.base_url + "/chat/completions", json=body, headers=AUTH) as r:
                raw.append(await r.read())
        assert raw[0] == raw[1]
        other = {**body, "messages": [{"role": "user", "content": "different"}]}
        async with session.post(emu.base_url + "/chat/completions", json=other, headers=AUTH) as r:
            assert await r.read() != raw[0]
    finally:
        await emu.close()


async def test_sdk_responses_stream_and_base64_embeddings(emulator: EmulatorHandle) -> None:
    client = openai.AsyncOpenAI(base_url=emulator.base_url, api_key=KEY_A, max_retries=0)
    try:
        stream = await client.responses.create(model="o1", input="hello", stream=True)
        completed = [event async for event in stream if event.type == "response.completed"]
        assert len(completed) == 1 and completed[0].response.output_text
        # The SDK asks for base64 by default and decodes it.
        embedding = await client.embeddings.create(model="text-embedding-3-small", input="x")
        assert len(embedding.data[0].embedding) == 64
    finally:
        await client.close()
