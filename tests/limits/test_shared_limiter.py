"""Several ``SharedLimiter``s (sidecars) on one real redis-server: priority across them, deadlines,
live-sidecar counting, and Redis going away and coming back under load."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from o1pool.procs import RedisServer
from o1sidecar.config import SidecarConfig
from o1sidecar.limits import Demand, QueueTimeout, UpstreamReport, build_limiter
from o1sidecar.limits.shared import SharedLimiter
from tests.polling import until

from .helpers import config, drain_shared

pytestmark = pytest.mark.redis

MODEL = "o1-mini"
FAST_REDIS = {
    "heartbeat_interval_s": 0.2,
    "breaker_failures": 2,
    "breaker_reset_s": 0.5,
    "op_timeout_ms": 200,
}


def demand(priority: int = 5, deadline_s: float = 30.0, tokens: int = 100) -> Demand:
    return Demand(MODEL, tokens, priority, time.time() + deadline_s)


async def _queue_empty(limiter: SharedLimiter) -> bool:
    return await limiter.client.zcard(limiter.keys.queue(MODEL)) == 0


@pytest.fixture
async def sidecars(redis_server: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    started: list[SharedLimiter] = []

    async def make(limits: dict[str, Any], n: int = 2, **sections: Any) -> list[SharedLimiter]:
        sections.setdefault("redis", {}).update(FAST_REDIS)
        cfg: SidecarConfig = config({"a": limits}, redis_url=redis_server.url, **sections)
        out = []
        for i in range(n):
            limiter = build_limiter(cfg)
            assert isinstance(limiter, SharedLimiter)
            limiter.sidecar_id = f"sidecar-{i}"
            await limiter.start()
            out.append(limiter)
        started.extend(out)
        return out

    yield make
    for limiter in started:
        await asyncio.wait_for(limiter.close(), 10)


async def test_two_sidecars_count_each_other(sidecars: Callable[..., Any]) -> None:
    s1, s2 = await sidecars({"rpm": 100, "tpm": 10_000})
    await until(lambda: s1.state().live_sidecars == s2.state().live_sidecars == 2, "both heartbeats seen")
    assert s1.state().mode == s2.state().mode == "shared"


async def test_high_priority_in_one_sidecar_beats_low_priority_in_another(
    sidecars: Callable[..., Any],
) -> None:
    s1, s2 = await sidecars({"rpm": 10_000, "tpm": 10_000_000, "concurrency": 1})
    blocker = await s1.acquire(demand(), ["a"])
    order: list[str] = []

    async def one(limiter: SharedLimiter, label: str, priority: int) -> None:
        grant = await limiter.acquire(demand(priority), ["a"])
        order.append(label)
        await asyncio.sleep(0.02)
        await limiter.release(grant, UpstreamReport(status=200))

    tasks = [asyncio.create_task(one(s1, "low", 1)) for _ in range(3)]
    await until(lambda: s1.state().queue_length == {1: 3}, "the lows queued first, in sidecar 1")
    tasks += [asyncio.create_task(one(s2, "high", 9)) for _ in range(3)]
    await until(lambda: s2.state().queue_length == {9: 3}, "the highs queued in sidecar 2")
    await s1.release(blocker, None)
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert order == ["high"] * 3 + ["low"] * 3


async def test_priority_holds_across_sidecars_when_rate_limited(sidecars: Callable[..., Any]) -> None:
    s1, s2 = await sidecars({"rpm": 120, "tpm": 10_000_000})  # 2 requests per second
    await drain_shared(s1)
    order: list[int] = []

    async def one(limiter: SharedLimiter, priority: int) -> None:
        await limiter.acquire(demand(priority), ["a"])
        order.append(priority)

    tasks = [asyncio.create_task(one(s1, 2)) for _ in range(2)]
    tasks += [asyncio.create_task(one(s2, 3)) for _ in range(2)]
    await until(
        lambda: s1.state().queue_length == {2: 2} and s2.state().queue_length == {3: 2}, "lows queued"
    )
    tasks += [asyncio.create_task(one(s1, 8)) for _ in range(2)]
    tasks += [asyncio.create_task(one(s2, 9)) for _ in range(2)]
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert order == [9, 9, 8, 8, 3, 3, 2, 2]


async def test_low_priority_is_not_starved_across_sidecars(sidecars: Callable[..., Any]) -> None:
    aging = 0.2
    s1, s2 = await sidecars({"rpm": 300, "tpm": 10_000_000}, queue={"aging_s_per_level": aging})  # 5/s
    await drain_shared(s1)
    served: list[tuple[int, float]] = []  # (priority, arrived)

    async def one(limiter: SharedLimiter, priority: int) -> None:
        arrived = time.monotonic()
        await limiter.acquire(demand(priority), ["a"])
        served.append((priority, arrived))

    low_arrived = time.monotonic()
    low = asyncio.create_task(one(s1, 0))
    highs = []
    while not low.done():  # sidecar 2 keeps sending fresh high-priority work at twice the refill rate
        highs.append(asyncio.create_task(one(s2, 9)))
        await asyncio.sleep(0.1)
        assert len(highs) < 100, "the low-priority request is starved"
    # Priority 0 ranks like a priority 9 arriving 9 levels of aging later: highs that came before that
    # go first, highs that came after it wait behind the low one (0.3 s slack for scheduling).
    crossover = low_arrived + 9 * aging
    before_low = [arrived for p, arrived in served[: [p for p, _ in served].index(0)] if p == 9]
    assert before_low and max(before_low) < crossover + 0.3
    assert any(t.done() is False for t in highs), "highs that came after the crossover must still wait"
    for task in highs:
        task.cancel()
    await asyncio.gather(*highs, return_exceptions=True)


async def test_deadline_in_the_shared_queue_raises_queue_timeout(sidecars: Callable[..., Any]) -> None:
    (s1,) = await sidecars({"rpm": 10_000, "tpm": 10_000_000, "concurrency": 1}, n=1)
    await s1.acquire(demand(), ["a"])
    started = time.monotonic()
    with pytest.raises(QueueTimeout) as info:
        await s1.acquire(demand(deadline_s=0.4), ["a"])
    assert time.monotonic() - started >= 0.35
    assert info.value.retry_after_s >= 1 and "concurrency" in info.value.reason
    # Its ticket goes with it (one round trip later), not after the ticket TTL.
    await until(lambda: _queue_empty(s1), "the timed-out ticket leaving the shared queue", timeout_s=1.0)


@pytest.mark.parametrize("older", [False, True], ids=["its-own-channel", "an-older-sidecars-ticket"])
async def test_release_wakes_waiters_of_other_sidecars(sidecars: Callable[..., Any], older: bool) -> None:
    """The head is named to the sidecar holding it alone, on its own channel; a ticket that names no
    sidecar (an older sidecar's) on the pool's channel, which every sidecar hears."""
    s1, s2 = await sidecars({"rpm": 10_000, "tpm": 10_000_000, "concurrency": 1})
    if older:
        s2.ticket_prefix = ""
    pool, own = s1.keys.wake_channel(), s1.keys.wake_channel_of(s2.wake_tag)
    pubsub = s1.client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(pool, own)
    held = await s1.acquire(demand(), ["a"])
    waiter = asyncio.create_task(s2.acquire(demand(), ["a"]))
    await until(lambda: s2.state().queue_length == {5: 1}, "a waiter in sidecar 2")
    (waiting,) = s2.waiting()
    assert waiting.ticket.startswith("" if older else f"{s2.wake_tag}.")
    await s1.release(held, None)
    messages = []

    async def published() -> bool:
        message = await pubsub.get_message(timeout=0.1)  # None for the (ignored) subscribe reply
        if message is not None:
            messages.append((message["channel"], message["data"]))
        return bool(messages)

    await until(published, "a wake-up published for the model", 2.0)
    # the queue's head, named: admissible now
    assert messages == [(pool if older else own, f"{MODEL};{waiting.ticket};0")]
    await asyncio.wait_for(waiter, 5)
    await pubsub.aclose()


async def test_a_waiter_behind_another_sidecars_is_named_to_its_own_sidecar_when_its_turn_comes(
    sidecars: Callable[..., Any],
) -> None:
    """A waiter behind others asks again only every 5 s unless the store names it; with a 3 s deadline
    it is served only if the naming reaches its sidecar (on that sidecar's own channel)."""
    s1, s2 = await sidecars({"rpm": 10_000, "tpm": 10_000_000, "concurrency": 1})
    held = await s1.acquire(demand(), ["a"])
    first = asyncio.create_task(s1.acquire(demand(), ["a"]))
    await until(lambda: s1.state().queue_length == {5: 1}, "a waiter in sidecar 1")
    second = asyncio.create_task(s2.acquire(demand(deadline_s=3.0), ["a"]))
    await until(lambda: s2.state().queue_length == {5: 1}, "a waiter behind it in sidecar 2")
    await s1.release(held, None)
    await s1.release(await asyncio.wait_for(first, 2), None)
    grant = await asyncio.wait_for(second, 5)  # (QueueTimeout at 3 s if it had to ask by itself)
    await s2.release(grant, None)


async def test_redis_down_then_back_under_load(
    sidecars: Callable[..., Any], redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="o1sidecar.limits")
    s1, s2 = await sidecars({"rpm": 600, "tpm": 10_000_000})  # 10 per second for the pool
    await asyncio.sleep(0.5)
    admitted: list[tuple[float, str]] = []
    started = finished = 0
    stop = asyncio.Event()

    async def worker(limiter: SharedLimiter) -> None:
        nonlocal started, finished
        while not stop.is_set():
            started += 1
            grant = await limiter.acquire(demand(deadline_s=60), ["a"])
            admitted.append((time.monotonic(), limiter.state().mode))
            await limiter.release(grant, UpstreamReport(status=200))
            finished += 1

    workers = [asyncio.create_task(worker(s)) for s in (s1, s2) for _ in range(4)]
    await asyncio.sleep(1.0)
    redis_server.stop()
    await until(lambda: s1.state().mode == s2.state().mode == "local", "the switch to local limits", 5.0)
    local_from = time.monotonic()
    await asyncio.sleep(3.0)
    local_until = time.monotonic()
    redis_server.start()
    await until(lambda: s1.state().mode == s2.state().mode == "shared", "the return to shared limits", 10.0)
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*workers), 30)

    assert started == finished  # every acquire was answered
    in_local = [t for t, _ in admitted if local_from <= t <= local_until]
    # Each sidecar held half of 600 RPM (5/s), starting empty: the pool never exceeded 10/s.
    assert len(in_local) <= 10 * (local_until - local_from) + 2
    assert len(in_local) >= 3  # but it kept serving
    switches = [r.getMessage() for r in caplog.records]
    assert sum("limiting locally at 50%" in m for m in switches) == 2
    assert sum("shared limits again" in m for m in switches) == 2


