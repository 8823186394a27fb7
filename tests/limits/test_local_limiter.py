"""The in-process ``Limiter`` end to end: waiting, priority, aging, deadlines, errors (real time)."""

from __future__ import annotations

import asyncio
import time

import pytest
from o1sidecar.limits import (
    Demand,
    LocalLimiter,
    NoCapacity,
    QueueFull,
    QueueTimeout,
    UpstreamReport,
    build_limiter,
)

from .helpers import config

MODEL = "o1-mini"


def demand(priority: int = 5, tokens: int = 100, deadline_s: float = 30.0) -> Demand:
    return Demand(MODEL, tokens, priority, time.time() + deadline_s)


async def drain(limiter: LocalLimiter, rpm: int) -> None:
    """Empty the RPM bucket: spend until it holds less than one request, then take one more, which
    waits for the refill and leaves the bucket at (almost exactly) zero."""
    while limiter.state().usage_ratio.get(("a", MODEL), {}).get("requests", 0.0) <= 1 - 1 / rpm:
        grant = await limiter.acquire(demand(), ["a"])
        await limiter.release(grant, UpstreamReport(status=200))
    grant = await limiter.acquire(demand(), ["a"])
    await limiter.release(grant, UpstreamReport(status=200))


async def test_build_limiter_without_redis_is_local() -> None:
    limiter = build_limiter(config({"a": {"rpm": 10, "tpm": 1000}}))
    assert isinstance(limiter, LocalLimiter)
    assert limiter.state().mode == "local"


async def test_high_priority_waiters_go_first() -> None:
    limiter = LocalLimiter(config({"a": {"rpm": 240, "tpm": 1_000_000}}))  # 4 per second
    await limiter.start()
    await drain(limiter, 240)
    order: list[int] = []

    async def one(priority: int) -> None:
        grant = await limiter.acquire(demand(priority), ["a"])
        order.append(priority)
        await limiter.release(grant, None)

    tasks = []
    for priority in [1, 1, 1, 9, 9, 9]:  # lows arrive first
        tasks.append(asyncio.create_task(one(priority)))
        await asyncio.sleep(0.01)
    assert limiter.state().queue_length == {1: 3, 9: 3}
    await asyncio.gather(*tasks)
    assert order == [9, 9, 9, 1, 1, 1]
    await limiter.close()


async def test_low_priority_ages_and_is_not_starved() -> None:
    aging = 0.2
    limiter = LocalLimiter(
        config({"a": {"rpm": 300, "tpm": 1_000_000}}, queue={"aging_s_per_level": aging})  # 5 per second
    )
    await limiter.start()
    await drain(limiter, 300)
    served: list[tuple[int, float]] = []  # (priority, arrived)

    async def one(priority: int) -> None:
        arrived = time.monotonic()
        await limiter.acquire(demand(priority), ["a"])
        served.append((priority, arrived))

    low_arrived = time.monotonic()
    low = asyncio.create_task(one(0))
    highs = []
    while not low.done():  # fresh high-priority requests at 10/s, twice the refill rate
        highs.append(asyncio.create_task(one(9)))
        await asyncio.sleep(0.1)
        assert len(highs) < 100, "the low-priority request is starved"
    # Priority 0 ranks like a priority 9 arriving 9 levels of aging later: highs that came before that
    # go first, highs that came after it wait behind the low one (0.3 s slack for scheduling).
    crossover = low_arrived + 9 * aging
    before_low = [arrived for p, arrived in served[: [p for p, _ in served].index(0)] if p == 9]
    assert before_low and max(before_low) < crossover + 0.3
    assert any(not t.done() for t in highs), "highs that came after the crossover must still wait"
    for task in highs:
        task.cancel()
    await asyncio.gather(*highs, return_exceptions=True)
    await limiter.close()


async def test_deadline_passing_in_the_queue_raises_queue_timeout() -> None:
    limiter = LocalLimiter(config({"a": {"rpm": 60, "tpm": 1_000_000}}))
    await limiter.start()
    await drain(limiter, 60)
    started = time.monotonic()
    with pytest.raises(QueueTimeout) as info:
        await limiter.acquire(demand(deadline_s=0.3), ["a"])
    assert 0.25 <= time.monotonic() - started < 2.0
    assert info.value.retry_after_s >= 1
    assert info.value.waited_s >= 0.25
    assert "deadline" in info.value.reason
    assert limiter.state().queue_length == {}
    await limiter.close()


async def test_impossible_and_overflowing_demands_fail_at_once() -> None:
    limiter = LocalLimiter(config({"a": {"rpm": 1, "tpm": 1000}}, queue={"max_length": 2}))
    await limiter.start()
    with pytest.raises(NoCapacity, match="1000"):
        await limiter.acquire(demand(tokens=1001), ["a"])
    with pytest.raises(NoCapacity, match="serves model"):
        await limiter.acquire(demand(), ["nobody"])
    with pytest.raises(QueueTimeout):
        await limiter.acquire(demand(deadline_s=-1), ["a"])
    await limiter.acquire(demand(), ["a"])
    waiting = [asyncio.create_task(limiter.acquire(demand(), ["a"])) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFull):
        await limiter.acquire(demand(), ["a"])
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert limiter.state().queue_length == {}
    await limiter.close()


async def test_a_cancelled_waiter_leaves_and_blocks_nobody() -> None:
    limiter = LocalLimiter(config({"a": {"rpm": 600, "tpm": 1_000_000, "concurrency": 1}}))
    await limiter.start()
    first = await limiter.acquire(demand(), ["a"])
    high = asyncio.create_task(limiter.acquire(demand(9), ["a"]))
    await asyncio.sleep(0.05)
    high.cancel()
    await asyncio.gather(high, return_exceptions=True)
    await limiter.release(first, None)
    low = await asyncio.wait_for(limiter.acquire(demand(1), ["a"]), 1.0)  # not blocked by the ghost
    assert low.account == "a"
    await limiter.close()


async def test_a_429_moves_traffic_to_the_other_account() -> None:
    limiter = LocalLimiter(config({"a": {"rpm": 600, "tpm": 1_000_000}, "b": {"rpm": 60, "tpm": 100_000}}))
    await limiter.start()
    grant = await limiter.acquire(demand(), ["a", "b"])
    assert grant.account == "a"  # most headroom
    await limiter.release(grant, UpstreamReport(status=429, retry_after_s=30, limit_type="requests"))
    for _ in range(3):
        grant = await limiter.acquire(demand(), ["a", "b"])
        assert grant.account == "b"
        await limiter.release(grant, UpstreamReport(status=200))
    await limiter.close()


async def test_waiters_are_woken_by_a_release() -> None:
    limiter = LocalLimiter(config({"a": {"rpm": 6000, "tpm": 1_000_000, "concurrency": 1}}))
    await limiter.start()
    first = await limiter.acquire(demand(), ["a"])
    second = asyncio.create_task(limiter.acquire(demand(), ["a"]))
    await asyncio.sleep(0.05)
    released = time.monotonic()
    await limiter.release(first, None)
    grant = await second
    assert time.monotonic() - released < 0.2  # not the 0.25 s poll: the release woke it
    assert grant.waited_s > 0
    await limiter.close()
