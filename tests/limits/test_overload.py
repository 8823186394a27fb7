"""Four sidecars' limiters sharing two accounts under 3x overload, checked against the emulator's own
limit rules (its ``AccountModelLimiter``, the code that answers 429 upstream), for each algorithm an
upstream may count by: what the limiter admits is never refused upstream, and the binding limit is
used to the full. (The multi-process, SDK-driven version over minutes is tests/load/test_matrix.py.)"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from o1emulator.config import LimiterSpec, Penalty
from o1emulator.config import ResolvedLimits as UpstreamLimits
from o1emulator.limits import AccountModelLimiter, Allowed
from o1pool.procs import RedisServer
from o1sidecar.limits import Demand, UpstreamReport, build_limiter
from o1sidecar.limits.shared import SharedLimiter

from .helpers import config

pytestmark = pytest.mark.redis

MODEL = "o1-mini"
RPM, TPM, SLOTS = 240, 240_000, 6  # per account: 4 requests/s, 4000 tokens/s
WARMUP_S, RUN_S = 3.0, 10.0


@pytest.fixture
async def four_sidecars(redis_server: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    started: list[SharedLimiter] = []

    async def make(**account: Any) -> list[SharedLimiter]:
        limits = {"rpm": RPM, "tpm": TPM, "concurrency": SLOTS}
        cfg = config(
            {"a": limits, "b": limits},
            redis_url=redis_server.url,
            redis={"heartbeat_interval_s": 0.5},
            # The limits are the upstream's: no slow start (the 13 s runs would measure only it).
            # Limits lower than configured, over minutes, are tests/load/test_matrix.py's.
            account={"adaptive": False, **account},
        )
        for _ in range(4):
            limiter = build_limiter(cfg)
            assert isinstance(limiter, SharedLimiter)
            await limiter.start()
            started.append(limiter)
        return started

    yield make
    for limiter in started:
        await asyncio.wait_for(limiter.close(), 10)


async def overload(
    sidecars: list[SharedLimiter], spec: LimiterSpec
) -> tuple[list[str], list[float], float, float]:
    """3x the pool's rate for WARMUP_S + RUN_S; (refusals, admission times, window start, length)."""
    start = time.monotonic()
    upstream = {
        name: AccountModelLimiter(
            UpstreamLimits(rpm=RPM, tpm=TPM, concurrency=SLOTS), 1.0, Penalty(), start, spec=spec
        )
        for name in ("a", "b")
    }
    rejected: list[str] = []
    admitted_at: list[float] = []
    rng = random.Random(7)

    async def request(limiter: SharedLimiter, priority: int, tokens: int) -> None:
        grant = await limiter.acquire(Demand(MODEL, tokens, priority, time.time() + 60), ["a", "b"])
        await asyncio.sleep(rng.uniform(0, 0.005))  # on its way to the upstream
        decision = upstream[grant.account].admit(tokens, time.monotonic())
        if not isinstance(decision, Allowed):
            rejected.append(decision.kind)
            await limiter.release(grant, UpstreamReport(status=429, limit_type="requests"))
            return
        admitted_at.append(time.monotonic())
        await asyncio.sleep(rng.uniform(0.05, 0.4))  # the model thinks
        upstream[grant.account].release()
        await limiter.release(grant, UpstreamReport(status=200, usage_tokens=tokens))

    window_start = start + WARMUP_S
    tasks = []
    while time.monotonic() < window_start + RUN_S:  # 3x the pool's 8 requests/s, mixed
        limiter = sidecars[rng.randrange(4)]
        tasks.append(asyncio.create_task(request(limiter, rng.randrange(10), rng.randrange(100, 900))))
        await asyncio.sleep(1 / 24)
    window = time.monotonic() - window_start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return rejected, admitted_at, window_start, window


@pytest.mark.parametrize(
    "algorithm, window_s", [("token_bucket", 60.0), ("sliding_log", 60.0), ("fixed_window", 60.0)]
)
async def test_paced_pool_is_never_refused_and_uses_the_whole_rate(
    four_sidecars: Callable[..., Any], algorithm: str, window_s: float
) -> None:
    sidecars = await four_sidecars()
    spec = LimiterSpec(algorithm=algorithm, window_s=window_s)  # type: ignore[arg-type]
    rejected, admitted_at, window_start, window = await overload(sidecars, spec)
    assert rejected == []
    in_window = sum(window_start <= t <= window_start + window for t in admitted_at)
    paced = 2 * RPM / 60 * window
    # Full use: within a few requests of the paced rate (the rest is timing at the window's two edges).
    assert paced - 4 <= in_window <= paced + 4, f"admitted {in_window}, the rate allowed {paced:.0f}"


async def test_a_whole_minute_burst_still_fits_a_sliding_log(four_sidecars: Callable[..., Any]) -> None:
    """With ``burst_s: 60`` the pool may spend a minute's quota as fast as it is asked for; the window
    then holds it back until that minute has passed, which is what a 60 s sliding log allows."""
    sidecars = await four_sidecars(burst_s=60.0)
    rejected, admitted_at, _, window = await overload(sidecars, LimiterSpec(algorithm="sliding_log"))
    assert rejected == []
    paced = 2 * RPM / 60 * (window + WARMUP_S)
    assert 2.5 * paced <= len(admitted_at) <= 2 * RPM  # the offered 3x went through, within the minute
