"""A client's own RPM/TPM limits (limits/caps.py): the pure rule with an injected clock, then the wait
queue (a client at its limit holds no one up, and is refused at once when its limit outlasts its
deadline), then several ``SharedLimiter``s on one real redis-server counting one client together.
test_lua.py's property test keeps the Lua rule equal to this one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from o1pool.procs import RedisServer
from o1sidecar.limits import Demand, LocalLimiter, NoCapacity, build_limiter
from o1sidecar.limits.api import ClientLimited
from o1sidecar.limits.caps import Cap, Window, admit, refresh, settle, wait
from o1sidecar.limits.shared import SharedLimiter
from tests.polling import until

from .helpers import config

MODEL = "o1-mini"


# --- the rule -----------------------------------------------------------------------------------


def test_rpm_counts_the_last_minute_and_says_when_the_oldest_call_leaves() -> None:
    w, cap = Window(), Cap(rpm=3, tpm=None)
    for i, at in enumerate((0.0, 10.0, 20.0)):
        assert wait(w, cap, 1, at) == 0.0
        admit(w, 1, f"l{i}", at)
    assert wait(w, cap, 1, 30.0) == pytest.approx(30.0)  # the call at 0 leaves the window at 60
    refresh(w, 60.0)
    assert [e.lease for e in w.entries] == ["l1", "l2"]
    assert wait(w, cap, 1, 60.0) == 0.0


def test_tpm_counts_tokens_and_a_call_that_used_more_than_its_charge() -> None:
    w, cap = Window(), Cap(rpm=None, tpm=1_000)
    admit(w, 400, "a", 0.0)
    admit(w, 400, "b", 5.0)
    assert wait(w, cap, 200, 6.0) == 0.0
    settle(w, "a", 300)  # it used 300 more than it was charged
    assert w.tokens == 1_100
    assert wait(w, cap, 200, 6.0) == pytest.approx(54.0)  # 300 over: "a" must leave (at 60)
    assert wait(w, cap, 700, 6.0) == pytest.approx(59.0)  # 800 over: "b" too (at 65)
    refresh(w, 60.0)
    assert (w.tokens, [e.lease for e in w.entries]) == (400, ["b"])
    settle(w, "a", 50)  # aged out already: counts nowhere
    assert w.tokens == 400


def test_both_limits_the_longer_wait_wins_and_a_share_scales_both() -> None:
    w = Window()
    admit(w, 100, "a", 0.0)
    admit(w, 900, "b", 30.0)
    assert wait(w, Cap(rpm=2, tpm=1_500), 700, 31.0) == pytest.approx(59.0)  # tokens: "b" must leave
    assert wait(w, Cap(rpm=2, tpm=10_000), 600, 31.0) == pytest.approx(29.0)  # requests: "a" must leave
    assert Cap(rpm=10, tpm=None).scaled(0.5) == Cap(rpm=5, tpm=None)


# --- the wait queue, in one process -------------------------------------------------------------


def limited(client: str, cap: Cap | None, priority: int = 5, deadline_s: float = 120.0) -> Demand:
    return Demand(MODEL, 100, priority, time.time() + deadline_s, client, 1.0, cap)


async def test_a_client_at_its_limit_holds_up_no_one_behind_it() -> None:
    # One concurrency slot: the queue moves one call at a time, best rank first.
    limiter = LocalLimiter(config({"a": {"rpm": 60_000, "tpm": 10**8, "concurrency": 1}}))
    await limiter.start()
    batch = Cap(rpm=1, tpm=None)
    first = await limiter.acquire(limited("web", None), ["a"])
    b1 = asyncio.create_task(limiter.acquire(limited("batch", batch, priority=9), ["a"]))
    b2 = asyncio.create_task(limiter.acquire(limited("batch", batch, priority=9), ["a"]))
    w1 = asyncio.create_task(limiter.acquire(limited("web", None, priority=0), ["a"]))
    await until(lambda: sum(limiter.state().queue_length.values()) == 3, "three waiters")

    await limiter.release(first, None)
    g1 = await asyncio.wait_for(b1, 5)  # the best rank: batch's first call, its minute's one
    await limiter.release(g1, None)
    # batch's second call ranks first but its client is at its limit for a minute: web goes.
    g2 = await asyncio.wait_for(w1, 5)
    assert not b2.done() and limiter.state().queue_length == {9: 1}
    await limiter.release(g2, None)
    b2.cancel()
    await limiter.close()


async def test_a_limit_that_outlasts_the_deadline_is_refused_at_once_and_a_too_large_call_never() -> None:
    limiter = LocalLimiter(config({"a": {"rpm": 60_000, "tpm": 10**8}}))
    await limiter.start()
    cap = Cap(rpm=2, tpm=1_000)
    for _ in range(2):
        await limiter.acquire(limited("batch", cap, deadline_s=5.0), ["a"])
    with pytest.raises(
        ClientLimited, match=r"'batch' is at its own limit of 2 requests and 1000 tokens"
    ) as e:
        await limiter.acquire(limited("batch", cap, deadline_s=5.0), ["a"])
    assert 58.0 < e.value.retry_after_s <= 60.0
    assert limiter.state().queue_length == {}  # nothing left waiting
    assert await limiter.try_acquire(limited("batch", cap), ["a"]) is None
    assert await limiter.acquire(limited("other", cap), ["a"])  # another client's minute is its own
    big = Demand(MODEL, 5_000, 5, time.time() + 5, "batch", 1.0, cap)
    with pytest.raises(
        NoCapacity, match=r"client 'batch' may use 1000 a minute \(clients\[\]\.limits\.tpm\)"
    ):
        await limiter.acquire(big, ["a"])
    await limiter.close()


# --- across sidecars, through Redis -------------------------------------------------------------


@pytest.fixture
async def shared(redis_server: RedisServer) -> AsyncIterator[list[SharedLimiter]]:
    cfg = config({"a": {"rpm": 60_000, "tpm": 10**8}}, redis_url=redis_server.url)
    limiters = []
    for i in range(3):
        limiter = build_limiter(cfg)
        assert isinstance(limiter, SharedLimiter)
        limiter.sidecar_id = f"sidecar-{i}"
        await limiter.start()
        limiters.append(limiter)
    yield limiters
    for limiter in limiters:
        await asyncio.wait_for(limiter.close(), 10)


@pytest.mark.redis
async def test_sidecars_share_a_clients_limit_and_its_window_says_so(shared: list[SharedLimiter]) -> None:
    cap = Cap(rpm=4, tpm=None)
    outcomes = await asyncio.gather(
        *(
            limiter.acquire(limited("batch", cap, deadline_s=3.0), ["a"])
            for limiter in shared
            for _ in range(3)
        ),
        return_exceptions=True,
    )
    granted = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, ClientLimited)]
    assert (len(granted), len(refused)) == (4, 5), outcomes
    redis, keys = shared[0].client, shared[0].keys
    assert await redis.zcard(keys.client_window("batch")) == 4
    assert float(await redis.hget(keys.client_tokens(), "batch")) == 400
    assert await redis.zcard(keys.queue(MODEL)) == 0  # none of the refused left a ticket
    # A client without limits is not held back by another's.
    assert await shared[1].acquire(limited("web", None, deadline_s=3.0), ["a"])
