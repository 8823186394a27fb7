"""Traces of requests (o1sidecar/tracing.py, otlp.py) as a collector receives them: a real OTLP/HTTP
receiver in its own process (otlp_receiver.py) decodes what the sidecar exports, and the tests read
its spans. Requests come from the real openai SDK, most with the app's own W3C ``traceparent``, so
each test finds its trace by id; every test waits for spans to arrive, never for a time."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
import yaml

from o1emulator.embedded import EmulatorHandle
from o1sidecar.config import ConfigError, SidecarConfig
from o1sidecar.otlp import FLUSH_S, traces_url
from tests.conftest import RedisServer
from tests.polling import until
from tests.sidecar.conftest import (
    KEYS,
    EmulatorFactory,
    SidecarFactory,
    one_call_at_a_time,
    sidecar_config_dict,
)

ROOT = Path(__file__).resolve().parents[2]
RECEIVER = Path(__file__).with_name("otlp_receiver.py")
INTERNAL, SERVER, CLIENT = 1, 2, 3
ERROR = 2  # span status code
CHAIN = {"fallback": {"chains": {"o1": ["o1-mini"]}}}
ARRIVAL_S = 60.0  # generous: the exporter batches every 50 ms here, on a shared machine


def prompt() -> str:
    """A question no attribute may contain."""
    return f"Which bucket leaks first, question {secrets.token_hex(8)}?"


@dataclass
class Trace:
    spans: list[dict[str, Any]]

    @property
    def root(self) -> dict[str, Any]:
        (root,) = [s for s in self.spans if s["kind"] == SERVER]
        return root

    def named(self, prefix: str) -> list[dict[str, Any]]:
        return sorted((s for s in self.spans if s["name"].startswith(prefix)), key=lambda s: s["start_ns"])

    def names(self) -> list[str]:
        return [s["name"] for s in sorted(self.spans, key=lambda s: s["start_ns"])]


@dataclass
class Receiver:
    url: str
    path: Path

    def spans(self) -> list[dict[str, Any]]:
        text = self.path.read_text()
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    async def trace(self, trace_id: str) -> Trace:
        """The spans of ``trace_id`` once its root has arrived (the root ends last: its children were
        exported with it or before)."""

        def root_arrived() -> bool:
            return any(s["trace_id"] == trace_id and s["kind"] == SERVER for s in self.spans())

        await until(root_arrived, f"the root span of trace {trace_id}", timeout_s=ARRIVAL_S)
        return Trace([s for s in self.spans() if s["trace_id"] == trace_id])

    def assert_no_content(self, *texts: str) -> None:
        """Neither the prompts, the answers nor any key value appear anywhere in what was exported."""
        exported = self.path.read_text()
        for text in (*texts, *(key for keys in KEYS.values() for key in keys)):
            assert text and text not in exported


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    path = tmp_path / "spans.jsonl"
    path.touch()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(RECEIVER), str(path), stdout=subprocess.PIPE, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("listening "), f"the receiver did not start: {line!r}"
        yield Receiver(f"http://127.0.0.1:{int(line.split()[1])}", path)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


@pytest.fixture(autouse=True)
def quick_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch processor exports every 50 ms instead of every 5 s (the standard variable)."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")


def traceparent() -> tuple[dict[str, str], str, str]:
    """An app's W3C trace context: the header, its trace id and the app's span id (sampled)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return {"traceparent": f"00-{trace_id}-{span_id}-01"}, trace_id, span_id


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key="sk-app-placeholder", max_retries=0)