async def test_heartbeats_renew_the_leases_of_long_calls(sidecars: Callable[..., Any]) -> None:
    (s1,) = await sidecars({"rpm": 100, "tpm": 100_000, "concurrency": 2}, n=1)
    grant = await s1.acquire(demand(), ["a"])
    key = s1.keys.leases("a", MODEL)
    first = await s1.client.zscore(key, grant.lease_id)
    await asyncio.sleep(0.6)  # three heartbeats at 0.2 s
    renewed = await s1.client.zscore(key, grant.lease_id)
    assert first is not None and renewed is not None and renewed > first + 0.3
    await s1.release(grant, None)

    async def lease_gone() -> bool:
        return await s1.client.zscore(key, grant.lease_id) is None

    await until(lease_gone, "the lease settled in the background", 2.0)


class _CountedAttempts:
    """Counts the admission attempts a limiter makes of its store (each is one admit.lua call)."""

    def __init__(self, limiter: SharedLimiter) -> None:
        self.calls = 0
        self.tickets: set[str] = set()  # the waiters that asked
        self._attempt = limiter.backend.attempt
        limiter.backend.attempt = self  # type: ignore[method-assign]

    async def __call__(self, attempt: Any) -> Any:
        self.calls += 1
        self.tickets.add(attempt.ticket)
        return await self._attempt(attempt)


