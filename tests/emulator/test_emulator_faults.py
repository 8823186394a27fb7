"""Every fault mode, from the config and switched at run time, exact with ``count`` and seeded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from o1emulator import EmulatorHandle, start_emulator
from o1emulator.config import FaultRule
from o1emulator.faults import FaultPlan

KEY_A, KEY_B = "sk-test-account-a-1", "sk-test-account-b-1"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def emulator(make_config: Any) -> AsyncIterator[EmulatorHandle]:
    config = make_config()
    config["accounts"][0]["models"]["gpt-4o"]["tpm"] = 1_000_000
    handle = await start_emulator(config)
    yield handle
    await handle.close()


@pytest.fixture
async def client(emulator: EmulatorHandle) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=emulator.base_url, api_key=KEY_A, max_retries=0)
    yield client
    await client.close()


def model_stats(emu: EmulatorHandle, model: str = "gpt-4o", account: str = "a") -> dict[str, Any]:
    return emu.stats()["accounts"][account]["models"][model]


async def test_error_5xx_next_n(emulator: EmulatorHandle, client: openai.AsyncOpenAI) -> None:
    emulator.set_faults([{"kind": "error_5xx", "count": 2, "status": 503}])
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
        assert caught.value.status_code == 503
        assert "x-ratelimit-remaining-requests" in caught.value.response.headers
    await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    stats = model_stats(emulator)
    assert stats["faults"] == {"error_5xx": 2} and stats["admitted"] == 3  # failed calls spent quota
    assert emulator.stats()["faults"] == []  # the rule is spent


async def test_probability_is_seeded_and_reproducible(make_config: Any) -> None:
    counts = []
    for _ in range(2):
        emu = await start_emulator(make_config(seed=42, faults=[{"kind": "error_5xx", "probability": 0.3}]))
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(40):
                async with session.post(
                    emu.base_url + "/chat/completions",
                    headers={"api-key": KEY_B},
                    json={"model": "o1", "messages": MESSAGES, "max_tokens": 10},
                ) as r:
                    statuses.append(r.status)
        counts.append(statuses)
        await emu.close()
    assert counts[0] == counts[1]
    assert set(counts[0]) == {200, 500}
    assert 4 <= counts[0].count(500) <= 20  # about 30% of 40, fixed by the seed


def test_fault_plan_scoping_and_counts() -> None:
    plan = FaultPlan(
        [
            FaultRule(kind="reset", count=1, model="o1", account="b"),
            FaultRule(kind="cut_stream", count=1),
            FaultRule(kind="no_headers", count=2),
        ],
        seed=1,
    )
    first = plan.choose("a", "o1", stream=False)
    assert first.outcome is None and first.headers is not None  # cut_stream skips non-streams
    assert plan.choose("b", "o1", stream=True).outcome.kind == "reset"  # type: ignore[union-attr]
    third = plan.choose("b", "o1", stream=True)
    assert third.outcome is not None and third.outcome.kind == "cut_stream"
    assert third.headers is None and plan.describe() == []


async def test_reset_drops_the_connection(emulator: EmulatorHandle, client: openai.AsyncOpenAI) -> None:
    emulator.set_faults([{"kind": "reset", "count": 1, "model": "gpt-4o"}])
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    stats = model_stats(emulator)
    assert stats["faults"] == {"reset": 1} and stats["in_flight"] == 0


async def test_hang_times_out_the_client_and_frees_the_slot(
    emulator: EmulatorHandle, client: openai.AsyncOpenAI
) -> None:
    emulator.set_faults([{"kind": "hang", "count": 1, "hang_s": 60}])
    with pytest.raises(openai.APITimeoutError):
        await client.with_options(timeout=0.3).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    for _ in range(100):
        if model_stats(emulator)["in_flight"] == 0:
            break
        await asyncio.sleep(0.01)
    assert model_stats(emulator)["in_flight"] == 0  # the client's disconnect cancelled the hang


async def test_cut_stream_mid_answer(emulator: EmulatorHandle, client: openai.AsyncOpenAI) -> None:
    emulator.set_faults([{"kind": "cut_stream", "count": 1, "after_tokens": 4}])
    received = ""
    with pytest.raises(openai.APIConnectionError):
        stream = await client.chat.completions.create(model="o1", messages=MESSAGES, stream=True)
        async for chunk in stream:
            received += chunk.choices[0].delta.content or ""
    assert len(received.split()) == 4
    full = await client.chat.completions.create(model="o1", messages=MESSAGES)
    assert full.choices[0].message.content.startswith(received)  # type: ignore[union-attr]


async def test_cut_responses_stream(emulator: EmulatorHandle, client: openai.AsyncOpenAI) -> None:
    emulator.set_faults([{"kind": "cut_stream", "count": 1, "after_tokens": 0}])
    types = []
    with pytest.raises(openai.APIConnectionError):
        async for event in await client.responses.create(model="o1", input="hi", stream=True):
            types.append(event.type)
    assert "response.completed" not in types and "response.output_text.delta" not in types


async def test_missing_and_lying_headers(emulator: EmulatorHandle, client: openai.AsyncOpenAI) -> None:
    emulator.set_faults(
        [{"kind": "no_headers", "count": 1}, {"kind": "lying_headers", "count": 1, "value": "0"}], add=False
    )
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert not any(h.startswith("x-ratelimit-") for h in raw.headers)
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert (
        raw.headers["x-ratelimit-remaining-requests"] == "0"
        and raw.headers["x-ratelimit-limit-tokens"] == "0"
    )
    assert raw.headers["x-ratelimit-reset-tokens"] == "0s"
    emulator.set_faults([{"kind": "lying_headers", "count": 1}])
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.headers["x-ratelimit-remaining-tokens"] == "-1"
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.headers["x-ratelimit-limit-requests"] == "60"


async def test_header_faults_apply_to_429s(emulator: EmulatorHandle, client: openai.AsyncOpenAI) -> None:
    for _ in range(6):
        await client.chat.completions.create(model="o1", messages=MESSAGES)
    emulator.set_faults([{"kind": "no_headers", "count": 1}])
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="o1", messages=MESSAGES)
    assert "x-ratelimit-limit-requests" not in caught.value.response.headers
    assert "retry-after" in caught.value.response.headers


async def test_admin_endpoint_switches_faults(emulator: EmulatorHandle, client: openai.AsyncOpenAI) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            emulator.url + "/admin/faults",
            json={"faults": [{"kind": "error_5xx", "count": 1, "account": "a"}]},
        ) as r:
            assert r.status == 200 and (await r.json())["faults"][0]["remaining"] == 1
        async with session.get(emulator.url + "/admin/faults") as r:
            assert (await r.json())["faults"][0]["kind"] == "error_5xx"
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        async with session.post(
            emulator.url + "/admin/faults", json=[{"kind": "error_5xx", "model": "nope"}]
        ) as r:
            assert r.status == 400
            assert "faults[0]: faults: model 'nope' is not in 'models'" in (await r.json())["error"]
        async with session.post(emulator.url + "/admin/faults", json=[{"kind": "melt"}]) as r:
            assert r.status == 400 and "faults[0]: kind:" in (await r.json())["error"]
        async with session.post(emulator.url + "/admin/faults", json=[{"kind": "hang", "count": 1}]) as r:
            assert r.status == 200
        async with session.delete(emulator.url + "/admin/faults") as r:
            assert (await r.json()) == {"faults": []}
    await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