async def test_a_request_is_a_genai_span_with_a_child_per_step_under_the_apps_span(
    make_sidecar: SidecarFactory, receiver: Receiver
) -> None:
    handle = await make_sidecar(tracing={"otlp_endpoint": receiver.url})
    headers, trace_id, app_span = traceparent()
    question = prompt()
    completion = await client(handle.url).chat.completions.create(
        model="o1",
        messages=[{"role": "user", "content": question}],
        max_completion_tokens=500,
        seed=3,
        extra_headers={**headers, "x-o1pool-priority": "high"},
    )
    trace = await receiver.trace(trace_id)

    root = trace.root
    assert root["name"] == "chat o1"
    assert root["parent_span_id"] == app_span, "the app's traceparent is the root's parent"
    assert trace.names() == ["chat o1", "cache lookup", "coalesce", "admission", "upstream o1"]
    assert all(s["parent_span_id"] == root["span_id"] for s in trace.spans if s is not root)
    assert root["end_ns"] >= max(s["end_ns"] for s in trace.spans)
    assert completion.usage is not None
    assert root["attributes"] | {"o1pool.queue.wait_s": 0} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "o1",
        "gen_ai.request.max_tokens": 500,
        "gen_ai.request.seed": 3,
        "gen_ai.response.model": completion.model,
        "gen_ai.response.id": completion.id,
        "gen_ai.response.finish_reasons": [completion.choices[0].finish_reason],
        "gen_ai.usage.input_tokens": completion.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": completion.usage.completion_tokens,
        "openai.response.service_tier": completion.service_tier,
        "openai.response.system_fingerprint": completion.system_fingerprint,
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "http.response.status_code": 200,
        "server.address": "127.0.0.1",
        "server.port": urlsplit(handle.proxy.config.accounts[0].base_url).port,
        "o1pool.pool": "tests/test",
        "o1pool.priority": 8,
        "o1pool.deadline_ms": 120_000,
        "o1pool.stream": False,
        "o1pool.cache": "miss",
        "o1pool.degraded": False,
        "o1pool.queue.wait_s": 0,
        "o1pool.attempts": 1,
        "o1pool.model": "o1",
        "o1pool.account": "acct-a",
        "o1pool.key": "acct-a/a1",
    }
    (lookup,) = trace.named("cache lookup")
    assert lookup["attributes"] == {"o1pool.cache.result": "miss"}
    assert trace.named("coalesce")[0]["attributes"] == {"o1pool.coalesce": "lead"}
    (admission,) = trace.named("admission")
    assert admission["attributes"]["o1pool.priority"] == 8
    assert admission["attributes"]["o1pool.account"] == "acct-a"
    assert admission["attributes"]["o1pool.model"] == "o1"
    assert admission["attributes"]["o1pool.queue.wait_s"] >= 0
    (attempt,) = trace.named("upstream")
    assert attempt["kind"] == CLIENT and lookup["kind"] == INTERNAL
    assert {k: v for k, v in attempt["attributes"].items() if not k.startswith("server.")} == {
        "gen_ai.request.model": "o1",
        "http.request.method": "POST",
        "http.response.status_code": 200,
        "o1pool.account": "acct-a",
        "o1pool.key": "acct-a/a1",
        "o1pool.attempt": 1,
        "o1pool.outcome": "ok",
    }
    assert root["resource"]["service.name"] == "o1pool-sidecar"
    assert root["resource"]["o1pool.pool"] == "tests/test"
    receiver.assert_no_content(question, completion.choices[0].message.content or "")


async def test_a_cache_hit_says_its_layer_and_spends_no_tokens(
    make_sidecar: SidecarFactory, receiver: Receiver
) -> None:
    handle = await make_sidecar(tracing={"otlp_endpoint": receiver.url})
    messages = [{"role": "user", "content": prompt()}]
    first, _, _ = traceparent()
    await client(handle.url).chat.completions.create(model="o1", messages=messages, extra_headers=first)
    headers, trace_id, _ = traceparent()
    raw = await client(handle.url).chat.completions.with_raw_response.create(
        model="o1", messages=messages, extra_headers=headers
    )
    assert raw.headers["x-o1pool-cache"] == "l1"
    trace = await receiver.trace(trace_id)
    assert trace.names() == ["chat o1", "cache lookup"]
    assert trace.named("cache lookup")[0]["attributes"] == {"o1pool.cache.result": "l1"}
    attributes = trace.root["attributes"]
    assert attributes["o1pool.cache"] == "l1"
    assert attributes["gen_ai.response.id"] == raw.parse().id
    assert "gen_ai.usage.input_tokens" not in attributes, "a hit spent no tokens"
    assert "o1pool.account" not in attributes and "o1pool.key" not in attributes


@pytest.mark.redis
async def test_an_l2_hit_notes_each_layer_asked(
    make_sidecar: SidecarFactory, receiver: Receiver, redis_server: RedisServer
) -> None:
    shared = {"redis": {"url": redis_server.url}, "tracing": {"otlp_endpoint": receiver.url}}
    first, second = await make_sidecar(**shared), await make_sidecar(**shared)
    messages = [{"role": "user", "content": prompt()}]
    await client(first.url).chat.completions.create(model="o1", messages=messages)
    await first.proxy.cache.flush()  # (its answer is in L2)
    headers, trace_id, _ = traceparent()
    await client(second.url).chat.completions.create(model="o1", messages=messages, extra_headers=headers)
    trace = await receiver.trace(trace_id)
    (lookup,) = trace.named("cache lookup")
    assert lookup["attributes"] == {"o1pool.cache.result": "l2"}
    assert [e["attributes"] for e in lookup["events"]] == [
        {
            "o1pool.cache.layer": "l2",
            "o1pool.cache.result": "hit",
            "o1pool.cache.seconds": pytest.approx(0, abs=5),
        }
    ]
    assert trace.root["attributes"]["o1pool.cache"] == "l2"