def _counted_forgets(limiter: SharedLimiter) -> list[list[str]]:
    """The tickets each of ``limiter``'s drop calls (forget.lua) takes out of the store, from now on."""
    forgets: list[list[str]] = []
    forget = limiter.backend.forget

    async def counted(model: str, tickets: list[str], *accounts: Any) -> None:
        forgets.append(tickets)
        await forget(model, tickets, *accounts)

    limiter.backend.forget = counted  # type: ignore[method-assign]
    return forgets


async def test_a_sidecar_holds_back_arrivals_behind_its_own_waiter_and_they_keep_their_place(
    sidecars: Callable[..., Any],
) -> None:
    """Arrivals that would queue behind a waiter this sidecar already has in the shared queue wait here
    without a ticket: one ticket per sidecar in the store, however many wait. Each joins the store's
    queue in the step that admits the one before it, ranked from when it arrived: priority and age
    order across sidecars as if every one had queued on arrival."""
    s1, s2 = await sidecars({"rpm": 10_000, "tpm": 10_000_000, "concurrency": 1})
    counted = [_CountedAttempts(s) for s in (s1, s2)]
    blocker = await s1.acquire(demand(), ["a"])
    order: list[str] = []

    async def one(limiter: SharedLimiter, label: str, priority: int) -> None:
        grant = await limiter.acquire(demand(priority), ["a"])
        order.append(label)
        await asyncio.sleep(0.01)
        await limiter.release(grant, UpstreamReport(status=200))

    tasks = [asyncio.create_task(one(s1, "s1 p8 first", 8))]
    await until(lambda: s1.state().queue_length == {8: 1}, "a waiter of sidecar 1 in the shared queue")
    for label, priority in (("s1 p2", 2), ("s1 p5", 5), ("s1 p8", 8)):  # held back, in this order
        tasks.append(asyncio.create_task(one(s1, label, priority)))
        await asyncio.sleep(0.05)
    for label, priority in (("s2 p5", 5), ("s2 p2", 2), ("s2 p2 later", 2)):  # later than sidecar 1's
        tasks.append(asyncio.create_task(one(s2, label, priority)))
        await asyncio.sleep(0.05)
    await until(lambda: sum(s1.state().queue_length.values()) == 4, "four waiting in sidecar 1")
    await until(lambda: sum(s2.state().queue_length.values()) == 3, "three waiting in sidecar 2")
    assert await s1.client.zcard(s1.keys.queue(MODEL)) == 2, "one ticket in the store per sidecar"
    # (the blocker and the waiter of each sidecar in the store; the waiters re-check now and then)
    assert [len(c.tickets) for c in counted] == [2, 1], "an arrival held back costs no store call"

    before = sum(c.calls for c in counted)
    await s1.release(blocker, None)
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    # priority first, then arrival (aging 10 s a level: no crossover here)
    assert order == ["s1 p8 first", "s1 p8", "s1 p5", "s2 p5", "s1 p2", "s2 p2", "s2 p2 later"]
    # About one call per admission: the named head's, which also queues the next held back (asking
    # for itself, each would be one more), give or take a naming that crosses sidecars.
    assert sum(c.calls for c in counted) - before <= 7 + 2
    assert await s1.client.zcard(s1.keys.queue(MODEL)) == 0


