"""Gateway mode (o1sidecar/clients.py): the sidecar binary serving callers without a sidecar of their
own, each a client known by its virtual key. The real process over TLS (a CA of the test's own), the
openai SDK with and without keys, and an injected-style sidecar of the same pool on one redis-server:
they share the cache and the clients' spend."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from redis.asyncio import Redis

from o1emulator.embedded import EmulatorHandle
from o1sidecar.clients import new_virtual_key
from o1sidecar.config import ConfigError, SidecarConfig
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.spend import read_spend
from tests.conftest import RedisServer
from tests.kube.pki import generate_pki
from tests.polling import until
from tests.sidecar.conftest import KEYS, SidecarFactory, sidecar_config_dict

ROOT = Path(__file__).resolve().parents[2]
WEB_KEY = "test-virtual-key-of-web-not-a-secret"
BASE: dict[str, Any] = {"accounts": [{"name": "a", "tier": 5, "keys": [{"name": "k", "env": "X"}]}]}


@dataclass
class Gateway:
    url: str
    ca: Path
    batch_key: str
    proc: asyncio.subprocess.Process

    def sdk(self, key: str) -> openai.AsyncOpenAI:
        verify = ssl.create_default_context(cafile=str(self.ca))
        http = openai.DefaultAsyncHttpxClient(verify=verify)  # (the SDK's own HTTP client)
        return openai.AsyncOpenAI(base_url=self.url, api_key=key, max_retries=0, http_client=http)

    async def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(self.proc.communicate(), 60)
        assert self.proc.returncode == 0, err.decode()
        return (out + err).decode()


@pytest.fixture
async def gateway(
    tmp_path: Path, emulator: EmulatorHandle, redis_server: RedisServer
) -> AsyncIterator[Gateway]:
    pki = generate_pki(tmp_path / "pki")
    web_file = tmp_path / "web.key"
    web_file.write_text(WEB_KEY + "\n")
    batch_key, batch_digest = new_virtual_key()  # the Secret holds only the digest
    config = sidecar_config_dict(emulator) | {
        "redis": {"url": redis_server.url, "heartbeat_interval_s": 0.1},
        "gateway": {
            "enabled": True,
            "tls_cert_file": str(pki.apiserver_serving.cert),  # (IP SAN 127.0.0.1)
            "tls_key_file": str(pki.apiserver_serving.key),
        },
        "clients": [
            {"name": "web", "virtual_keys": [{"name": "web-1", "file": str(web_file)}]},
            {
                "name": "batch",
                "virtual_keys": [{"name": "batch-1", "env": "BATCH_KEY_DIGEST"}],
                "max_priority": 2,
                "budgets": {"daily_tokens": 1},
            },
        ],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, **{f"O1T_A_{i + 1}": k for i, k in enumerate(KEYS["acct-a"])}}
    env["BATCH_KEY_DIGEST"] = batch_digest
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "o1pool.cli", "sidecar", "--config", str(path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("o1pool sidecar: serving https://127.0.0.1:"), line
        yield Gateway(line.split()[3], pki.ca.cert, batch_key, proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_only_a_clients_virtual_key_gets_in(gateway: Gateway) -> None:
    tls = ssl.create_default_context(cafile=str(gateway.ca))
    async with aiohttp.ClientSession() as http:  # (the SDK will not send a request without a key)
        body = {"model": "o1", "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(f"{gateway.url}/chat/completions", json=body, ssl=tls) as missing:
            error = (await missing.json())["error"]
    assert (missing.status, error["code"]) == (401, "invalid_api_key")
    assert error["message"].startswith("You didn't provide an API key")
    wrong = "sk-o1p-not-a-key-of-this-pool-zzzz"
    with pytest.raises(openai.AuthenticationError, match=r"Incorrect API key provided: \.\.\.zzzz") as bad:
        await gateway.sdk(wrong).chat.completions.create(
            model="o1", messages=[{"role": "user", "content": "hi"}]
        )
    assert wrong not in str(bad.value)
    digest = "sha256:" + hashlib.sha256(gateway.batch_key.encode()).hexdigest()
    with pytest.raises(openai.AuthenticationError):  # the digest itself is no key
        await gateway.sdk(digest).chat.completions.create(
            model="o1", messages=[{"role": "user", "content": "x"}]
        )
    answer = await gateway.sdk(WEB_KEY).chat.completions.with_raw_response.create(
        model="o1", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-o1pool-priority": "9"}
    )
    assert answer.parse().choices[0].message.content and "x-o1pool-priority-asked" not in answer.headers
    # The batch client: its ceiling and its budget (one token a day: the second request is refused).
    batch = await gateway.sdk(gateway.batch_key).chat.completions.with_raw_response.create(
        model="o1",
        messages=[{"role": "user", "content": "nightly"}],
        extra_headers={"x-o1pool-priority": "9"},
    )
    assert (batch.headers["x-o1pool-priority"], batch.headers["x-o1pool-priority-asked"]) == ("2", "9")
    with pytest.raises(openai.RateLimitError, match="Client 'batch' has spent its daily budget"):
        await gateway.sdk(gateway.batch_key).chat.completions.create(
            model="o1", messages=[{"role": "user", "content": "nightly 2"}]
        )
    everything = await gateway.stop()
    for secret in (WEB_KEY, gateway.batch_key, *KEYS["acct-a"]):
        assert secret not in everything


async def test_gateway_and_sidecars_share_the_cache_and_the_spend(
    gateway: Gateway, make_sidecar: SidecarFactory, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An injected sidecar of the pool (its pod is client web) answers; the gateway serves the same
    question to web's other caller from the pool's cache, and both count web's spend in Redis."""
    monkeypatch.setenv("O1POOL_WORKLOAD", "Deployment/web")
    sidecar = await make_sidecar(
        redis={"url": redis_server.url, "heartbeat_interval_s": 0.1},
        clients=[{"name": "web", "match": {"workloads": ["Deployment/web"]}}],
    )
    question: Any = [{"role": "user", "content": "shared question"}]
    app = openai.AsyncOpenAI(base_url=sidecar.url, api_key="unused", max_retries=0)
    first = await app.chat.completions.create(model="o1", messages=question)
    outside = await gateway.sdk(WEB_KEY).chat.completions.with_raw_response.create(
        model="o1", messages=question
    )
    assert outside.headers["x-o1pool-cache"] == "l2"
    assert outside.parse().choices[0].message.content == first.choices[0].message.content
    other = await gateway.sdk(WEB_KEY).chat.completions.create(
        model="o1", messages=[{"role": "user", "content": "not cached"}]
    )
    assert first.usage is not None and other.usage is not None
    tokens = sum(u.prompt_tokens + u.completion_tokens for u in (first.usage, other.usage))
    client = Redis.from_url(redis_server.url)
    try:

        async def both_counted() -> bool:
            spend = await read_spend(client, PoolKeys("o1pool", "tests", "test"), ["web"], _now())
            return spend["web"].today.tokens == tokens

        await until(both_counted, "web's spend from the sidecar and the gateway in Redis")
    finally:
        await client.aclose()


