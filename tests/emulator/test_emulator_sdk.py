"""The real ``openai`` SDK, sync and async, against a live emulator."""

from __future__ import annotations

import openai
import pytest

from o1common.durations import parse_duration
from o1emulator import EmulatorHandle, EmulatorThread

KEY_A = "sk-test-account-a-1"


async def test_async_client_completion_stream_embedding(emulator: EmulatorHandle) -> None:
    client = openai.AsyncOpenAI(base_url=emulator.base_url, api_key=KEY_A, max_retries=0)
    try:
        completion = await client.chat.completions.create(
            model="o1", messages=[{"role": "user", "content": "Say hi"}], max_completion_tokens=1000
        )
        assert completion.choices[0].message.content
        assert completion.usage is not None
        details = completion.usage.completion_tokens_details
        assert details is not None and details.reasoning_tokens and details.reasoning_tokens >= 32

        stream = await client.chat.completions.create(
            model="o1",
            messages=[{"role": "user", "content": "Say hi"}],
            max_completion_tokens=1000,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
        assert text == completion.choices[0].message.content  # same request content, same answer
        assert usage is not None and usage.completion_tokens == completion.usage.completion_tokens

        embedding = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert [len(d.embedding) for d in embedding.data] == [64, 64]
        assert sum(x * x for x in embedding.data[0].embedding) == pytest.approx(1.0, rel=1e-4)
    finally:
        await client.close()


def test_sync_client_gets_rate_limit_error_with_headers() -> None:
    config = {
        "models": {"o1": {"reasoning": True, "reasoning_tokens": [10, 20]}},
        "accounts": [
            {
                "name": "a",
                "keys": [{"name": "k", "key": KEY_A}],
                "models": {"o1": {"rpm": 3, "tpm": 1_000_000}},
            }
        ],
    }
    with EmulatorThread(config) as emu:
        client = openai.OpenAI(base_url=emu.base_url, api_key=KEY_A, max_retries=0)
        for _ in range(3):
            client.chat.completions.create(model="o1", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="o1", messages=[{"role": "user", "content": "x"}])
        error = caught.value
        assert error.status_code == 429
        assert error.code == "rate_limit_exceeded"
        assert error.type == "requests"
        headers = error.response.headers
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert 0 < int(headers["retry-after-ms"]) <= 20_000
        assert int(headers["retry-after"]) == -(-int(headers["retry-after-ms"]) // 1000)
        assert 0 < parse_duration(headers["x-ratelimit-reset-requests"]) <= 60
        assert "Rate limit reached for o1 in organization org-a on requests per min (RPM): Limit 3" in (
            error.message
        )
        stats = emu.stats()["accounts"]["a"]["models"]["o1"]
        assert stats["admitted"] == 3 and stats["rejected"]["requests"] == 1
        client.close()
