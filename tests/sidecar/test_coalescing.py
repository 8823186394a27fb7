"""Identical cacheable requests in flight at once make one upstream call, in one sidecar and across two
sidecars sharing the pool's Redis (real sidecars, redis-server, the openai SDK; the emulator's own
counters say how many calls reached the model)."""

from __future__ import annotations

import asyncio

import openai

from o1emulator.embedded import EmulatorHandle
from tests.conftest import RedisServer
from tests.sidecar.conftest import EmulatorFactory, SidecarFactory

SLOW = {"models": {"o1": {"latency": {"ttft_ms": 1500}}}, "latency_scale": 1.0}  # in flight together


def calls(emulator: EmulatorHandle) -> int:
    return int(emulator.stats()["totals"].get("admitted", 0))


async def ask(client: openai.AsyncOpenAI, question: str, stream: bool = False) -> tuple[str, str]:
    """(x-o1pool-cache, the answer's text)"""
    messages = [{"role": "user", "content": question}]
    if not stream:
        raw = await client.chat.completions.with_raw_response.create(model="o1", messages=messages)  # type: ignore[arg-type]
        return raw.headers["x-o1pool-cache"], raw.parse().choices[0].message.content or ""
    raw = await client.chat.completions.with_raw_response.create(model="o1", messages=messages, stream=True)  # type: ignore[arg-type]
    text = ""
    async for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return raw.headers["x-o1pool-cache"], text


async def test_identical_requests_in_one_sidecar_make_one_call(
    make_emulator: EmulatorFactory, make_sidecar: SidecarFactory
) -> None:
    emulator = await make_emulator(**SLOW)
    handle = await make_sidecar(upstream=emulator)
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    answers = await asyncio.gather(
        *(ask(client, "Why is the sky blue?", stream=i % 2 == 1) for i in range(6))
    )
    assert calls(emulator) == 1
    assert sorted(layer for layer, _ in answers) == ["coalesced"] * 5 + ["miss"]
    assert len({text for _, text in answers}) == 1  # one answer, streamed or not
    # Different questions are not coalesced.
    await asyncio.gather(ask(client, "Why is grass green?"), ask(client, "Why is snow white?"))
    assert calls(emulator) == 3


async def test_identical_requests_across_two_sidecars_make_one_call(
    make_emulator: EmulatorFactory, make_sidecar: SidecarFactory, redis_server: RedisServer
) -> None:
    emulator = await make_emulator(**SLOW)
    shared = {"redis": {"url": redis_server.url}}
    one = await make_sidecar(upstream=emulator, **shared)
    two = await make_sidecar(upstream=emulator, **shared)
    clients = [openai.AsyncOpenAI(base_url=h.url, api_key="x", max_retries=0) for h in (one, two)]
    answers = await asyncio.gather(*(ask(clients[i % 2], "What is a quasar?") for i in range(8)))
    assert calls(emulator) == 1
    assert sorted(layer for layer, _ in answers) == ["coalesced"] * 7 + ["miss"]
    assert len({text for _, text in answers}) == 1


async def test_a_leader_without_an_answer_lets_the_others_call_on_their_own(
    make_emulator: EmulatorFactory, make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    slow = await make_emulator(**SLOW)
    handle = await make_sidecar(upstream=slow)
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    first = asyncio.create_task(
        client.chat.completions.with_raw_response.create(
            model="o1",
            messages=[{"role": "user", "content": "Same?"}],
            extra_headers={"x-o1pool-cache-mode": "bypass"},
        )
    )  # bypass: neither joins nor leads
    answers = await asyncio.gather(ask(client, "Same?"), ask(client, "Same?"))
    await first
    assert calls(slow) == 2  # the bypassing one, and one leader for the two others
    assert sorted(layer for layer, _ in answers) == ["coalesced", "miss"]