async def test_a_held_back_waiter_that_times_out_or_leaves_leaves_nothing_in_the_store(
    sidecars: Callable[..., Any],
) -> None:
    (s1,) = await sidecars({"rpm": 10_000, "tpm": 10_000_000, "concurrency": 1}, n=1)
    blocker = await s1.acquire(demand(), ["a"])
    first = asyncio.create_task(s1.acquire(demand(), ["a"]))
    await until(lambda: s1.state().queue_length == {5: 1}, "a waiter in the shared queue")
    counted = _CountedAttempts(s1)
    leaving = asyncio.create_task(s1.acquire(demand(), ["a"]))
    started = time.monotonic()
    with pytest.raises(QueueTimeout) as info:
        await s1.acquire(demand(deadline_s=0.4), ["a"])
    assert time.monotonic() - started >= 0.35
    # what the waiter it was held behind was last told: the queue, behind the blocker's concurrency slot
    assert info.value.retry_after_s >= 1 and "concurrency" in info.value.reason
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    assert counted.tickets <= {w.ticket for w in s1.waiting()}, "only the waiter in the store asked"
    assert await s1.client.zcard(s1.keys.queue(MODEL)) == 1  # the first waiter's ticket alone
    await s1.release(blocker, None)
    await s1.release(await asyncio.wait_for(first, 5), None)
    await until(lambda: _queue_empty(s1), "the shared queue empty", timeout_s=2.0)
    assert s1.state().queue_length == {}


