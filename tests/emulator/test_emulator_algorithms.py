"""The emulator's limit algorithms, header modes, real limits below the listed ones, its own charge
estimates, and its per-second timeline: the upstreams the sidecar was not written for."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from o1common.encodings import get_encoding
from o1emulator import EmulatorHandle, start_emulator
from o1emulator.charge import prompt_estimate
from o1emulator.config import EmulatorConfig, LimiterSpec, Penalty, ResolvedLimits
from o1emulator.limits import AccountModelLimiter, Allowed, FixedWindowQuota, Refused, SlidingLogQuota

KEY_A = "sk-test-account-a-1"


def limiter(rpm: int, tpm: int = 10**9, **spec: Any) -> AccountModelLimiter:
    return AccountModelLimiter(
        ResolvedLimits(rpm=rpm, tpm=tpm), 1.0, Penalty(), 0.0, spec=LimiterSpec(**spec)
    )


def admit_all(lim: AccountModelLimiter, times: list[float], charge: int = 1) -> list[bool]:
    out = []
    for t in times:
        decision = lim.admit(charge, t)
        out.append(isinstance(decision, Allowed))
        if isinstance(decision, Allowed):
            lim.release()
    return out


# --- pure algorithms ------------------------------------------------------------------------------


def test_sliding_log_never_holds_more_than_the_limit_in_any_60s() -> None:
    lim = limiter(10, algorithm="sliding_log")
    assert admit_all(lim, [0.0] * 11) == [True] * 10 + [False]
    refused = lim.admit(1, 30.0)
    assert isinstance(refused, Refused) and refused.retry_after_s == pytest.approx(30.0)
    assert not isinstance(lim.admit(1, 59.999), Allowed)
    assert admit_all(lim, [60.0] * 11) == [True] * 10 + [False]  # the first ten aged out at once
    assert lim.window.max_requests == 10 == lim.bounds()[0]


def test_sliding_log_refuses_the_burst_a_full_bucket_would_allow() -> None:
    bucket, log = limiter(60), limiter(60, algorithm="sliding_log")
    times = [0.0] * 60 + [30.0 + i * 0.5 for i in range(60)]  # a minute's burst, then twice the rate
    assert sum(admit_all(bucket, times)) == 60 + 59  # the bucket refills one a second from t = 0
    assert sum(admit_all(log, times)) == 60  # the log stays full until t = 60


def test_fixed_window_resets_on_the_boundary() -> None:
    lim = limiter(10, algorithm="fixed_window")
    assert admit_all(lim, [59.0] * 11) == [True] * 10 + [False]
    refused = lim.admit(1, 59.5)
    assert isinstance(refused, Refused) and refused.retry_after_s == pytest.approx(0.5)
    assert admit_all(lim, [60.0] * 10) == [True] * 10  # 20 inside (59, 60]: the known weakness
    assert lim.window.max_requests == 20 == lim.bounds()[0]


@pytest.mark.parametrize("algorithm", ["sliding_log", "fixed_window"])
def test_sub_minute_windows_enforce_the_minute_limit_per_second(algorithm: str) -> None:
    lim = limiter(120, algorithm=algorithm, window_s=1.0)  # 2 per second
    assert admit_all(lim, [10.0, 10.1, 10.2]) == [True, True, False]
    assert admit_all(lim, [11.2, 11.2, 11.2]) == [True, True, False]
    # Evenly paced at exactly the limit every request goes through.
    lim = limiter(120, algorithm=algorithm, window_s=1.0)
    assert all(admit_all(lim, [100 + i * 0.5 for i in range(240)]))


def test_ten_second_window_allows_a_sixth_of_the_minute() -> None:
    lim = limiter(600, algorithm="sliding_log", window_s=10.0)
    assert sum(admit_all(lim, [0.0] * 200)) == 100
    assert lim.bounds()[0] == 600


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["token_bucket", "sliding_log", "fixed_window"]),
    st.sampled_from([1.0, 10.0, 60.0]),
    st.lists(st.floats(0, 0.4), min_size=1, max_size=400),
)
def test_no_algorithm_admits_more_than_its_60s_bound(
    algorithm: str, window: float, gaps: list[float]
) -> None:
    lim = limiter(120, algorithm=algorithm, window_s=window)
    t = 0.0
    for gap in gaps:
        t += gap
        admit_all(lim, [t])
    assert lim.window.max_requests <= lim.bounds()[0]


@given(st.lists(st.tuples(st.floats(0, 100), st.integers(1, 50)), max_size=60), st.floats(0, 200))
def test_sliding_log_wait_is_exactly_when_the_amount_fits(log: list[tuple[float, int]], now: float) -> None:
    quota = SlidingLogQuota(limit=600, window_s=10.0)  # 100 per 10 s
    for at, amount in sorted(log):
        if quota.fits(amount, at):
            quota.take(amount, at)
    at = max([now, *(a for a, _ in log)])
    wait = quota.wait_for(40, at)
    if wait > 1e-9:  # the wait is rounded up to the microsecond: two microseconds earlier it cannot fit
        assert not quota.fits(40, at + wait - 2e-6)  # (checked first: time only moves forward)
    assert quota.fits(40, at + wait)


def test_fixed_window_wait_and_reset() -> None:
    quota = FixedWindowQuota(limit=60, window_s=10.0)  # 10 per window
    quota.take(10, 12.0)
    assert quota.wait_for(1, 12.0) == pytest.approx(8.0)
    assert quota.reset_in(12.0) == pytest.approx(8.0)
    assert quota.remaining(20.0) == 10 and quota.reset_in(20.0) == 0.0
    assert math.isinf(quota.wait_for(11, 20.0))


def test_constant_retry_after_hides_the_real_wait() -> None:
    lim = limiter(10, algorithm="sliding_log", retry_after_s=1.0)
    admit_all(lim, [0.0] * 10)
    refused = lim.admit(1, 5.0)
    assert isinstance(refused, Refused) and refused.retry_after_s == 1.0  # the real wait is 55 s


def test_limit_scale_enforces_less_than_listed(make_config: Any) -> None:
    config = EmulatorConfig.from_dict(make_config(limiter={"limit_scale": 0.8}))
    account = config.accounts[1]  # b: o1 60 RPM listed
    enforced = config.enforced_limits(account, "o1")
    assert enforced is not None and (enforced.rpm, enforced.tpm) == (48, 80_000)
    assert account.limits_for("o1") is not None and account.limits_for("o1").rpm == 60  # type: ignore[union-attr]


# --- charge estimates -----------------------------------------------------------------------------


def test_estimates_differ_on_non_latin_text() -> None:
    latin = {"messages": [{"role": "user", "content": "Summarise the quarterly plan in three lines."}]}
    cjk = {"messages": [{"role": "user", "content": "请用三行总结季度计划并列出主要风险和对策" * 4}]}
    for body in (latin, cjk):
        chars = prompt_estimate(body, "chars")
        assert chars == math.ceil(len(body["messages"][0]["content"]) / 4)
    # Escaped JSON: every CJK character costs 6 characters; the tokenizer counts about one per character.
    assert prompt_estimate(cjk, "json_chars") > 1.4 * prompt_estimate(cjk, "tiktoken", "o1")
    assert prompt_estimate(latin, "json_chars") > prompt_estimate(latin, "chars")
    text_tokens = len(get_encoding("o200k_base").encode_ordinary(latin["messages"][0]["content"]))
    assert prompt_estimate(latin, "tiktoken", "o1") == text_tokens + 3  # and 3 for the message


# --- served ---------------------------------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post(session: aiohttp.ClientSession, emu: EmulatorHandle, body: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with session.post(emu.base_url + "/chat/completions", json=body, headers=headers) as r:
        await r.read()
        return r


def chat(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "o1", "messages": [{"role": "user", "content": content}], **extra}


async def test_no_rate_headers_and_sliding_log_served(
    clock: Any, make_config: Any, session: aiohttp.ClientSession
) -> None:
    cfg = make_config(limiter={"algorithm": "sliding_log", "headers": False, "retry_after_s": 1})
    emu = await start_emulator(cfg, clock=clock)
    try:
        for _ in range(6):  # o1 on account a: 6 RPM
            r = await post(session, emu, chat())
            assert r.status == 200
            assert not any(h.lower().startswith("x-ratelimit") for h in r.headers)
        r = await post(session, emu, chat())
        assert r.status == 429 and r.headers["retry-after"] == "1"
        assert not any(h.lower().startswith("x-ratelimit") for h in r.headers)
        clock.advance(59.9)
        assert (await post(session, emu, chat())).status == 429  # a bucket would have refilled 5.99
        clock.advance(0.1)
        assert (await post(session, emu, chat())).status == 200
        stats = emu.stats()["accounts"]["a"]["models"]["o1"]
        assert stats["limits"]["algorithm"] == "sliding_log" and stats["exceeded"]["requests"] is False
    finally:
        await emu.close()


async def test_headers_report_the_enforced_limit_and_window(
    clock: Any, make_config: Any, session: aiohttp.ClientSession
) -> None:
    cfg = make_config(limiter={"algorithm": "fixed_window", "window_s": 10, "limit_scale": 0.5})
    emu = await start_emulator(cfg, clock=clock)
    try:
        clock.now = 1000.0  # a window boundary
        r = await post(session, emu, {**chat(max_tokens=10), "model": "gpt-4o"})
        assert r.status == 200
        assert r.headers["x-ratelimit-limit-requests"] == "30"  # 60 RPM listed, half enforced
        assert r.headers["x-ratelimit-remaining-requests"] == "4"  # 30 per minute = 5 per 10 s window
        assert r.headers["x-ratelimit-reset-requests"] == "10s"
    finally:
        await emu.close()


async def test_json_chars_estimate_served(
    clock: Any, make_config: Any, session: aiohttp.ClientSession
) -> None:
    emu = await start_emulator(make_config(tokens={"estimate": "json_chars"}), clock=clock)
    try:
        body = chat("é" * 1000, max_tokens=10)
        r = await post(session, emu, body)
        used = 100_000 - int(r.headers["x-ratelimit-remaining-tokens"])
        assert used == math.ceil(
            len('{"messages": [{"role": "user", "content": "' + "\\u00e9" * 1000 + '"}]}') / 4
        )
    finally:
        await emu.close()


async def test_timeline_counts_admitted_and_refused_per_second(
    clock: Any, make_config: Any, session: aiohttp.ClientSession
) -> None:
    emu = await start_emulator(make_config(), clock=clock)
    try:
        for _ in range(8):  # 6 admitted, 2 refused in second 0
            await post(session, emu, chat())
        clock.advance(20.0)
        await post(session, emu, chat())  # 2 refilled by then
        async with session.get(emu.url + "/admin/timeline") as r:
            timeline = await r.json()
        assert timeline["accounts"]["a"]["o1"] == [[0, 6, 2], [20, 1, 0]]
    finally:
        await emu.close()


# --- independence ---------------------------------------------------------------------------------


def test_the_emulator_never_imports_the_sidecar() -> None:
    package = Path(__file__).resolve().parents[2] / "emulator" / "o1emulator"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "o1sidecar" for n in names), f"{path.name} imports {names}"
    code = (
        "import sys, o1emulator.server, o1emulator.cli\n"
        "print(sorted(m for m in sys.modules if 'o1sidecar' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sub_minute_windows_report_the_rate_they_really_enforce() -> None:
    assert limiter(120, algorithm="fixed_window", window_s=1.0).requests.per_minute() == 120  # 2 a second
    assert limiter(96, algorithm="fixed_window", window_s=1.0).requests.per_minute() == 60  # 1.6 -> 1
    assert limiter(96, algorithm="sliding_log", window_s=10.0).requests.per_minute() == 96  # 16 per 10 s
    assert limiter(96).requests.per_minute() == 96
