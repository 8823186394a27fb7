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
    QuotaExhausted,
    UpstreamReport,
    build_limiter,
)
from o1sidecar.limits.backend import QUEUE_WAIT_S, Admitted, Attempt, Denied, Settlement
from o1sidecar.limits.queueing import QueueingLimiter
from tests.polling import until

from .helpers import config, drain_local, pacing_level

MODEL = "o1-mini"


def demand(priority: int = 5, tokens: int = 100, deadline_s: float = 30.0) -> Demand:
    return Demand(MODEL, tokens, priority, time.time() + deadline_s)


async def test_build_limiter_without_redis_is_local() -> None:
    limiter = build_limiter(config({"a": {"rpm": 10, "tpm": 1000}}))
    assert isinstance(limiter, LocalLimiter)
    assert limiter.state().mode == "local"


async def test_high_priority_waiters_go_first() -> None:
    limiter = LocalLimiter(config({"a": {"rpm": 240, "tpm": 1_000_000}}))  # 4 per second
    await limiter.start()
    await drain_local(limiter)
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
    await drain_local(limiter)
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


async def test_deadline_passing_in_the_queue_raises_queue_timeout_with_an_honest_retry_after() -> None:
    # one request per 10 s, as configured (no slow start: the retry-after figures below are exact)
    limiter = LocalLimiter(config({"a": {"rpm": 6, "tpm": 1_000_000}}, account={"adaptive": False}))
    await limiter.start()
    await drain_local(limiter)
    with pytest.raises(QueueTimeout) as info:
        await limiter.acquire(demand(deadline_s=0.3), ["a"])
    assert info.value.waited_s >= 0.3
    assert "deadline" in info.value.reason
    assert 9 <= info.value.retry_after_s <= 10  # the next request's worth refills in about 10 s
    assert limiter.state().queue_length == {}
    waiters = [asyncio.create_task(limiter.acquire(demand(9), ["a"])) for _ in range(3)]
    await until(lambda: limiter.state().queue_length == {9: 3}, "three high waiters")
    with pytest.raises(QueueTimeout) as info:
        await limiter.acquire(demand(1, deadline_s=0.3), ["a"])
    assert 38 <= info.value.retry_after_s <= 40  # behind three more at one per 10 s
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await limiter.close()


async def test_retry_after_covers_a_cooldown() -> None:
    limiter = LocalLimiter(config({"a": {"rpm": 600, "tpm": 1_000_000}}))
    await limiter.start()
    grant = await limiter.acquire(demand(), ["a"])
    await limiter.release(grant, UpstreamReport(status=429, retry_after_s=20, limit_type="requests"))
    with pytest.raises(QueueTimeout) as info:
        await limiter.acquire(demand(deadline_s=0.2), ["a"])
    assert 20 <= info.value.retry_after_s <= 21  # the cooldown, then the paced rate
    await limiter.close()


async def test_try_acquire_admits_only_with_headroom_and_never_queues() -> None:
    limiter = LocalLimiter(config({"a": {"rpm": 60, "tpm": 1_000_000}}))  # a burst of 1
    await limiter.start()
    first = await limiter.try_acquire(demand(), ["a"])
    assert first is not None and first.waited_s < 0.05
    assert await limiter.try_acquire(demand(), ["a"]) is None
    assert limiter.state().queue_length == {}
    assert await limiter.try_acquire(demand(tokens=2_000_000), ["a"]) is None  # can never fit
    await limiter.close()


async def test_spent_request_caps_fail_at_once_with_when_they_reset() -> None:
    limiter = LocalLimiter(config({"a": {"rpm": 600, "tpm": 1_000_000, "daily_requests": 2}}))
    await limiter.start()
    for _ in range(2):
        await limiter.release(await limiter.acquire(demand(), ["a"]), UpstreamReport(status=200))
    started = time.monotonic()
    with pytest.raises(QuotaExhausted) as info:
        await limiter.acquire(demand(deadline_s=30), ["a"])
    assert time.monotonic() - started < 1.0  # no point waiting until midnight
    assert 0 < info.value.retry_after_s <= 86_400 and "daily or monthly" in info.value.reason
    assert limiter.state().usage[("a", MODEL)].daily_left == 0
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


async def test_pacing_spreads_a_burst_at_the_limits_rate() -> None:
    # 10/s, a burst of 10 (as configured: a new adaptive account's slow start is test_rule's)
    limiter = LocalLimiter(config({"a": {"rpm": 600, "tpm": 1_000_000}}, account={"adaptive": False}))
    await limiter.start()
    grants = await asyncio.gather(*(limiter.acquire(demand(), ["a"]) for _ in range(15)))
    waits = sorted(g.waited_s for g in grants)
    assert max(waits[:10]) < 0.05  # one second's worth at once
    assert 0.4 <= waits[-1] < 1.5  # the other five at 10 per second
    assert pacing_level(limiter, "a", MODEL) < 1
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


class _Overtaken:
    """A shared store whose naming of a waiter reaches the sidecar before the reply that queued it (the
    pub/sub message overtook it): the first attempt names its own ticket, then says 'queue' (behind
    others, the 5 s safety net); the next attempt is admitted."""

    mode = "shared"

    def __init__(self) -> None:
        self.limiter: QueueingLimiter | None = None
        self.attempts = 0

    async def attempt(self, attempt: Attempt) -> Admitted | Denied:
        self.attempts += 1
        if self.attempts == 1:
            assert self.limiter is not None
            self.limiter.named(attempt.demand.model, attempt.ticket, 0.0)
            return Denied("queue", QUEUE_WAIT_S, 1.0, eta_s=0.0)
        return Admitted(attempt.accounts[0].name, attempt.lease_id)

    async def settle(self, settlement: Settlement) -> None:
        pass

    async def forget(self, model: str, tickets: list[str], accounts: object = ()) -> None:
        pass


async def test_a_naming_that_overtakes_the_reply_that_queued_its_waiter_is_kept() -> None:
    """Without the early naming kept, the waiter would ask again only after the 5 s safety net: past
    its 2 s deadline."""
    store = _Overtaken()
    limiter = QueueingLimiter(config({"a": {"rpm": 60, "tpm": 100_000}}), store)  # type: ignore[arg-type]
    store.limiter = limiter
    await limiter.start()
    try:
        grant = await limiter.acquire(Demand("o1-mini", 10, 5, time.time() + 2.0), ["a"])
        assert grant.account == "a" and store.attempts == 2
    finally:
        await limiter.close()