async def test_a_successor_named_before_its_reply_keeps_the_stores_order(
    sidecars: Callable[..., Any],
) -> None:
    """A successor joins ranked by its client's fair share, which can be well behind the rank its sidecar
    estimated. If its naming overtakes the reply of the attempt that queued it, it must still take its
    place here by the store's rank: a request of another client ranked between the two in the store is
    then this sidecar's best, and is served when the slot frees (not held up behind it until the 5 s
    safety net, past its 4 s deadline)."""
    (s1,) = await sidecars({"rpm": 600, "tpm": 10_000_000, "concurrency": 1}, n=1)
    attempt = s1.backend.attempt

    async def naming_first(a: Any) -> Any:
        result = await attempt(a)
        if a.successor is not None:
            await asyncio.sleep(0.2)  # (the reply comes after the naming)
        return result

    s1.backend.attempt = naming_first  # type: ignore[method-assign]

    def of(client: str, weight: float = 1.0, deadline_s: float = 30.0) -> Demand:
        return Demand(MODEL, 100, 5, time.time() + deadline_s, client=client, weight=weight)

    blocker = await s1.acquire(of("y", 10.0), ["a"])  # client y (weight 10) active: x's places are far apart
    first_done = asyncio.Event()

    async def first() -> None:
        grant = await s1.acquire(of("x"), ["a"])
        await first_done.wait()
        await s1.release(grant, None)

    h = asyncio.create_task(first())
    await until(lambda: s1.state().queue_length == {5: 1}, "x's first request queued")
    successor = asyncio.create_task(s1.acquire(of("x"), ["a"]))
    await until(lambda: s1.state().queue_length == {5: 2}, "x's second held back")
    await s1.release(blocker, None)  # x's first is admitted; its second joins as the successor

    async def joined() -> bool:
        return await s1.client.zcard(s1.keys.queue(MODEL)) == 1 and s1.state().queue_length == {5: 1}

    await until(joined, "the successor in the store's queue", 5.0)
    await asyncio.sleep(0.3)  # (its reply)
    between = asyncio.create_task(s1.acquire(of("y", 10.0, deadline_s=4.0), ["a"]))
    await until(lambda: s1.state().queue_length == {5: 2}, "y's request queued")
    ranks = await s1.client.zrange(s1.keys.queue(MODEL), 0, -1, withscores=True)
    assert len(ranks) == 2 and ranks[0][1] < ranks[1][1]
    first_done.set()
    grant = await asyncio.wait_for(between, 3.0)  # ahead of x's second in the store: served first
    assert not successor.done()
    await s1.release(grant, None)
    await s1.release(await asyncio.wait_for(successor, 5.0), None)
    await h


