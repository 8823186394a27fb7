"""The audit trail (o1sidecar/audit.py) and what answers cost (prices.py): the masking rules and the
price table as pure functions, then the real sidecar process writing its lines to stdout while the
openai SDK calls it, read back and checked field by field against the answers the client got."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from o1emulator.embedded import EmulatorHandle
from o1sidecar.audit import MAX_CONTENT_CHARS, Masker
from o1sidecar.config import ConfigError, SidecarConfig
from o1sidecar.identity import Identity
from o1sidecar.prices import DEFAULT_PRICES, Price, PriceTable, TokenUse
from tests.sidecar.conftest import KEYS, SidecarFactory, sidecar_config_dict

ROOT = Path(__file__).resolve().parents[2]
IDENTITY = {
    "O1POOL_NAMESPACE": "team-a",
    "O1POOL_POD": "web-7d9f8-abcde",
    "O1POOL_SERVICE_ACCOUNT": "web",
    "O1POOL_WORKLOAD": "Deployment/web",
}
SECRETS_IN_PROMPT = (
    "ann.lee@example.com",
    "4111 1111 1111 1111",
    "+1 (415) 555-0134",
    "sk-proj-abcdefghijklmnopqrstuvwx",
    "project-zeus",
)


# --- masking ------------------------------------------------------------------------------------


def test_masker_masks_each_kind_and_keeps_what_is_not_one() -> None:
    m = Masker([r"project-[a-z]+"])
    text = (
        "mail ann.lee@example.com or call +1 (415) 555-0134; card 4111 1111 1111 1111, "
        "key sk-proj-abcdefghijklmnopqrstuvwx, Bearer abcdefghijklmnopqrstuvwxyz012345, "
        "AKIAABCDEFGHIJKLMNOP, about project-zeus"
    )
    masked = m.text(text)
    for secret in (*SECRETS_IN_PROMPT, "abcdefghijklmnopqrstuvwxyz012345", "AKIAABCDEFGHIJKLMNOP"):
        assert secret not in masked, masked
    for label in ("[email]", "[phone]", "[card]", "[key]", "[masked]"):
        assert label in masked, masked
    # Numbers that are not one of those stay: a date, a time, an amount, a non-Luhn 16-digit id.
    plain = "on 2026-12-07 at 09:45 it cost 1234.50, order 1234 5678 9012 3456"
    assert m.text(plain) == plain


def test_masker_walks_json_values_and_cuts_long_strings() -> None:
    m = Masker()
    value = [{"role": "user", "content": [{"type": "text", "text": "to bob@corp.io"}]}, 7, None]
    assert m.value(value) == [{"role": "user", "content": [{"type": "text", "text": "to [email]"}]}, 7, None]
    long = m.value("x" * (MAX_CONTENT_CHARS + 10))
    assert len(long) < MAX_CONTENT_CHARS + 50 and long.endswith(f"[cut: {MAX_CONTENT_CHARS + 10} characters]")


# --- prices -------------------------------------------------------------------------------------


def test_token_use_reads_each_usage_shape() -> None:
    chat = {
        "prompt_tokens": 100,
        "completion_tokens": 40,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    assert TokenUse.of(chat) == TokenUse(input=100, cached=64, output=40, reasoning=30)
    responses = {
        "input_tokens": 10,
        "output_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 2},
    }
    assert TokenUse.of(responses) == TokenUse(input=10, cached=0, output=5, reasoning=2)
    assert TokenUse.of({"prompt_tokens": 8, "total_tokens": 8}) == TokenUse(input=8)
    # What is not a count is 0; parts never exceed their whole.
    bad = {"prompt_tokens": "9", "completion_tokens": -3, "prompt_tokens_details": {"cached_tokens": 99}}
    assert TokenUse.of(bad) == TokenUse()
    assert TokenUse.of({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 99}}).cached == 5


def test_price_table_costs_and_overrides() -> None:
    table = PriceTable({"o1-mini": Price(2.0, 1.0, 8.0)})
    use = TokenUse(input=1_000, cached=400, output=500, reasoning=300)
    o1 = DEFAULT_PRICES["o1"]
    expected = (600 * o1.input + 400 * o1.cached_input + 500 * o1.output) / 1e6
    assert table.cost_usd("o1", use) == pytest.approx(expected)
    assert table.cost_usd("o1-2024-12-17", use) == pytest.approx(expected)  # a dated snapshot
    assert table.cost_usd("o1-mini", use) == pytest.approx((600 * 2 + 400 * 1 + 500 * 8) / 1e6)
    assert table.cost_usd("my-finetune", use) is None


def test_config_refuses_audit_and_price_fields_that_would_do_nothing() -> None:
    base: dict[str, Any] = {"accounts": [{"name": "a", "tier": 5, "keys": [{"name": "k", "env": "X"}]}]}
    with pytest.raises(ConfigError, match=r"audit\.content applies to audit lines"):
        SidecarConfig.from_dict(base | {"audit": {"content": True}})
    with pytest.raises(ConfigError, match=r"audit\.sample_ratio applies to audit lines"):
        SidecarConfig.from_dict(base | {"audit": {"sample_ratio": 0.5}})
    with pytest.raises(ConfigError, match=r"audit\.mask_patterns apply to logged content"):
        SidecarConfig.from_dict(base | {"audit": {"enabled": True, "mask_patterns": ["x"]}})
    with pytest.raises(ConfigError, match=r"mask_patterns\[0\] '\(' is not a regular expression"):
        SidecarConfig.from_dict(base | {"audit": {"enabled": True, "content": True, "mask_patterns": ["("]}})
    with pytest.raises(ConfigError, match=r"prices names model\(s\) 'gpt-9' that no account serves"):
        SidecarConfig.from_dict(base | {"prices": {"gpt-9": {"input": 1, "output": 2}}})
    config = SidecarConfig.from_dict(base | {"prices": {"o1": {"input": 1, "output": 2}}})
    assert config.price_table().price("o1") == Price(1.0, 1.0, 2.0)


def test_identity_reads_the_webhooks_variables_and_nothing_odd() -> None:
    assert Identity.from_env(IDENTITY) == Identity("team-a", "web-7d9f8-abcde", "web", "Deployment/web")
    assert Identity.from_env({}) == Identity()
    assert Identity.from_env({"O1POOL_WORKLOAD": 'Deployment/x\n{"forged":1}'}).workload == ""


# --- the real process ---------------------------------------------------------------------------


@dataclass
class AuditedSidecar:
    url: str
    proc: asyncio.subprocess.Process

    async def lines(self) -> tuple[list[dict[str, Any]], str]:
        """Stop the sidecar (SIGTERM) and return its audit lines and everything it wrote."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(self.proc.communicate(), 60)
        assert self.proc.returncode == 0, err.decode()
        return [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")], (
            out + err
        ).decode()


