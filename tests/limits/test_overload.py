"""Four sidecars' limiters sharing two accounts under 3x overload, checked against the emulator's own
limit rules (its ``AccountModelLimiter``, the code that answers 429 upstream): nothing the limiter
admits is ever rejected upstream, and the binding limit is used to the full."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest
from o1emulator.config import Penalty
from o1emulator.config import ResolvedLimits as UpstreamLimits
from o1emulator.limits import AccountModelLimiter, Admitted
from o1sidecar.limits import Demand, UpstreamReport, build_limiter
from o1sidecar.limits.shared import SharedLimiter

from o1pool.procs import RedisServer

from .helpers import config

pytestmark = pytest.mark.redis

MODEL = "o1-mini"
RPM, TPM, SLOTS = 240, 240_000, 6  # per account: 4 requests/s, 4000 tokens/s
RUN_S = 10.0


@pytest.fixture
async def four_sidecars(redis_server: RedisServer) -> AsyncIterator[list[SharedLimiter]]:
    limits = {"rpm": RPM, "tpm": TPM, "concurrency": SLOTS}
    cfg = config({"a": limits, "b": limits}, redis_url=redis_server.url, redis={"heartbeat_interval_s": 0.5})
    sidecars = []
    for _ in range(4):
        limiter = build_limiter(cfg)
        assert isinstance(limiter, SharedLimiter)
        await limiter.start()
        sidecars.append(limiter)
    yield sidecars
    for limiter in sidecars:
        await asyncio.wait_for(limiter.close(), 10)


async def test_no_upstream_429_and_full_use_under_3x_overload(four_sidecars: list[SharedLimiter]) -> None:
    start = time.monotonic()
    upstream = {
        name: AccountModelLimiter(UpstreamLimits(rpm=RPM, tpm=TPM, concurrency=SLOTS), 1.0, Penalty(), start)
        for name in ("a", "b")
    }
    rejected: list[str] = []
    admitted_at: list[float] = []
    rng = random.Random(7)

    async def request(limiter: SharedLimiter, priority: int, tokens: int, think: bool = True) -> float:
        grant = await limiter.acquire(Demand(MODEL, tokens, priority, time.time() + 60), ["a", "b"])
        await asyncio.sleep(rng.uniform(0, 0.005))  # on its way to the upstream
        decision = upstream[grant.account].admit(tokens, time.monotonic())
        if not isinstance(decision, Admitted):
            rejected.append(decision.kind)
            await limiter.release(grant, UpstreamReport(status=429, limit_type="requests"))
            return grant.waited_s
        admitted_at.append(time.monotonic())
        if think:
            await asyncio.sleep(rng.uniform(0.05, 0.4))  # the model thinks
        upstream[grant.account].release()
        await limiter.release(grant, UpstreamReport(status=200, usage_tokens=tokens))
        return grant.waited_s

    # Spend the initial full buckets (the same requests reach the upstream's buckets too).

    async def most_left() -> float:
        """The fullest account's requests, as Redis has them now."""
        c, keys = four_sidecars[0].client, four_sidecars[0].keys
        seconds, micros = await c.time()
        levels = []
        for account in upstream:
            r, ts = await c.hmget(keys.account(account, MODEL), "r", "ts")
            levels.append(min(RPM, float(r) + max(0.0, seconds + micros / 1e6 - float(ts)) * RPM / 60))
        return max(levels)

    # Spent when a request had to wait for the refill and no account holds a whole request.
    while await request(four_sidecars[0], 5, 100, think=False) < 0.05 or await most_left() >= 1:
        pass
    # Offered: 3x the pool's 8 requests/s, spread over four sidecars, mixed priorities and sizes.
    window_start = time.monotonic()
    stop_at = window_start + RUN_S
    tasks = []
    while time.monotonic() < stop_at:
        limiter = four_sidecars[rng.randrange(4)]
        tasks.append(asyncio.create_task(request(limiter, rng.randrange(10), rng.randrange(100, 900))))
        await asyncio.sleep(1 / 24)
    window = time.monotonic() - window_start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    in_window = sum(window_start <= t <= window_start + window for t in admitted_at)
    assert rejected == []
    in_window = sum(window_start <= t <= window_start + window for t in admitted_at)
    refilled = 2 * RPM / 60 * window
    # Full use: within a few requests of what refilled (the rest is timing at the window's two edges).
    assert refilled - 4 <= in_window <= refilled + 4, f"admitted {in_window}, refill allowed {refilled:.0f}"
