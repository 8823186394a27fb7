"""Bad requests get an OpenAI-style error that says what was wrong and what to send instead."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from o1emulator.embedded import EmulatorHandle
from o1sidecar.app import SidecarHandle

from tests.sidecar.conftest import SidecarFactory

USER = [{"role": "user", "content": "hi"}]


async def post(url: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
        ) as r:
            return r.status, await r.json()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "not an object"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "'model'"),
        (b'{"model": "o1"}', "'messages'"),
        (b'{"model": "o1", "messages": []}', "'messages'"),
        (b'{"model": "o1", "messages": ["hi"]}', "object with 'role'"),
        (b'{"model": "o1", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "'stream'"),
        (b"\xff\xfe{}", "UTF-8"),
    ],
)
async def test_malformed_body_is_400(
    sidecar: SidecarHandle, emulator: EmulatorHandle, data: bytes, words: str
) -> None:
    status, body = await post(f"{sidecar.url}/chat/completions", data)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert words in body["error"]["message"]
    assert emulator.stats()["totals"].get("admitted", 0) == 0


async def test_missing_input_for_embeddings(sidecar: SidecarHandle) -> None:
    status, body = await post(f"{sidecar.url}/embeddings", b'{"model": "text-embedding-3-small"}')
    assert status == 400 and "'input'" in body["error"]["message"]


@pytest.mark.parametrize("value", ["urgent", "10", "-1", "5.5", "HIGHEST"])
async def test_bad_priority_header(sidecar: SidecarHandle, value: str) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model="o1", messages=USER, extra_headers={"x-o1pool-priority": value}
        )
    message = err.value.message
    assert "x-o1pool-priority" in message and "0-9" in message and "high" in message


@pytest.mark.parametrize("value", ["soon", "0", "-5", "1.5", "999999999"])
async def test_bad_deadline_header(sidecar: SidecarHandle, value: str) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model="o1", messages=USER, extra_headers={"x-o1pool-deadline-ms": value}
        )
    message = err.value.message
    assert "x-o1pool-deadline-ms" in message
    assert "between 1 and" in message or "at most 600000 ms" in message


@pytest.mark.parametrize("value", ["high", "LOW", "normal", "0", "9", "7"])
async def test_good_priority_values_are_served(sidecar: SidecarHandle, value: str) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="x", max_retries=0)
    completion = await client.chat.completions.create(
        model="o1", messages=USER, extra_headers={"x-o1pool-priority": value, "x-o1pool-deadline-ms": "5000"}
    )
    assert completion.choices


async def test_body_over_limit_is_413_by_content_length(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    handle = await make_sidecar(max_body_bytes=2000)
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        await client.chat.completions.create(model="o1", messages=[{"role": "user", "content": "x" * 5000}])
    assert err.value.status_code == 413
    assert "at most 2000 bytes" in err.value.message and "max_body_bytes" in err.value.message
    assert emulator.stats()["totals"].get("admitted", 0) == 0


async def test_body_over_limit_is_413_while_reading_chunked(make_sidecar: SidecarFactory) -> None:
    handle = await make_sidecar(max_body_bytes=2000)

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * 500

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{handle.url}/chat/completions", data=chunks()) as r:
            assert r.status == 413
            assert "more than 2000" in (await r.json())["error"]["message"]


async def test_unknown_path_is_404(sidecar: SidecarHandle) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sidecar.url}/completions", data=b"{}") as r:
            assert r.status == 404
            assert "/v1/chat/completions" in (await r.json())["error"]["message"]


async def test_app_authorization_is_ignored_and_never_forwarded(
    sidecar: SidecarHandle, emulator: EmulatorHandle
) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="sk-the-apps-own-fake-key", max_retries=0)
    completion = await client.chat.completions.create(model="o1", messages=USER)
    assert completion.choices
    assert emulator.stats()["accounts"]["acct-a"]["keys"]["a1"]["admitted"] == 1