def _now() -> float:
    return datetime.now(UTC).timestamp()


def test_config_keeps_gateway_settings_where_they_do_something() -> None:
    keyed = {"name": "web", "virtual_keys": [{"name": "k", "env": "K"}]}
    with pytest.raises(ConfigError, match=r"only a gateway checks: set gateway\.enabled"):
        SidecarConfig.from_dict(BASE | {"clients": [keyed]})
    with pytest.raises(ConfigError, match="gateway mode answers only callers with a client's virtual key"):
        SidecarConfig.from_dict(
            BASE | {"gateway": {"enabled": True}, "clients": [{"name": "web", "match": {}}]}
        )
    with pytest.raises(ConfigError, match=r"tls_cert_file and gateway\.tls_key_file go together"):
        SidecarConfig.from_dict(
            BASE | {"gateway": {"enabled": True, "tls_cert_file": "c.pem"}, "clients": [keyed]}
        )


def test_a_malformed_digest_is_refused_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from o1sidecar.clients import Clients
    from o1sidecar.identity import Identity

    monkeypatch.setenv("K", "sha256:not-hex")
    config = SidecarConfig.from_dict(
        BASE
        | {
            "gateway": {"enabled": True},
            "clients": [{"name": "web", "virtual_keys": [{"name": "k", "env": "K"}]}],
        }
    )
    with pytest.raises(ConfigError, match="virtual key 'k': a value starting with sha256: must be"):
        Clients(config, Identity())
