"""The in-process admission store across accounts, step by step on a driven clock (the rule of one
account+model is tested in test_rule.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from o1sidecar.limits.api import Demand, Usage
from o1sidecar.limits.backend import AccountLimits, Admitted, Attempt, Denied, Held, Settlement
from o1sidecar.limits.local import LocalBackend

from .helpers import Clock

# The configured limits stand (adaptive: false, so no slow start): these tests are about the store;
# what adapts is test_rule.py's.
A = AccountLimits("a", rpm=60, tpm=6_000, concurrency=2, adaptive=False)
B = AccountLimits("b", rpm=60, tpm=6_000, concurrency=None, adaptive=False)


def attempt(
    ticket: str, tokens: int = 100, priority: int = 5, accounts: tuple[AccountLimits, ...] = (A,)
) -> Attempt:
    return Attempt(Demand("m", tokens, priority, math.inf), accounts, ticket, ticket, None, aging_s=30.0)


def test_the_account_with_most_headroom_serves() -> None:
    clock = Clock()
    store = LocalBackend(clock=clock)
    got = [store.attempt_now(attempt(f"{i}", accounts=(A, B))) for i in range(2)]
    assert [g.account for g in got if isinstance(g, Admitted)] == ["a", "b"]  # ties: the first; then b
    clock.t += 1.0
    store.settle_now(Settlement(A, "m", "0", outcome="rate_limited", limit_type="requests"))
    clock.t += 1.0
    third = store.attempt_now(attempt("2", accounts=(A, B)))
    assert isinstance(third, Admitted) and third.account == "b"  # a cools down


def test_concurrency_slots_are_held_until_release() -> None:
    clock = Clock()
    store = LocalBackend(clock=clock)
    for i in range(2):
        assert isinstance(store.attempt_now(attempt(f"{i}")), Admitted)
        clock.t += 1.0  # 60 RPM paces one a second
    third = store.attempt_now(attempt("3"))
    assert isinstance(third, Denied) and third.reason == "concurrency"
    store.settle_now(Settlement(A, "m", "0"))
    assert isinstance(store.attempt_now(attempt("3")), Admitted)


def test_a_better_waiter_is_not_overtaken_unless_capacity_covers_both() -> None:
    clock = Clock()
    store = LocalBackend(clock=clock)
    for i in range(2):  # use up the two slots
        assert isinstance(store.attempt_now(attempt(f"busy{i}")), Admitted)
        clock.t += 1.0
    assert isinstance(store.attempt_now(attempt("high", priority=9)), Denied)
    store.settle_now(Settlement(A, "m", "busy0"))
    low = store.attempt_now(attempt("low", priority=1))  # one slot free, the high waiter needs it
    assert isinstance(low, Denied) and low.reason == "queue"
    assert isinstance(store.attempt_now(attempt("high", priority=9)), Admitted)
    store.settle_now(Settlement(A, "m", "busy1"))
    clock.t += 1.0
    assert isinstance(store.attempt_now(attempt("low", priority=1)), Admitted)


def test_a_try_leaves_no_ticket_behind() -> None:
    clock = Clock()
    store = LocalBackend(clock=clock)
    assert isinstance(store.attempt_now(attempt("1")), Admitted)
    assert isinstance(store.attempt_now(replace(attempt("try", priority=9), queue=False)), Denied)
    clock.t += 1.0
    assert isinstance(store.attempt_now(attempt("low", priority=0)), Admitted)  # nothing ahead of it


def test_eta_counts_the_queue_ahead_at_the_paced_rate() -> None:
    clock = Clock()
    store = LocalBackend(clock=clock)
    assert isinstance(store.attempt_now(attempt("now", accounts=(B,))), Admitted)
    for i in range(4):
        assert isinstance(store.attempt_now(attempt(f"w{i}", priority=9, accounts=(B,))), Denied)
    eta = store.eta_now(attempt("me", priority=1, accounts=(B,)))
    assert eta == pytest.approx(1.0 + 4 / 1.0)  # B's next request in 1 s, then four ahead at 1/s


def test_fair_share_scales_every_limit_and_starts_empty() -> None:
    clock = Clock()
    store = LocalBackend(clock=clock, share=lambda: 0.25, start_full=False)
    lim = store.limits_of(A)
    assert (lim.rpm, lim.tpm, lim.concurrency) == (15.0, 1_500.0, 1)
    denied = store.attempt_now(attempt("1"))  # starts empty: no burst on top of the shared buckets
    assert isinstance(denied, Denied) and denied.wait_s == pytest.approx(4.0)
    clock.t += 4.0  # 15 RPM share: one request per 4 s
    assert isinstance(store.attempt_now(attempt("1")), Admitted)


def test_taking_over_from_redis_keeps_its_effective_limits_caps_and_running_grants() -> None:
    clock = Clock()
    capped = replace(A, daily=100)
    seen = {("a", "m"): Usage(0.5, 0.1, effective_rpm=30.0, effective_tpm=6_000.0, daily_left=8)}
    store = LocalBackend(clock=clock, share=lambda: 0.5, seed=seen)
    store.hold(Held("running", capped, "m", 100))
    held = store.attempt_now(replace(attempt("1", accounts=(capped,)), queue=False))
    assert isinstance(held, Denied) and held.reason == "concurrency"  # its 1 slot of 2 is taken
    store.settle_now(Settlement(capped, "m", "running"))
    admitted = 0
    for i in range(10):
        clock.t += 10.0
        admitted += isinstance(store.attempt_now(attempt(f"{i}", accounts=(capped,))), Admitted)
        store.settle_now(Settlement(capped, "m", f"{i}"))
    assert admitted == 4  # half of the 8 Redis said were left today
    usage = store.snapshot().usage[("a", "m")]
    assert usage.effective_rpm == pytest.approx(15.0) and usage.daily_left == 0  # half of Redis's 30
