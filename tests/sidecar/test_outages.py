"""Disaster mode: a model failing on every account is down for the whole pool; nothing is sent to it
but one probe per period; requests are answered from the cache, wait (protected priorities) or get
503 with a retry-after; once a probe is answered, requests come back gradually (outages.py,
outage_sync.py)."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from o1emulator.embedded import EmulatorHandle
from o1sidecar.app import SidecarHandle
from tests.conftest import RedisServer
from tests.polling import until
from tests.sidecar.conftest import SidecarFactory

ASK = [{"role": "user", "content": "Is the model up?"}]
NO_CHAIN = {
    "retry": {"max_attempts": 2, "backoff_base_s": 0.01},
    "fallback": {"outage_failures": 3, "outage_probe_s": 1.0},
}


def calls(emulator: EmulatorHandle, model: str = "o1") -> int:
    """Every call the upstream got for ``model``: admitted (a fault strikes after admission) or refused."""
    total = 0
    for account in emulator.stats()["accounts"].values():
        m = account["models"][model]
        total += m["admitted"] + m["rejected_total"]
    return total


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


async def make_down(handle: SidecarHandle, client: openai.AsyncOpenAI) -> None:
    """Fail requests for o1 until the sidecar calls it down (failures in a row over 2 s)."""

    async def learned() -> bool:
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(
                model="o1",
                messages=[{"role": "user", "content": "fail"}],
                extra_headers={"x-o1pool-priority": "2"},
            )
        await asyncio.sleep(0.2)
        return handle.proxy.outages.down("o1")

    await until(learned, "o1 down", timeout_s=20)


async def test_a_model_down_with_no_fallback_is_answered_from_cache_or_503_without_calls(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    handle = await make_sidecar(
        **{**NO_CHAIN, "fallback": {"outage_failures": 3, "outage_probe_s": 30.0}},
        cache={"only_deterministic": True},  # answers are stored; only deterministic ones served up front
    )
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    await client.chat.completions.create(model="o1", messages=ASK)  # stored (not served from cache up front)
    emulator.set_faults([{"kind": "error_5xx", "model": "o1"}])
    await make_down(handle, client)
    before = calls(emulator)

    raw = await client.chat.completions.with_raw_response.create(
        model="o1", messages=ASK, extra_headers={"x-o1pool-priority": "2"}
    )  # the stored answer is the last resort
    assert raw.headers["x-o1pool-cache"] in ("l1", "l2") and raw.headers["x-o1pool-degraded"] == "true"
    with pytest.raises(openai.APIStatusError) as err:
        await client.chat.completions.create(
            model="o1",
            messages=[{"role": "user", "content": "new"}],
            extra_headers={"x-o1pool-priority": "2"},
        )
    assert err.value.status_code == 503 and err.value.code == "model_unavailable"
    assert 20 <= int(err.value.response.headers["retry-after"]) <= 30  # the probe is due in about 30 s
    assert calls(emulator) == before  # nothing was sent to the down model
    assert 'o1_api_model_availability{model="o1"} 0.0' in await scrape(handle.metrics_url)
    assert 'o1_api_model_availability{model="gpt-4o"} 1.0' in await scrape(handle.metrics_url)


async def test_a_protected_request_waits_for_the_probe_and_the_model_ramps_back(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    handle = await make_sidecar(**NO_CHAIN, cache={"enabled": False})
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    emulator.set_faults([{"kind": "error_5xx", "model": "o1"}])
    await make_down(handle, client)
    emulator.set_faults([])  # the upstream is back; the sidecar does not know yet
    before = calls(emulator)
    raw = await client.chat.completions.with_raw_response.create(
        model="o1", messages=ASK, extra_headers={"x-o1pool-priority": "8", "x-o1pool-deadline-ms": "10000"}
    )  # protected: waits for the probe time, is the probe, and is answered
    assert raw.headers["x-o1pool-model"] == "o1"
    assert calls(emulator) == before + 1
    assert handle.proxy.outages.state("o1").phase == "ramp"
    assert 'o1_api_model_availability{model="o1"} 0.1' in await scrape(handle.metrics_url)


async def test_an_outage_is_the_pools_one_probe_for_all_sidecars(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle, redis_server: RedisServer
) -> None:
    """Sidecar A learns the outage; B, which saw no failure, sends nothing to the model; while it is
    down the pool sends one probe per period, not one per sidecar."""
    redis = {"url": redis_server.url, "heartbeat_interval_s": 0.1}
    a, b = [await make_sidecar(**NO_CHAIN, redis=redis, cache={"enabled": False}) for _ in range(2)]
    emulator.set_faults([{"kind": "error_5xx", "model": "o1"}])
    await make_down(a, openai.AsyncOpenAI(base_url=a.url, api_key="x", max_retries=0))

    async def b_knows() -> bool:
        return b.proxy.outages.down("o1")

    await until(b_knows, "sidecar B mirrors the outage", timeout_s=5)
    started = calls(emulator)
    clients = [openai.AsyncOpenAI(base_url=h.url, api_key="x", max_retries=0) for h in (a, b)]
    answers: list[int] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + 3.5  # about three probe periods
    while loop.time() < end:
        for c in clients:
            try:
                await c.chat.completions.create(
                    model="o1", messages=ASK, extra_headers={"x-o1pool-priority": "2"}
                )
                answers.append(200)
            except openai.APIStatusError as exc:
                answers.append(exc.status_code)
        await asyncio.sleep(0.05)
    probes = calls(emulator) - started
    assert 2 <= probes <= 4, f"{probes} probes in 3.5 s at one per second for the pool"
    assert len(answers) > 20 and set(answers) <= {502, 503}
