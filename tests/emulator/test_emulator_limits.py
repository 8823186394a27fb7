"""Each limit yields the right answer at the right moment, on an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from o1common.durations import parse_duration
from o1common.encodings import get_encoding
from o1emulator import EmulatorHandle, start_emulator
from o1emulator.config import Penalty, ResolvedLimits
from o1emulator.limits import AccountModelLimiter, Allowed, Refused

KEY_A, KEY_A2, KEY_B = "sk-test-account-a-1", "sk-test-account-a-2", "sk-test-account-b-1"
Post = Callable[..., Any]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def chat(model: str = "o1", content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def call(
    session: aiohttp.ClientSession,
    emu: EmulatorHandle,
    body: dict[str, Any],
    key: str = KEY_A,
    path: str = "/v1/chat/completions",
) -> tuple[int, CIMultiDict[str], dict[str, Any]]:
    async with session.post(emu.url + path, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        return r.status, CIMultiDict(r.headers), await r.json()


async def serve(clock: Any, make_config: Any, **overrides: Any) -> EmulatorHandle:
    return await start_emulator(make_config(**overrides), clock=clock)


# --- pure limiter ---------------------------------------------------------------------------------


def test_buckets_refill_continuously_and_take_both_or_neither() -> None:
    limiter = AccountModelLimiter(ResolvedLimits(rpm=60, tpm=1000), 1.0, Penalty(), now=0.0)
    for _ in range(60):
        assert isinstance(limiter.admit(10, 0.0), Allowed)
        limiter.release()
    refused = limiter.admit(10, 0.0)
    assert isinstance(refused, Refused) and refused.kind == "requests"
    assert refused.retry_after_s == pytest.approx(1.0)  # 60 RPM refills one request per second
    assert isinstance(limiter.admit(10, 0.999), Refused)
    assert isinstance(limiter.admit(10, 1.0), Allowed)
    limiter.release()
    # 61 requests of 10 tokens charged, two seconds of refill.
    tokens_left = limiter.snapshot(2.0)[1]
    assert tokens_left == pytest.approx(1000 - 610 + 2 * 1000 / 60)
    refused = limiter.admit(450, 2.0)
    assert isinstance(refused, Refused) and refused.kind == "tokens"
    assert refused.retry_after_s == pytest.approx((450 - tokens_left) / (1000 / 60))
    assert limiter.snapshot(2.0)[0] == pytest.approx(1.0)  # the RPM token was not taken


def test_burst_sets_capacity_and_window_bound() -> None:
    limiter = AccountModelLimiter(ResolvedLimits(rpm=10, tpm=10_000), 1.5, Penalty(), now=0.0)
    admitted = sum(isinstance(limiter.admit(1, 0.0), Allowed) for _ in range(20))
    assert admitted == 15
    assert limiter.bounds() == (25.0, 25_000.0)


def test_sliding_window_never_exceeds_bucket_bound_under_saturation() -> None:
    limiter = AccountModelLimiter(ResolvedLimits(rpm=30, tpm=10**9), 1.0, Penalty(), now=0.0)
    t = 0.0
    while t < 300:
        if isinstance(limiter.admit(1, t), Allowed):
            limiter.release()
        t += 0.05
    # 30 at t=0, then one every 2 s: 29 more inside (0, 60); the bound is capacity + one minute of refill.
    assert limiter.window.max_requests == 59
    assert limiter.window.max_requests <= limiter.bounds()[0] == 60


def test_penalty_grows_exponentially_and_is_capped() -> None:
    penalty = Penalty(enabled=True, base_s=1.0, max_s=300.0)
    limiter = AccountModelLimiter(ResolvedLimits(rpm=1, tpm=1000), 1.0, penalty, now=0.0)
    assert isinstance(limiter.admit(1, 0.0), Allowed)
    waits = []
    now = 0.0
    for _ in range(12):
        decision = limiter.admit(1, now)
        assert isinstance(decision, Refused)
        waits.append(decision.retry_after_s)
    assert waits[0] == pytest.approx(60.0)  # natural wait beats the 1 s penalty
    assert waits[7:9] == [pytest.approx(128.0), pytest.approx(256.0)]
    assert waits[-1] == pytest.approx(300.0)  # blocked until t=300
    assert isinstance(limiter.admit(1, 300.0), Allowed)
    assert limiter.consecutive_429 == 0
    assert isinstance(limiter.admit(1, 300.0), Refused)  # RPM empty again: 60 s natural wait
    extended = limiter.admit(1, 301.0)  # a request during the block extends it
    assert isinstance(extended, Refused) and extended.retry_after_s == pytest.approx(59.0)


# --- served ---------------------------------------------------------------------------------------


async def test_rpm_429_at_the_right_moment_and_headers_match(
    clock: Any, make_config: Any, session: aiohttp.ClientSession
) -> None:
    emu = await serve(clock, make_config)
    try:
        for i in range(6):  # o1 on account a: 6 RPM, shared by keys a1 and a2
            status, headers, _ = await call(session, emu, chat(), key=KEY_A if i % 2 else KEY_A2)
            assert status == 200
            assert headers["x-ratelimit-limit-requests"] == "6"
            assert headers["x-ratelimit-limit-tokens"] == "100000"
            assert headers["x-ratelimit-remaining-requests"] == str(5 - i)
            assert parse_duration(headers["x-ratelimit-reset-requests"]) == pytest.approx(
                (i + 1) * 10, abs=0.001
            )
        status, headers, body = await call(session, emu, chat())
        assert status == 429
        assert body["error"]["type"] == "requests" and body["error"]["code"] == "rate_limit_exceeded"
        assert body["error"]["param"] is None
        assert body["error"]["message"].startswith(
            "Rate limit reached for o1 in organization org-a on requests per min (RPM): Limit 6, Used 6, "
            "Requested 1. Please try again in 10s."
        )
        assert headers["retry-after"] == "10" and headers["retry-after-ms"] == "10000"
        # account b is untouched
        assert (await call(session, emu, chat(), key=KEY_B))[0] == 200
        clock.advance(9.999)
        assert (await call(session, emu, chat()))[0] == 429
        clock.advance(0.001)
        status, headers, _ = await call(session, emu, chat())
        assert status == 200 and headers["x-ratelimit-remaining-requests"] == "0"
        stats = emu.stats()["accounts"]["a"]
        assert stats["models"]["o1"]["admitted"] == 7
        assert stats["models"]["o1"]["rejected"]["requests"] == 2
        assert stats["keys"]["a1"]["admitted"] + stats["keys"]["a2"]["admitted"] == 7
        assert stats["models"]["o1"]["window_60s"]["max_requests"] == 7
        assert emu.stats()["violations"] == []
    finally:
        await emu.close()


async def test_tpm_charge_max_rule_no_refund(
    clock: Any, make_config: Any, session: aiohttp.ClientSession
) -> None:
    emu = await serve(clock, make_config)
    try:
        # gpt-4o on a: 600 TPM. max(100, 400 chars / 4 = 100) = 100, then max(250, 25) = 250.
        status, headers, body = await call(session, emu, chat("gpt-4o", "x" * 400, max_tokens=100))
        assert status == 200 and headers["x-ratelimit-remaining-tokens"] == "500"
        assert (
            body["usage"]["prompt_tokens"] == len(get_encoding("o200k_base").encode("x" * 400)) + 3
        )  # tokenizer
        status, headers, _ = await call(session, emu, chat("gpt-4o", "x" * 100, max_completion_tokens=250))
        assert headers["x-ratelimit-remaining-tokens"] == "250"
        assert parse_duration(headers["x-ratelimit-reset-tokens"]) == pytest.approx(35.0)
        status, headers, body = await call(session, emu, chat("gpt-4o", "y", max_tokens=300))
        assert status == 429 and body["error"]["type"] == "tokens"
        assert (
            "on tokens per min (TPM): Limit 600, Used 350, Requested 300. Please try again in 5s."
            in (body["error"]["message"])
        )
        assert headers["retry-after-ms"] == "5000"
        clock.advance(5)
        assert (await call(session, emu, chat("gpt-4o", "y", max_tokens=300)))[0] == 200
        assert emu.stats()["accounts"]["a"]["models"]["gpt-4o"]["tokens_charged"] == 650
    finally:
        await emu.close()


async def test_tpm_charge_sum_rule_and_default_budget(
    clock: Any, make_config: Any, session: aiohttp.ClientSession
) -> None:
    emu = await serve(clock, make_config, tokens={"charge": "sum", "default_max_tokens": 50})
    try:
        _, headers, _ = await call(session, emu, chat("gpt-4o", "x" * 40, max_tokens=100))
        assert headers["x-ratelimit-remaining-tokens"] == "490"  # 10 + 100
        _, headers, _ = await call(session, emu, chat("gpt-4o", "x" * 40))
        assert headers["x-ratelimit-remaining-tokens"] == "430"  # 10 + default 50
        _, headers, _ = await call(session, emu, chat("gpt-4o", "x" * 40, max_tokens=10, n=3))
        assert headers["x-ratelimit-remaining-tokens"] == "390"  # 10 + 3 * 10
    finally:
        await emu.close()


async def test_request_too_large(clock: Any, make_config: Any, session: aiohttp.ClientSession) -> None:
    emu = await serve(clock, make_config)
    try:
        status, headers, body = await call(session, emu, chat("gpt-4o", "z", max_tokens=601))
        assert status == 429
        assert body["error"]["message"].startswith(
            "Request too large for gpt-4o in organization org-a on tokens per min (TPM): "
            "Limit 600, Requested 601."
        )
        assert body["error"]["type"] == "tokens" and "retry-after" not in headers
        assert emu.stats()["accounts"]["a"]["models"]["gpt-4o"]["rejected"]["too_large"] == 1
    finally:
        await emu.close()


async def test_context_length_exceeded(clock: Any, make_config: Any, session: aiohttp.ClientSession) -> None:
    emu = await serve(clock, make_config)
    try:  # gpt-4o here: 1000-token window
        status, headers, body = await call(session, emu, chat("gpt-4o", "x" * 2000, max_tokens=600))
        assert status == 400
        assert body["error"]["code"] == "context_length_exceeded"
        assert body["error"]["message"] == (
            "This model's maximum context length is 1000 tokens. However, you requested 1100 tokens "
            "(500 in the messages, 600 in the completion). "
            "Please reduce the length of the messages or completion."
        )
        assert "x-ratelimit-limit-requests" in headers
        status, _, body = await call(session, emu, chat("gpt-4o", "x" * 4004))
        assert status == 400 and "your messages resulted in 1001 tokens" in body["error"]["message"]
        assert emu.stats()["accounts"]["a"]["models"]["gpt-4o"]["admitted"] == 0
    finally:
        await emu.close()


async def test_concurrency_limit(clock: Any, make_config: Any, session: aiohttp.ClientSession) -> None:
    emu = await serve(clock, make_config, faults=[{"kind": "hang", "count": 2, "hang_s": 0.5, "model": "o1"}])
    try:  # o1 on a: concurrency 2; two requests hang 0.5 s (real time), holding both slots
        held = [asyncio.create_task(call(session, emu, chat())) for _ in range(2)]
        for _ in range(100):
            if emu.stats()["accounts"]["a"]["models"]["o1"]["in_flight"] == 2:
                break
            await asyncio.sleep(0.01)
        status, headers, body = await call(session, emu, chat())
        assert status == 429 and body["error"]["type"] == "requests"
        assert "on concurrent requests: Limit 2, Current 2" in body["error"]["message"]
        assert headers["retry-after"] == "1"
        assert [r[0] for r in await asyncio.gather(*held)] == [200, 200]
        assert (await call(session, emu, chat()))[0] == 200
        stats = emu.stats()["accounts"]["a"]["models"]["o1"]
        assert (
            stats["rejected"]["concurrency"] == 1 and stats["max_in_flight"] == 2 and stats["in_flight"] == 0
        )
        assert stats["exceeded"] == {"requests": False, "tokens": False, "concurrency": False}
    finally:
        await emu.close()


async def test_daily_and_monthly_caps(clock: Any, make_config: Any, session: aiohttp.ClientSession) -> None:
    config = make_config()
    config["accounts"][1]["models"]["o1"].update(daily_requests=2, monthly_requests=3)
    emu = await start_emulator(config, clock=clock)
    try:
        assert [(await call(session, emu, chat(), key=KEY_B))[0] for _ in range(2)] == [200, 200]
        status, headers, body = await call(session, emu, chat(), key=KEY_B)
        assert status == 429 and body["error"]["code"] == "insufficient_quota"
        assert body["error"]["type"] == "insufficient_quota" and "retry-after" not in headers
        clock.advance(86_400)
        assert (await call(session, emu, chat(), key=KEY_B))[0] == 200
        assert (await call(session, emu, chat(), key=KEY_B))[0] == 429  # month: 3 used
        clock.advance(30 * 86_400)
        assert (await call(session, emu, chat(), key=KEY_B))[0] == 200
        assert emu.stats()["accounts"]["b"]["models"]["o1"]["rejected"]["quota"] == 2
    finally:
        await emu.close()


async def test_penalty_served(clock: Any, make_config: Any, session: aiohttp.ClientSession) -> None:
    emu = await serve(clock, make_config, penalty={"enabled": True, "base_s": 20, "max_s": 300})
    try:
        for _ in range(6):
            await call(session, emu, chat())
        waits = [int((await call(session, emu, chat()))[1]["retry-after"]) for _ in range(3)]
        assert waits == [20, 40, 80]
        clock.advance(79)
        assert (await call(session, emu, chat()))[0] == 429
    finally:
        await emu.close()


async def test_reset_zeroes_counters_and_optionally_refills(
    clock: Any, make_config: Any, session: aiohttp.ClientSession
) -> None:
    emu = await serve(clock, make_config)
    try:
        for _ in range(7):
            await call(session, emu, chat())
        async with session.post(emu.url + "/admin/reset") as r:
            assert r.status == 200
        stats = emu.stats()["accounts"]["a"]["models"]["o1"]
        assert stats["admitted"] == 0 and stats["rejected_total"] == 0
        assert (await call(session, emu, chat()))[0] == 429  # buckets kept
        async with session.post(emu.url + "/admin/reset", data=b"{not json") as r:
            assert r.status == 400 and "JSON" in (await r.json())["error"]
        async with session.post(emu.url + "/admin/reset", json={"buckets": True}) as r:
            assert (await r.json())["buckets"] is True
        assert (await call(session, emu, chat()))[0] == 200
    finally:
        await emu.close()


async def test_auth_and_model_errors(emulator: EmulatorHandle, session: aiohttp.ClientSession) -> None:
    status, _, body = await call(session, emulator, chat(), key="sk-wrong-key-123456")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert "sk-wrong-key-123456" not in body["error"]["message"] and "sk-***3456" in body["error"]["message"]
    async with session.post(emulator.url + "/v1/chat/completions", json=chat()) as r:
        assert r.status == 401
    status, _, body = await call(session, emulator, chat("gpt-9"))
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, _, body = await call(session, emulator, chat("gpt-4o"), key=KEY_B)  # b has no gpt-4o limits
    assert status == 404 and body["error"]["message"] == (
        "The model `gpt-4o` does not exist or you do not have access to it."
    )
    async with session.post(
        emulator.url + "/v1/chat/completions", data=b"{not json", headers={"Authorization": f"Bearer {KEY_A}"}
    ) as r:
        assert r.status == 400 and "could not parse the JSON body" in (await r.json())["error"]["message"]
    status, _, body = await call(session, emulator, {"model": "o1"})
    assert status == 400 and body["error"]["param"] == "messages"
    assert emulator.stats()["totals"]["401"] == 2


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_tokens", "100", "Invalid type for 'max_tokens': expected an integer, but got str instead."),
        ("max_completion_tokens", 0, "Invalid 'max_completion_tokens': integer below minimum value"),
        ("max_tokens", True, "Invalid type for 'max_tokens'"),
    ],
)
async def test_bad_budget_is_a_clear_400(
    emulator: EmulatorHandle, session: aiohttp.ClientSession, field: str, value: Any, expected: str
) -> None:
    status, _, body = await call(session, emulator, chat(**{field: value}))
    assert status == 400 and body["error"]["param"] == field
    assert body["error"]["message"].startswith(expected)
    assert emulator.stats()["accounts"]["a"]["models"]["o1"]["admitted"] == 0


def test_count_rejected_makes_blind_retries_spend_quota() -> None:
    limiter = AccountModelLimiter(ResolvedLimits(rpm=60, tpm=10**6), 1.0, Penalty(), 0.0, count_rejected=True)
    for _ in range(60):
        assert isinstance(limiter.admit(1, 0.0), Allowed)
    waits = []
    for _ in range(3):  # three blind retries at once: each pushes the next free slot a second further
        decision = limiter.admit(1, 0.0)
        assert isinstance(decision, Refused)
        waits.append(decision.retry_after_s)
    assert waits == [pytest.approx(2.0), pytest.approx(3.0), pytest.approx(4.0)]
    assert isinstance(limiter.admit(1, 3.9), Refused)  # the storm delayed everyone
    assert isinstance(limiter.admit(1, 8.9), Allowed)


async def test_reset_with_buckets_keeps_in_flight_requests_counted(make_config: Any) -> None:
    emu = await start_emulator(make_config(faults=[{"kind": "hang", "count": 1, "hang_s": 0.3}]))
    try:
        async with aiohttp.ClientSession() as session:
            held = asyncio.create_task(call(session, emu, chat()))
            for _ in range(100):
                if emu.stats()["accounts"]["a"]["models"]["o1"]["in_flight"] == 1:
                    break
                await asyncio.sleep(0.01)
            emu.reset(buckets=True)
            assert emu.stats()["accounts"]["a"]["models"]["o1"]["in_flight"] == 1
            assert (await held)[0] == 200
        stats = emu.stats()["accounts"]["a"]["models"]["o1"]
        assert stats["in_flight"] == 0 and stats["admitted"] == 0
        assert stats["remaining"]["requests"] == pytest.approx(6.0)
    finally:
        await emu.close()


@given(
    rpm=st.integers(1, 200),
    tpm=st.integers(100, 100_000),
    burst=st.sampled_from([1.0, 1.2, 2.0]),
    arrivals=st.lists(st.tuples(st.floats(0, 5), st.integers(1, 2000), st.booleans()), max_size=400),
)
@settings(max_examples=60, deadline=None)
def test_admissions_never_beat_the_buckets(
    rpm: int, tpm: int, burst: float, arrivals: list[tuple[float, int, bool]]
) -> None:
    limiter = AccountModelLimiter(ResolvedLimits(rpm=rpm, tpm=tpm, concurrency=3), burst, Penalty(), now=0.0)
    now, admitted = 0.0, []
    for gap, charge, finishes in arrivals:
        now += gap
        decision = limiter.admit(charge, now)
        if isinstance(decision, Allowed):
            admitted.append((now, charge))
            if finishes:
                limiter.release()
        elif decision.kind in ("requests", "tokens"):
            assert decision.retry_after_s is not None and decision.retry_after_s > 0
        if limiter.in_flight >= 3 and finishes:
            limiter.release()
    requests_bound, tokens_bound = limiter.bounds()
    for start, _ in admitted:  # brute-force every 60 s window that starts at an admission
        inside = [c for t, c in admitted if start <= t < start + 60]
        assert len(inside) <= requests_bound and sum(inside) <= tokens_bound
    assert limiter.window.max_requests <= requests_bound and limiter.window.max_tokens <= tokens_bound
    assert limiter.max_in_flight <= 3


async def test_stats_flag_a_window_over_the_bucket_bound(clock: Any, make_config: Any) -> None:
    """The cross-check can fail: feed the window more than the buckets allow and it says so."""
    emu = await start_emulator(make_config(), clock=clock)
    try:
        limiter = emu.emulator.limiters["a", "o1"]
        for _ in range(13):  # bound: 6 capacity + 6 per minute
            limiter.window.add(clock(), 1)
        limiter.max_in_flight = 3  # concurrency limit 2
        stats = emu.stats()
        assert stats["accounts"]["a"]["models"]["o1"]["exceeded"] == {
            "requests": True,
            "tokens": False,
            "concurrency": True,
        }
        assert stats["violations"] == ["a/o1: requests limit exceeded", "a/o1: concurrency limit exceeded"]
    finally:
        await emu.close()


async def test_source_ip_hourly_limit_spans_keys_and_accounts(
    clock: Any, make_config: Any, session: aiohttp.ClientSession
) -> None:
    emu = await serve(clock, make_config, source_ip_requests_per_hour=3)
    try:
        assert (await call(session, emu, chat(), key=KEY_A))[0] == 200
        assert (await call(session, emu, chat(), key=KEY_A2))[0] == 200
        assert (await call(session, emu, chat(), key=KEY_B))[0] == 200
        status, headers, body = await call(session, emu, chat(), key=KEY_B)
        assert status == 429 and body["error"]["type"] == "requests"
        assert body["error"]["message"].startswith(
            "Rate limit reached for requests per hour (RPH) from your IP address: "
            "Limit 3, Used 3, Requested 1. Please try again in 20m0s."
        )
        assert headers["retry-after"] == "1200"
        assert emu.stats()["accounts"]["b"]["models"]["o1"]["rejected"]["source_ip"] == 1
        clock.advance(1200)
        assert (await call(session, emu, chat(), key=KEY_B))[0] == 200
    finally:
        await emu.close()
