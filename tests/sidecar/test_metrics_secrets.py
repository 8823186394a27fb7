"""Prometheus metrics carry the brief's names with key *names*; key values appear nowhere: not in
/metrics, not in logs, not in error answers, not in reprs."""

from __future__ import annotations

import logging

import aiohttp
import openai
import pytest

from o1emulator.embedded import EmulatorHandle
from o1sidecar.app import SidecarHandle
from o1sidecar.config import ConfigError, SidecarConfig
from o1sidecar.upstream import load_routes
from tests.sidecar.conftest import KEYS, SidecarFactory, sidecar_config_dict

USER = [{"role": "user", "content": "count to three"}]
SECRETS = [key for keys in KEYS.values() for key in keys]


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


async def test_metrics_names_and_labels(make_sidecar: SidecarFactory, emulator: EmulatorHandle) -> None:
    handle = await make_sidecar(fallback={"chains": {"o1": ["o1-mini"]}})
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    await client.chat.completions.create(model="o1", messages=USER)
    await client.chat.completions.create(model="o1", messages=USER)  # cache hit
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(
            model="o1", messages=USER, extra_headers={"x-o1pool-priority": "x"}
        )
    text = await scrape(handle.metrics_url)
    for line in [
        'o1_api_requests_total{key="acct-a/a1",model="o1",status="200"} 1.0',
        'o1_api_requests_total{key="-",model="o1",status="200"} 1.0',
        'o1_api_requests_total{key="-",model="-",status="400"} 1.0',
        'o1_api_response_duration_seconds_count{cached="false",model="o1"} 1.0',
        'o1_api_response_duration_seconds_count{cached="true",model="o1"} 1.0',
        'o1_api_queue_length{priority="5"} 0.0',
        'o1_api_queue_wait_seconds_count{priority="5"} 1.0',
        'o1_api_admissions_total{key="acct-a/a1",model="o1"} 1.0',
        'o1_api_limiter_mode{mode="local"} 1.0',
        'o1_api_limiter_mode{mode="shared"} 0.0',
        'o1_api_cache_lookups_total{result="l1"} 1.0',
    ]:
        assert line in text, line
    assert 'o1_api_token_usage_ratio{key="acct-a",type="requests"}' in text
    assert "# TYPE o1_api_upstream_429_total counter" in text


async def test_key_values_never_leak(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    handle = await make_sidecar(fallback={"chains": {"o1": ["o1-mini"]}})
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    answers = [(await client.chat.completions.with_raw_response.create(model="o1", messages=USER)).text]
    emulator.set_faults([{"kind": "error_5xx"}])
    with pytest.raises(openai.APIStatusError) as err:
        await client.chat.completions.create(model="o1", messages=[{"role": "user", "content": "other"}])
    answers.append(err.value.response.text)
    emulator.set_faults([{"kind": "cut_stream", "after_tokens": 1}])
    with pytest.raises(openai.APIError):
        fresh = [{"role": "user", "content": "a new question"}]
        async for _ in await client.chat.completions.create(model="o1", messages=fresh, stream=True):
            pass
    metrics = await scrape(handle.metrics_url)
    assert "upstream acct-a/a1 failed" in caplog.text  # the logs name the key...
    for secret in SECRETS:  # ...never its value
        assert secret not in metrics
        assert secret not in caplog.text
        assert all(secret not in answer for answer in answers)
    assert all(secret not in repr(route.keys) for route in handle.proxy.routes.values() for secret in SECRETS)


def test_unreadable_key_error_names_the_source_not_a_value(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("O1T_A_1", raising=False)
    config = SidecarConfig.from_dict(sidecar_config_dict(emulator))
    with pytest.raises(ConfigError, match="O1T_A_1 is unset"):
        load_routes(config)


async def test_the_metrics_port_serves_readiness_for_the_kubelet(sidecar: SidecarHandle) -> None:
    """The API listens on the pod's loopback; the kubelet probes readiness on the metrics port."""
    url = sidecar.metrics_url.replace("/metrics", "/readyz")
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200 and (await response.json())["status"] == "ready"