async def test_a_head_that_another_sidecars_request_goes_before_does_not_ask_at_the_time_it_was_given(
    sidecars: Callable[..., Any],
) -> None:
    """The head of the pool's queue, told when capacity comes for it, is displaced by a request of
    higher priority from another sidecar: the store tells it so (an exact wait), and names it again
    with its new time once that request is admitted. It asks twice in all (on arrival, then to be
    admitted), not also at the time it was first given, when it would only be refused."""
    s1, s2 = await sidecars({"rpm": 120, "tpm": 10_000_000})
    counted = _CountedAttempts(s2)
    spent = []
    while (grant := await s1.try_acquire(demand(), ["a"])) is not None:  # (the bucket empty: paced)
        spent.append(grant)
        assert len(spent) < 500
    order: list[str] = []

    async def one(limiter: SharedLimiter, label: str, priority: int) -> None:
        grant = await limiter.acquire(demand(priority, deadline_s=20.0), ["a"])
        order.append(label)
        await limiter.release(grant, UpstreamReport(status=200))

    pubsub = s1.client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(s1.keys.wake_channel_of(s2.wake_tag))
    low = asyncio.create_task(one(s2, "s2 p5", 5))
    await until(lambda: counted.calls == 1 and s2.state().queue_length == {5: 1}, "the p5 head waiting")
    (head,) = s2.waiting()
    assert await s1.client.zrange(s1.keys.queue(MODEL), 0, -1) == [head.ticket]
    high = asyncio.create_task(one(s1, "s1 p8", 8))
    await asyncio.wait_for(asyncio.gather(low, high), 15)
    assert order == ["s1 p8", "s2 p5"]
    assert counted.calls == 2, "the displaced head asked only on arrival and when its turn came back"
    assert await _queue_empty(s1)
    waits = []  # what its sidecar was told: behind another (until named), then its exact time
    for _ in range(10):  # (what was published is read; None for the ignored subscribe reply)
        message = await pubsub.get_message(timeout=0.1)
        if message is None:
            continue
        model, ticket, wait_ms = message["data"].split(";", 2)
        assert (model, ticket) == (MODEL, head.ticket)
        waits.append(wait_ms)
    # (then the p8's release names it again with its wait on that account only: no "+", an upper bound)
    assert waits[0] == "+5000;behind" and waits[1][0] == "+" and all(w[0] != "+" for w in waits[2:]), waits
    await pubsub.aclose()


async def test_the_pools_queue_lives_as_long_as_a_ticket_in_it(sidecars: Callable[..., Any]) -> None:
    """A waiter asks only when its time comes: the queue may see no call for longer than its keys' TTL
    (twice a ticket's), and the heartbeat that keeps the ticket alive keeps the queue's keys too."""
    (s1,) = await sidecars({"rpm": 6, "tpm": 10_000_000}, n=1)  # one request per 10 s
    await drain_shared(s1)
    counted = _CountedAttempts(s1)
    waiter = asyncio.create_task(s1.acquire(demand(), ["a"]))
    await until(lambda: s1.state().queue_length == {5: 1}, "a waiter")
    (w,) = s1.waiting()
    await asyncio.sleep(3 * s1.redis_backend.ticket_ttl_s)  # (the keys' TTL passes, twice a ticket's)
    assert counted.calls == 1 and not waiter.done()  # (no call since it queued)
    assert await s1.client.zrange(s1.keys.queue(MODEL), 0, -1) == [w.ticket]
    assert await s1.client.hget(s1.keys.ticket_cost(MODEL), w.ticket) == "100"
    waiter.cancel()


