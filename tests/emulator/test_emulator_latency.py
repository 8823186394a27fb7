"""The latency model delays answers as configured (lower bounds only: speed goals live in benchmarks)."""

from __future__ import annotations

import time
from typing import Any

import openai

from o1emulator import start_emulator

KEY_A = "sk-test-account-a-1"
MESSAGES = [{"role": "user", "content": "hi"}]


async def test_ttft_and_token_rate_delay_the_answer(make_config: Any) -> None:
    config = make_config(latency_scale=1.0)
    # 8..16 visible and 32..64 reasoning tokens at 400 tokens/s: at least 0.1 s after a 0.2 s first token.
    config["models"]["o1"]["latency"] = {"ttft_ms": 200, "tokens_per_s": 400}
    emu = await start_emulator(config)
    client = openai.AsyncOpenAI(base_url=emu.base_url, api_key=KEY_A, max_retries=0)
    try:
        started = time.monotonic()
        completion = await client.chat.completions.create(model="o1", messages=MESSAGES)  # type: ignore[arg-type]
        elapsed = time.monotonic() - started
        assert completion.usage is not None
        assert elapsed >= 0.2 + completion.usage.completion_tokens / 400

        started = time.monotonic()
        stream = await client.chat.completions.create(model="o1", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        arrivals = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic() - started)
        reasoning = completion.usage.completion_tokens_details.reasoning_tokens  # type: ignore[union-attr]
        assert arrivals[0] >= 0.2 + reasoning / 400  # first visible token after thinking
        assert arrivals[-1] >= 0.2 + completion.usage.completion_tokens / 400
    finally:
        await client.close()
        await emu.close()


async def test_zero_latency_by_default(make_config: Any) -> None:
    emu = await start_emulator(make_config())
    try:
        assert emu.emulator.latency(emu.config.models["o1"]) == (0.0, 0.0)
    finally:
        await emu.close()