async def test_a_fallback_shows_both_models_and_every_attempt(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle, receiver: Receiver
) -> None:
    handle = await make_sidecar(tracing={"otlp_endpoint": receiver.url}, **CHAIN)
    emulator.set_faults([{"kind": "error_5xx", "status": 503, "model": "o1"}])
    headers, trace_id, _ = traceparent()
    question = prompt()
    completion = await client(handle.url).chat.completions.create(
        model="o1", messages=[{"role": "user", "content": question}], extra_headers=headers
    )
    trace = await receiver.trace(trace_id)
    receiver.assert_no_content(question, completion.choices[0].message.content or "")
    attempts = trace.named("upstream")
    assert [a["name"] for a in attempts] == ["upstream o1"] * 3 + ["upstream o1-mini"]  # retry.max_attempts
    assert [a["attributes"]["o1pool.attempt"] for a in attempts] == [1, 2, 3, 4]
    for failed in attempts[:3]:
        assert failed["attributes"]["http.response.status_code"] == 503
        assert failed["attributes"]["error.type"] == "503"
        assert failed["attributes"]["o1pool.outcome"] == "server_error"
        assert failed["status"] == ERROR
    assert attempts[3]["attributes"]["http.response.status_code"] == 200
    assert [a["attributes"]["o1pool.model"] for a in trace.named("admission")] == ["o1"] * 3 + ["o1-mini"]
    root = trace.root
    assert root["attributes"]["gen_ai.request.model"] == "o1"
    assert root["attributes"]["gen_ai.response.model"] == completion.model
    assert completion.model.startswith("o1-mini")
    assert root["attributes"]["o1pool.degraded"] is True
    assert root["attributes"]["o1pool.attempts"] == 4
    (fallback,) = root["events"]
    assert fallback["name"] == "fallback"
    assert fallback["attributes"] == {"o1pool.fallback.from": "o1", "o1pool.fallback.to": "o1-mini"}


async def test_an_upstream_429_and_its_retry_are_two_attempts(
    make_sidecar: SidecarFactory, make_emulator: EmulatorFactory, receiver: Receiver
) -> None:
    upstream = await one_call_at_a_time(make_emulator)
    handle = await make_sidecar(upstream=upstream, tracing={"otlp_endpoint": receiver.url})  # believes 10
    contexts = [traceparent() for _ in range(2)]
    questions = [prompt() for _ in contexts]
    await asyncio.gather(
        *(
            client(handle.url).chat.completions.create(
                model="o1", messages=[{"role": "user", "content": question}], extra_headers=headers
            )
            for (headers, _, _), question in zip(contexts, questions, strict=True)
        )
    )
    assert upstream.stats()["accounts"]["acct-a"]["models"]["o1"]["rejected"]["concurrency"] >= 1
    traces = [await receiver.trace(trace_id) for _, trace_id, _ in contexts]
    receiver.assert_no_content(*questions)
    (refused,) = [t for t in traces if len(t.named("upstream")) > 1]
    first, *_, last = refused.named("upstream")
    assert first["attributes"]["http.response.status_code"] == 429
    assert first["attributes"]["error.type"] == "429"
    assert first["attributes"]["o1pool.outcome"] == "rate_limited"
    assert last["attributes"]["http.response.status_code"] == 200
    assert len(refused.named("admission")) == len(refused.named("upstream")), "each attempt was admitted"
    assert refused.root["attributes"]["http.response.status_code"] == 200
    assert all(not s["events"] for s in refused.spans), "same model: no fallback"