async def test_a_head_sent_behind_another_that_times_out_leaves_without_a_call(
    sidecars: Callable[..., Any],
) -> None:
    """Only the pool's head is dropped from the store at once when its deadline passes (so that the next
    is named without delay); a head the store sent behind another is no longer it, and its ticket
    expires with its deadline by itself."""
    s1, s2 = await sidecars({"rpm": 120, "tpm": 10_000_000})  # one request per 0.5 s
    await drain_shared(s1)
    forgets = _counted_forgets(s2)
    low = asyncio.create_task(s2.acquire(demand(5, deadline_s=1.2), ["a"]))
    await until(lambda: s2.state().queue_length == {5: 1}, "the p5 head waiting in sidecar 2")
    highs = [asyncio.create_task(s1.acquire(demand(8), ["a"])) for _ in range(3)]
    with pytest.raises(QueueTimeout):
        await asyncio.wait_for(low, 5)
    for grant in await asyncio.wait_for(asyncio.gather(*highs), 10):
        await s1.release(grant, None)
    assert forgets == []
    assert await _queue_empty(s1)


async def test_the_head_named_after_one_that_timed_out_is_told_its_time_not_now(
    sidecars: Callable[..., Any],
) -> None:
    """The pool's head times out and its sidecar drops its ticket at once; the next head is named with
    its exact wait on its accounts (the dropping call carries them), so it does not ask now only to be
    told to wait."""
    s1, s2 = await sidecars({"rpm": 6, "tpm": 10_000_000})  # one request per 10 s
    await drain_shared(s1)
    counted = _CountedAttempts(s2)
    pubsub = s1.client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(s1.keys.wake_channel_of(s2.wake_tag))
    first = asyncio.create_task(s1.acquire(demand(deadline_s=1.0), ["a"]))
    await until(lambda: s1.state().queue_length == {5: 1}, "the head waiting in sidecar 1")
    second = asyncio.create_task(s2.acquire(demand(), ["a"]))
    await until(lambda: s2.state().queue_length == {5: 1}, "a waiter behind it in sidecar 2")
    with pytest.raises(QueueTimeout):
        await asyncio.wait_for(first, 5)
    (w,) = s2.waiting()
    message = None
    for _ in range(20):
        message = message or await pubsub.get_message(timeout=0.1)
    assert message is not None
    _, ticket, wait_ms = message["data"].split(";")
    assert ticket == w.ticket and wait_ms[0] == "+" and int(wait_ms) > 5000, wait_ms
    assert counted.calls == 1 and not second.done()  # (it asked on arrival only)
    second.cancel()
    await pubsub.aclose()


async def test_a_head_whose_turn_comes_after_its_deadline_is_dropped_by_the_store_not_its_sidecar(
    sidecars: Callable[..., Any],
) -> None:
    """The store names a head with an exact wait that ends past the deadline its ticket carries: it
    cannot be served, so the store drops it and names the next instead, and tells its sidecar it is
    behind until then; the sidecar answers it at its deadline without a call."""
    s1, s2 = await sidecars({"rpm": 6, "tpm": 10_000_000})  # one request per 10 s
    await drain_shared(s1)
    forgets = _counted_forgets(s1)
    pubsub = s1.client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(s1.keys.wake_channel_of(s1.wake_tag))
    first = asyncio.create_task(s2.acquire(demand(9), ["a"]))
    await until(lambda: s2.state().queue_length == {9: 1}, "the head waiting in sidecar 2")
    doomed = asyncio.create_task(s1.acquire(demand(5, deadline_s=2.5), ["a"]))
    await until(lambda: s1.state().queue_length == {5: 1}, "a waiter behind it in sidecar 1")
    (w,) = s1.waiting()
    first.cancel()  # (sidecar 2 drops its ticket: the next head is named, its wait past its deadline)
    await until(lambda: _queue_empty(s1), "the store dropping the head that cannot make it")
    with pytest.raises(QueueTimeout):
        await asyncio.wait_for(doomed, 5)
    assert forgets == []
    message = None
    for _ in range(10):
        message = message or await pubsub.get_message(timeout=0.1)
    assert message is not None
    _, ticket, wait_ms, told = message["data"].split(";")
    assert ticket == w.ticket and told == "behind" and int(wait_ms) >= 1000, message  # (till its deadline)
    await pubsub.aclose()
