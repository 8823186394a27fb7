"""Upstream faults injected in the emulator: retries, fallback, cache-only, timeouts, cut streams,
context-length truncation and upstream 429s handled through the limiter."""

from __future__ import annotations

import asyncio
import os
import time

import openai
import pytest

from o1emulator.embedded import EmulatorHandle
from tests.polling import until
from tests.sidecar.conftest import EmulatorFactory, SidecarFactory, one_call_at_a_time

USER = [{"role": "user", "content": "What is a leaky bucket?"}]
CHAIN = {"fallback": {"chains": {"o1": ["o1-mini"]}}}


def admitted(emulator: EmulatorHandle, model: str) -> int:
    return sum(a["models"][model]["admitted"] for a in emulator.stats()["accounts"].values())


def faults(emulator: EmulatorHandle, model: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for account in emulator.stats()["accounts"].values():
        for kind, n in account["models"][model]["faults"].items():
            out[kind] = out.get(kind, 0) + n
    return out


async def test_5xx_is_retried_on_the_same_model(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    handle = await make_sidecar(**CHAIN)
    emulator.set_faults([{"kind": "error_5xx", "status": 503, "count": 2, "model": "o1"}])
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(model="o1", messages=USER)
    assert raw.headers["x-o1pool-model"] == "o1"
    assert raw.headers["x-o1pool-degraded"] == "false"
    assert faults(emulator, "o1").get("error_5xx") == 2
    assert admitted(emulator, "o1-mini") == 0


async def test_persistent_5xx_falls_back_along_the_chain(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    handle = await make_sidecar(**CHAIN)
    emulator.set_faults([{"kind": "error_5xx", "model": "o1"}])
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(model="o1", messages=USER)
    completion = raw.parse()
    assert raw.headers["x-o1pool-model"] == "o1-mini"
    assert raw.headers["x-o1pool-degraded"] == "true"
    assert completion.model.startswith("o1-mini")
    assert faults(emulator, "o1").get("error_5xx") == 3  # retry.max_attempts
    assert admitted(emulator, "o1-mini") == 1
    metrics = await _scrape(handle.metrics_url)
    assert 'o1_api_fallbacks_total{from_model="o1",to_model="o1-mini"} 1.0' in metrics


async def test_every_model_failing_without_cache_is_502(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    handle = await make_sidecar(**CHAIN)
    emulator.set_faults([{"kind": "error_5xx"}])
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        await client.chat.completions.create(model="o1", messages=USER)
    assert err.value.status_code == 502
    assert "o1, o1-mini" in err.value.message and "HTTP 500" in err.value.message
    assert err.value.response.headers["x-should-retry"] == "false"


async def test_cache_only_answers_when_every_model_fails(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    handle = await make_sidecar(cache={"only_deterministic": True}, **CHAIN)
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    first = await client.chat.completions.create(model="o1", messages=USER, temperature=1)
    again = await client.chat.completions.with_raw_response.create(model="o1", messages=USER, temperature=1)
    assert again.headers["x-o1pool-cache"] == "miss", "temperature 1 is not answered from cache normally"
    emulator.set_faults([{"kind": "error_5xx"}])
    raw = await client.chat.completions.with_raw_response.create(model="o1", messages=USER, temperature=1)
    assert raw.headers["x-o1pool-degraded"] == "true"
    assert raw.headers["x-o1pool-cache"] == "l1"
    assert raw.parse().choices[0].message.content in {
        first.choices[0].message.content,
        again.parse().choices[0].message.content,
    }


async def test_timeouts_retry_then_fall_back(make_sidecar: SidecarFactory, emulator: EmulatorHandle) -> None:
    handle = await make_sidecar(timeouts={"read_s": 0.3, "total_s": 5}, **CHAIN)
    emulator.set_faults([{"kind": "hang", "hang_s": 5, "model": "o1"}])
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(model="o1", messages=USER)
    assert raw.headers["x-o1pool-model"] == "o1-mini"
    assert faults(emulator, "o1").get("hang") == 3


async def test_connection_resets_are_retried(make_sidecar: SidecarFactory, emulator: EmulatorHandle) -> None:
    handle = await make_sidecar()
    emulator.set_faults([{"kind": "reset", "count": 1, "model": "o1"}])
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(model="o1", messages=USER)
    assert raw.headers["x-o1pool-model"] == "o1"
    assert faults(emulator, "o1").get("reset") == 1


async def test_cut_stream_reaches_the_client_as_an_error(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    handle = await make_sidecar()
    emulator.set_faults([{"kind": "cut_stream", "after_tokens": 2, "model": "o1"}])
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    stream = await client.chat.completions.create(model="o1", messages=USER, stream=True)
    with pytest.raises(openai.APIError, match="cut part way"):
        async for _ in stream:
            pass
    metrics = await _scrape(handle.metrics_url)
    assert 'reason="stream_cut"' in metrics


async def test_a_stream_longer_than_total_s_is_not_cut(
    make_sidecar: SidecarFactory, make_emulator: EmulatorFactory
) -> None:
    """``total_s`` bounds answers that are not streamed; a stream may take as long as its events keep
    coming (``read_s`` between two)."""
    upstream = await make_emulator(latency_scale=1.0, models={"o1": {"latency": {"tokens_per_s": 40}}})
    handle = await make_sidecar(upstream=upstream, timeouts={"total_s": 0.5, "read_s": 2.0})
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    started = time.monotonic()
    stream = await client.chat.completions.create(
        model="o1", messages=USER, stream=True, max_completion_tokens=60
    )
    chunks = [chunk async for chunk in stream]
    assert time.monotonic() - started > 1.0  # the case at hand: well past total_s
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.APIStatusError) as err:  # the same answer not streamed: cut at total_s
        other = [{"role": "user", "content": "not in the cache"}]
        await client.chat.completions.create(model="o1", messages=other, max_completion_tokens=60)
    assert err.value.status_code == 504, err.value.message


async def test_context_length_truncates_old_messages_and_retries_once(
    make_sidecar, emulator: EmulatorHandle
) -> None:  # type: ignore[no-untyped-def]
    handle = await make_sidecar()
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    history = [{"role": "system", "content": "You are terse."}]
    for i in range(12):
        history.append(
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 200}
        )
    history.append({"role": "user", "content": "And now, the question?"})
    raw = await client.chat.completions.with_raw_response.create(
        model="o1-mini", messages=history, max_completion_tokens=200
    )
    assert raw.parse().choices[0].message.content
    stats = emulator.stats()
    assert stats["totals"]["400"] == 1
    assert admitted(emulator, "o1-mini") == 1


LONG_HISTORY = [
    {"role": "system", "content": "You are terse."},
    *(
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 200}
        for i in range(12)
    ),
    {"role": "user", "content": "And now, the question?"},
]


async def test_a_prompt_over_the_known_window_is_truncated_before_sending(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    """The sidecar knows the window (here the emulator's 2,000 tokens for o1-mini): it drops the oldest
    messages first, so the upstream never answers context_length_exceeded and no call is wasted."""
    handle = await make_sidecar(context={"windows": {"o1-mini": 2000}})
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    completion = await client.chat.completions.create(
        model="o1-mini", messages=LONG_HISTORY, max_completion_tokens=200
    )
    assert completion.choices[0].message.content
    assert emulator.stats()["totals"].get("400", 0) == 0
    assert admitted(emulator, "o1-mini") == 1
    assert "o1_api_context_truncations_total 1.0" in await _scrape(handle.metrics_url)


@pytest.mark.parametrize(
    ("policy", "messages"),
    [
        ("refuse", LONG_HISTORY),
        ("truncate", [{"role": "user", "content": "word " * 3000}]),  # nothing to drop
    ],
)
async def test_a_prompt_that_cannot_fit_is_refused_like_the_upstream_would_without_sending(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle, policy: str, messages: list[dict[str, str]]
) -> None:
    handle = await make_sidecar(context={"windows": {"o1-mini": 2000}, "on_overflow": policy})
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="o1-mini", messages=messages, max_completion_tokens=200)
    assert err.value.code == "context_length_exceeded"
    assert "maximum context length is 2000 tokens" in err.value.message
    assert "nothing was sent upstream" in err.value.message
    assert emulator.stats()["totals"].get("requests", 0) == 0


async def test_context_length_that_truncation_cannot_fix_is_passed_through(
    make_sidecar, emulator: EmulatorHandle
) -> None:  # type: ignore[no-untyped-def]
    handle = await make_sidecar()
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model="o1-mini", messages=[{"role": "user", "content": "word " * 3000}]
        )
    assert err.value.code == "context_length_exceeded"
    assert emulator.stats()["totals"]["400"] == 1


async def test_upstream_429_is_waited_out_through_the_limiter(
    make_sidecar: SidecarFactory, make_emulator: EmulatorFactory
) -> None:
    upstream = await one_call_at_a_time(make_emulator)
    handle = await make_sidecar(upstream=upstream)  # the sidecar believes concurrency is 10
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    import asyncio

    results = await asyncio.gather(
        *(
            client.chat.completions.create(model="o1", messages=[{"role": "user", "content": f"q{i}"}])
            for i in range(2)
        )
    )
    assert all(r.choices for r in results)
    model_stats = upstream.stats()["accounts"]["acct-a"]["models"]["o1"]
    assert model_stats["admitted"] == 2
    assert model_stats["rejected"]["concurrency"] >= 1
    metrics = await _scrape(handle.metrics_url)
    assert "o1_api_upstream_429_total{" in metrics


async def _scrape(url: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


@pytest.mark.parametrize("kind", ["no_headers", "lying_headers"])
async def test_missing_or_lying_rate_limit_headers_do_not_hurt(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle, kind: str
) -> None:
    handle = await make_sidecar()
    emulator.set_faults([{"kind": kind}])
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    for i in range(3):
        completion = await client.chat.completions.create(
            model="o1", messages=[{"role": "user", "content": f"{i}"}]
        )
        assert completion.choices
    assert faults(emulator, "o1").get(kind) == 3


async def test_upstream_429_is_not_retried_blindly(
    make_sidecar: SidecarFactory, make_emulator: EmulatorFactory
) -> None:
    upstream = await make_emulator(
        limiter={"headers": False},  # nothing tells the sidecar the real limit but the 429
        accounts=[
            {
                "name": "acct-a",
                "keys": [
                    {"name": "a1", "key": "sk-emu-acct-a-key-1"},
                    {"name": "a2", "key": "sk-emu-acct-a-key-2"},
                ],
                "models": {"o1": {"rpm": 1, "tpm": 50_000_000}},
            },
        ],
    )
    handle = await make_sidecar(upstream=upstream, cache={"enabled": False})  # believes 10 000 RPM
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    await client.chat.completions.create(model="o1", messages=USER)
    with pytest.raises(openai.RateLimitError) as err:
        await client.chat.completions.create(
            model="o1", messages=USER, extra_headers={"x-o1pool-deadline-ms": "1500"}
        )
    assert int(err.value.response.headers["retry-after"]) >= 1
    rejected = upstream.stats()["accounts"]["acct-a"]["models"]["o1"]["rejected"]
    assert rejected["requests"] == 1, "the sidecar hit the upstream again instead of waiting out the 429"


async def test_the_upstreams_limit_header_is_believed_before_any_429(
    make_sidecar: SidecarFactory, make_emulator: EmulatorFactory
) -> None:
    upstream = await make_emulator(
        accounts=[
            {
                "name": "acct-a",
                "keys": [{"name": "a1", "key": "sk-emu-acct-a-key-1"}],
                "models": {"o1": {"rpm": 1, "tpm": 50_000_000}},
            },
        ],
    )
    handle = await make_sidecar(upstream=upstream, cache={"enabled": False})  # believes 10 000 RPM
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    await client.chat.completions.create(model="o1", messages=USER)  # says x-ratelimit-limit-requests: 1
    with pytest.raises(openai.RateLimitError) as err:
        await client.chat.completions.create(
            model="o1", messages=USER, extra_headers={"x-o1pool-deadline-ms": "1500"}
        )
    assert err.value.code == "queue_timeout"
    assert 50 <= int(err.value.response.headers["retry-after"]) <= 61  # one request a minute
    assert upstream.stats()["accounts"]["acct-a"]["models"]["o1"]["rejected_total"] == 0
    effective = handle.proxy.limiter.state().usage[("acct-a", "o1")].effective_rpm
    assert effective == 1.0


async def test_model_no_account_serves_goes_straight_to_its_fallback(make_sidecar: SidecarFactory) -> None:
    handle = await make_sidecar(fallback={"chains": {"o1-preview": ["o1"]}})
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(model="o1-preview", messages=USER)
    assert raw.headers["x-o1pool-model"] == "o1" and raw.headers["x-o1pool-degraded"] == "true"


async def test_responses_input_is_truncated_too(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    handle = await make_sidecar()
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    items = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 200}
        for i in range(12)
    ]
    items.append({"role": "user", "content": "So?"})
    response = await client.responses.create(
        model="o1-mini", input=items, instructions="Be brief.", max_output_tokens=200
    )
    assert response.output_text
    assert emulator.stats()["totals"]["400"] == 1
    assert admitted(emulator, "o1-mini") == 1


async def test_a_refused_key_is_skipped_for_the_accounts_next_key(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("O1T_A_1", "sk-revoked-key-0000000000000000")
    handle = await make_sidecar()
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    for i in range(6):  # whichever key round-robin starts with, every request is served upstream
        messages = [{"role": "user", "content": f"question {i}"}]
        raw = await client.chat.completions.with_raw_response.create(model="o1", messages=messages)
        assert (raw.headers["x-o1pool-account"], raw.headers["x-o1pool-cache"]) == ("acct-a", "miss")
    assert emulator.stats()["totals"]["401"] == 1  # refused once, then left in quarantine
    assert handle.proxy.routes["acct-a"].in_quarantine() == ["a1"]


async def test_an_account_whose_only_key_is_refused_fails_naming_the_key_not_its_value(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("O1T_B_1", "sk-revoked-key-1111111111111111")
    handle = await make_sidecar(accounts=("acct-b",))
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        await client.chat.completions.create(model="o1", messages=USER)
    assert err.value.status_code == 502
    assert "refused key acct-b/b1" in err.value.message
    assert "1111" not in err.value.message


async def test_a_model_down_everywhere_is_skipped_for_its_fallback(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    """o1 answers 500 on every account: once that has lasted (failures in a row over 2 s), requests
    go straight to gpt-4o and spend no attempt on o1 until its probe time."""
    handle = await make_sidecar(
        accounts=("acct-a", "acct-b"),
        fallback={"chains": {"o1": ["gpt-4o"]}},
        retry={"max_attempts": 2, "backoff_base_s": 0.01},
        cache={"enabled": False},
    )
    emulator.set_faults([{"kind": "error_5xx", "model": "o1"}])
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)

    async def ask() -> str:
        raw = await client.chat.completions.with_raw_response.create(model="o1", messages=USER)
        return raw.headers["x-o1pool-model"]

    async def learned() -> bool:
        assert await ask() == "gpt-4o"  # answered by the fallback while o1 fails
        await asyncio.sleep(0.1)
        return handle.proxy.outages.down("o1")

    await until(learned, "o1 marked down", timeout_s=20)
    before = faults(emulator, "o1").get("error_5xx", 0)
    assert [await ask() for _ in range(10)] == ["gpt-4o"] * 10
    assert faults(emulator, "o1").get("error_5xx", 0) == before  # not one more call to o1
    assert '"o1",to_model="gpt-4o"' in await _scrape(handle.metrics_url)


async def test_random_upstream_faults_are_answered_by_retries_and_the_fallback_model(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    """The reliability target's fault mix on every model: 10% 5xx, 5% hangs, 5% connection resets.
    Retries and the fallback model answer nearly every request (the benchmark figure is in
    docs/reliability.md); here at least 99% of 300 (a 6-attempt chain fails 1 request in 15,000)."""
    handle = await make_sidecar(
        fallback={"chains": {"o1": ["o1-mini"]}},
        retry={"max_attempts": 3, "backoff_base_s": 0.01},
        timeouts={"total_s": 0.5, "read_s": 0.5},
        cache={"enabled": False},
    )
    emulator.set_faults(
        [
            {"kind": "error_5xx", "probability": 0.10},
            {"kind": "hang", "probability": 0.05, "hang_s": 5},
            {"kind": "reset", "probability": 0.05},
        ]
    )
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    gate = asyncio.Semaphore(20)

    async def ask(i: int) -> int:
        async with gate:
            try:
                messages = [{"role": "user", "content": f"question {i}"}]
                await client.chat.completions.create(model="o1", messages=messages)
                return 200
            except openai.APIStatusError as exc:
                return exc.status_code

    n = int(os.environ.get("O1POOL_FAULT_REQUESTS", "300"))  # docs/reliability.md ran 3,000
    statuses = await asyncio.gather(*(ask(i) for i in range(n)))
    struck = sum(sum(faults(emulator, m).values()) for m in ("o1", "o1-mini"))
    assert struck > 30  # the faults did strike (about a fifth of the calls)
    ok = statuses.count(200)
    print(f"{ok}/{n} answered 200 under 10% 5xx, 5% hangs, 5% resets; {struck} calls struck by a fault")
    assert ok >= 0.99 * n, f"{ok}/{n} answered 200; others: {sorted(s for s in statuses if s != 200)}"