@pytest.fixture
async def start_audited(tmp_path: Path, emulator: EmulatorHandle) -> AsyncIterator[Any]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(audit: dict[str, Any]) -> AuditedSidecar:
        config = sidecar_config_dict(emulator) | {"audit": audit}
        path = tmp_path / f"sidecar-{len(procs)}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, **IDENTITY, **{f"O1T_A_{i + 1}": k for i, k in enumerate(KEYS["acct-a"])}}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "o1pool.cli",
            "sidecar",
            "--config",
            str(path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("o1pool sidecar: serving "), line
        return AuditedSidecar(line.split()[3], proc)

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)


async def test_one_line_per_request_with_identity_cost_and_masked_content(start_audited: Any) -> None:
    sidecar = await start_audited({"enabled": True, "content": True, "mask_patterns": [r"project-[a-z]+"]})
    client = sdk(sidecar.url)
    question = "Please remember: " + "; ".join(SECRETS_IN_PROMPT)
    messages: Any = [{"role": "user", "content": question}]
    first = await client.chat.completions.with_raw_response.create(
        model="o1", messages=messages, extra_headers={"X-Request-Id": "app-req-1"}
    )
    again = await client.chat.completions.with_raw_response.create(model="o1", messages=messages)
    streamed = await client.chat.completions.create(
        model="o1", messages=[{"role": "user", "content": "stream it"}], stream=True
    )
    async for _ in streamed:
        pass
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sidecar.url}/chat/completions", data=b"{not json") as bad:
            assert bad.status == 400
            bad_id = bad.headers["x-o1pool-request-id"]
        async with http.post(
            f"{sidecar.url}/chat/completions", json={"model": "gpt-9", "messages": messages}
        ) as unknown:
            unknown_status = unknown.status
    lines, everything = await sidecar.lines()

    assert len(lines) == 5, lines
    one, hit, stream, malformed, unserved = lines
    completion = first.parse()
    assert completion.usage is not None
    # The first: who, what, how, by which key name, and what it cost.
    assert one["request_id"] == first.headers["x-o1pool-request-id"]
    assert one["client_request_id"] == "app-req-1"
    assert one["upstream_request_id"] == first.headers.get("x-request-id")
    assert {k: one[k] for k in ("namespace", "pod", "service_account", "workload")} == {
        "namespace": "team-a",
        "pod": "web-7d9f8-abcde",
        "service_account": "web",
        "workload": "Deployment/web",
    }
    assert (one["pool"], one["endpoint"], one["stream"], one["status"]) == (
        "tests/test",
        "/v1/chat/completions",
        False,
        200,
    )
    assert (one["model_requested"], one["model"], one["account"], one["key"]) == (
        "o1",
        "o1",
        "acct-a",
        "acct-a/a1",
    )
    assert (one["cache"], one["fallback"], one["upstream_calls"], one["upstream_429s"]) == (
        "miss",
        False,
        1,
        0,
    )
    use = TokenUse.of(completion.usage.model_dump())
    assert use.reasoning > 0 and one["tokens"] == use.as_dict()
    assert one["cost_usd"] == pytest.approx(PriceTable().cost_usd("o1", use))
    assert one["saved_usd"] is None
    assert (one["client"], one["priority"], one["priority_asked"]) == (None, 5, 5)
    # Content, masked: the prompt's secrets are gone, the answer is there.
    assert "[email]" in json.dumps(one["prompt"]) and "[masked]" in json.dumps(one["prompt"])
    assert one["answer"][0]["content"] == completion.choices[0].message.content
    # The second came from the cache: it cost nothing and saved what the first cost.
    assert (hit["cache"], hit["cost_usd"], hit["tokens"]) == ("l1", 0.0, one["tokens"])
    assert hit["saved_usd"] == pytest.approx(one["cost_usd"])
    assert hit["request_id"] == again.headers["x-o1pool-request-id"] != one["request_id"]
    # A stream: tokens from its usage, no answer content.
    assert stream["stream"] is True and stream["tokens"]["output"] > 0 and stream["answer"] is None
    # Refused before the proxy, and a model the pool does not serve: always logged, with the error.
    assert (malformed["status"], malformed["error"], malformed["request_id"]) == (
        400,
        "invalid_request_error",
        bad_id,
    )
    assert (unserved["status"], unserved["error"], unserved["model_requested"]) == (
        unknown_status,
        "model_not_found",
        "gpt-9",
    )
    # Nothing secret anywhere the process wrote.
    for secret in (*SECRETS_IN_PROMPT, *KEYS["acct-a"]):
        assert secret not in everything


async def test_sampling_keeps_errors_and_content_stays_out_by_default(start_audited: Any) -> None:
    sidecar = await start_audited({"enabled": True, "sample_ratio": 0.0})
    client = sdk(sidecar.url)
    for i in range(3):
        await client.chat.completions.create(model="o1", messages=[{"role": "user", "content": f"q{i}"}])
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "q"}])
    lines, _ = await sidecar.lines()
    assert [line["status"] for line in lines] == [404]
    assert "prompt" not in lines[0] and "answer" not in lines[0]


async def test_spend_and_savings_are_metrics(make_sidecar: SidecarFactory) -> None:
    """Without the audit trail too: the counters add up what the answers cost and what hits saved."""
    handle = await make_sidecar()
    client = sdk(handle.url)
    messages: Any = [{"role": "user", "content": "what does it cost?"}]
    first = await client.chat.completions.create(model="o1", messages=messages)
    await client.chat.completions.create(model="o1", messages=messages)
    assert first.usage is not None
    cost = PriceTable().cost_usd("o1", TokenUse.of(first.usage.model_dump()))
    assert cost is not None and cost > 0
    async with aiohttp.ClientSession() as http, http.get(handle.metrics_url) as scrape:
        text = await scrape.text()
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith(("o1_api_spend_usd_total", "o1_api_cache_saved_usd_total"))
    }
    assert values['o1_api_spend_usd_total{model="o1"}'] == pytest.approx(cost)
    assert values['o1_api_cache_saved_usd_total{model="o1"}'] == pytest.approx(cost)