async def test_a_streamed_request_ends_with_its_stream(
    make_sidecar: SidecarFactory, make_emulator: EmulatorFactory, receiver: Receiver
) -> None:
    upstream = await make_emulator(latency_scale=1.0, models={"o1": {"latency": {"tokens_per_s": 40}}})
    handle = await make_sidecar(upstream=upstream, tracing={"otlp_endpoint": receiver.url})
    headers, trace_id, _ = traceparent()
    question = prompt()
    stream = await client(handle.url).chat.completions.create(
        model="o1",
        messages=[{"role": "user", "content": question}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers,
    )
    first_event_ns, text, usage, reasons, ids = 0, [], None, [], set()
    async for chunk in stream:
        first_event_ns = first_event_ns or time.time_ns()
        ids.add(chunk.id)
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
        usage = chunk.usage or usage
    assert usage is not None and reasons and len(ids) == 1
    trace = await receiver.trace(trace_id)
    root = trace.root
    (attempt,) = trace.named("upstream")
    assert root["end_ns"] > first_event_ns, "the root ended before the client had the stream's first event"
    assert root["end_ns"] >= attempt["end_ns"] > first_event_ns
    attributes = root["attributes"]
    assert attributes["o1pool.stream"] is True
    assert attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert attributes["gen_ai.response.finish_reasons"] == reasons
    assert attributes["gen_ai.response.id"] == ids.pop()
    receiver.assert_no_content(question, "".join(text))


async def test_responses_and_embeddings_are_described_too(
    make_sidecar: SidecarFactory, receiver: Receiver
) -> None:
    handle = await make_sidecar(tracing={"otlp_endpoint": receiver.url})
    question = prompt()
    headers, response_trace, _ = traceparent()
    response = await client(handle.url).responses.create(model="o1", input=question, extra_headers=headers)
    headers, embedding_trace, _ = traceparent()
    embedding = await client(handle.url).embeddings.create(
        model="text-embedding-3-small", input=question, extra_headers=headers
    )
    answer = (await receiver.trace(response_trace)).root
    assert answer["name"] == "chat o1" and answer["attributes"]["http.route"] == "/v1/responses"
    assert response.usage is not None
    assert answer["attributes"]["gen_ai.usage.input_tokens"] == response.usage.input_tokens
    assert answer["attributes"]["gen_ai.usage.output_tokens"] == response.usage.output_tokens
    assert answer["attributes"]["gen_ai.response.finish_reasons"] == [response.status]
    vectors = (await receiver.trace(embedding_trace)).root
    assert vectors["name"] == "embeddings text-embedding-3-small"
    assert vectors["attributes"]["gen_ai.operation.name"] == "embeddings"
    assert vectors["attributes"]["gen_ai.usage.input_tokens"] == embedding.usage.prompt_tokens
    receiver.assert_no_content(question, response.output_text)


async def test_sample_ratio_zero_traces_only_requests_whose_parent_is_sampled(
    make_sidecar: SidecarFactory, receiver: Receiver
) -> None:
    handle = await make_sidecar(tracing={"otlp_endpoint": receiver.url, "sample_ratio": 0.0})
    sdk = client(handle.url)
    unsampled, _, _ = traceparent()
    unsampled["traceparent"] = unsampled["traceparent"][:-2] + "00"
    await sdk.chat.completions.create(model="o1", messages=[{"role": "user", "content": prompt()}])
    await sdk.chat.completions.create(
        model="o1", messages=[{"role": "user", "content": prompt()}], extra_headers=unsampled
    )
    headers, trace_id, _ = traceparent()
    await sdk.chat.completions.create(
        model="o1", messages=[{"role": "user", "content": prompt()}], extra_headers=headers
    )
    await receiver.trace(trace_id)
    await handle.close()  # (flushes: anything else it recorded is in the file now)
    assert {s["trace_id"] for s in receiver.spans()} == {trace_id}


async def test_with_tracing_off_nothing_is_exported_even_with_otel_variables_set(
    make_sidecar: SidecarFactory, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_url(receiver.url))
    off = await make_sidecar()
    headers, off_trace, _ = traceparent()
    await client(off.url).chat.completions.create(
        model="o1", messages=[{"role": "user", "content": prompt()}], extra_headers=headers
    )
    assert off.proxy.tracing.exporting is None
    await off.close()
    on = await make_sidecar(tracing={"otlp_endpoint": receiver.url})
    headers, on_trace, _ = traceparent()
    await client(on.url).chat.completions.create(
        model="o1", messages=[{"role": "user", "content": prompt()}], extra_headers=headers
    )
    await receiver.trace(on_trace)
    exported = {s["trace_id"] for s in receiver.spans()}
    assert off_trace not in exported and exported == {on_trace}


def test_with_tracing_off_the_sdk_and_the_exporter_are_never_imported(tmp_path: Path) -> None:
    """A sidecar that answers a request with tracing off loads neither the SDK's tracing nor the exporter
    (redis-py 8 imports the SDK's metrics package itself when the SDK is installed)."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        import aiohttp
        from o1emulator.embedded import start_emulator
        from o1sidecar.app import start_sidecar
        from o1sidecar.config import SidecarConfig
        from tests.sidecar.conftest import EMULATOR_CONFIG, sidecar_config_dict

        async def main():
            emulator = await start_emulator(EMULATOR_CONFIG)
            sidecar = await start_sidecar(SidecarConfig.from_dict(sidecar_config_dict(emulator)))
            body = {"model": "o1", "messages": [{"role": "user", "content": "hi"}]}
            async with aiohttp.ClientSession() as session:
                async with session.post(sidecar.url + "/chat/completions", json=body) as answer:
                    assert answer.status == 200, await answer.text()
            await sidecar.close()
            await emulator.close()
            loaded = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "o1sidecar.otlp")
            print(sorted(m for m in sys.modules if m.startswith(loaded)))

        asyncio.run(main())
        """
    )
    env = {**os.environ, **{f"O1T_A_{i + 1}": key for i, key in enumerate(KEYS["acct-a"])}}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_an_unreachable_collector_never_fails_a_request_and_is_logged_once(
    make_sidecar: SidecarFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")  # (each failed export gives up sooner)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once it is closed
    handle = await make_sidecar(tracing={"otlp_endpoint": closed})
    exporting = handle.proxy.tracing.exporting
    assert exporting is not None
    sdk = client(handle.url)
    for batches in (1, 2):
        completion = await sdk.chat.completions.create(
            model="o1", messages=[{"role": "user", "content": prompt()}]
        )
        assert completion.choices
        await until(lambda n=batches: exporting.exporter.failed_batches >= n, f"failed export {batches}", 30)
    said = [
        r.getMessage() for r in caplog.records if r.name == "o1sidecar.tracing" and r.levelno >= logging.INFO
    ]
    assert said == [
        f"traces: cannot export to {traces_url(closed)}; spans are dropped until it takes them "
        "(said once; each failure is logged at debug level)"
    ]
    chatty = [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")]
    assert chatty == [], "the exporter's own messages show only at debug level"
    started = time.monotonic()
    await handle.close()
    assert time.monotonic() - started < FLUSH_S + 5, "closing waits for the collector at most FLUSH_S"


async def test_sigterm_flushes_the_spans_still_queued(
    tmp_path: Path, emulator: EmulatorHandle, receiver: Receiver
) -> None:
    """The real process, with batches due only every ten minutes: its spans reach the collector
    because the drain on SIGTERM flushes them."""
    config = sidecar_config_dict(emulator) | {"tracing": {"otlp_endpoint": receiver.url}}
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, **{f"O1T_A_{i + 1}": key for i, key in enumerate(KEYS["acct-a"])}}
    env["OTEL_BSP_SCHEDULE_DELAY"] = "600000"
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
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("o1pool sidecar: serving "), line
        headers, trace_id, _ = traceparent()
        await client(line.split()[3]).chat.completions.create(
            model="o1", messages=[{"role": "user", "content": prompt()}], extra_headers=headers
        )
        assert receiver.spans() == [], "exported before the drain"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    trace = Trace([s for s in receiver.spans() if s["trace_id"] == trace_id])
    assert trace.names() == ["chat o1", "cache lookup", "coalesce", "admission", "upstream o1"]


def test_config_turns_tracing_on_only_with_an_endpoint() -> None:
    assert SidecarConfig.from_dict(sidecar_config_dict_stub()).tracing.otlp_endpoint is None
    with pytest.raises(ConfigError, match=r"tracing\.sample_ratio applies to exported traces"):
        SidecarConfig.from_dict(sidecar_config_dict_stub() | {"tracing": {"sample_ratio": 0.5}})
    with pytest.raises(ConfigError, match=r"tracing\.otlp_endpoint"):
        SidecarConfig.from_dict(sidecar_config_dict_stub() | {"tracing": {"otlp_endpoint": "collector:4318"}})
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://otlp.example/api/v1/traces") == "https://otlp.example/api/v1/traces"


def sidecar_config_dict_stub() -> dict[str, Any]:
    return {"accounts": [{"name": "a", "tier": 5, "keys": [{"name": "k", "env": "UNUSED"}]}]}
