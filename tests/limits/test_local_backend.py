"""The in-process admission store, step by step on a fake clock."""

from __future__ import annotations

import math

from o1sidecar.limits.api import Demand
from o1sidecar.limits.backend import AccountLimits, Admitted, Attempt, Denied, Settlement
from o1sidecar.limits.local import LocalBackend

from .helpers import Clock

A = AccountLimits("a", rpm=60, tpm=6_000, concurrency=2)
B = AccountLimits("b", rpm=60, tpm=6_000, concurrency=None)


def attempt(
    ticket: str, tokens: int = 100, priority: int = 5, accounts: tuple[AccountLimits, ...] = (A,)
) -> Attempt:
    return Attempt(Demand("m", tokens, priority, math.inf), accounts, ticket, ticket, None, aging_s=30.0)


def test_charges_rpm_and_tpm_together_or_not_at_all() -> None:
    clock = Clock()
    store = LocalBackend(clock=clock)
    assert isinstance(store.attempt_now(attempt("1", tokens=5_950)), Admitted)
    store.settle_now(Settlement(A, "m", "1"))
    denied = store.attempt_now(attempt("2", tokens=100))  # 50 tokens left: TPM short
    assert isinstance(denied, Denied) and denied.reason == "capacity"
    # 100 tokens/s refill: 50 more in 0.5 s, and 10 the full bucket gave up for the upstream's lag
    assert abs(denied.wait_s - 0.6) < 1e-9
    usage = store.usage_ratio()[("a", "m")]
    # One request (plus the 0.1 s of refill a full bucket gives up): the denied attempt charged none.
    assert abs(usage["requests"] - 1.1 / 60) < 1e-9
    clock.t += 0.59
    assert isinstance(store.attempt_now(attempt("2", tokens=100)), Denied)
    clock.t += 0.01
    assert isinstance(store.attempt_now(attempt("2", tokens=100)), Admitted)


def test_concurrency_slots_are_held_until_release() -> None:
    store = LocalBackend(clock=Clock())
    assert isinstance(store.attempt_now(attempt("1")), Admitted)
    assert isinstance(store.attempt_now(attempt("2")), Admitted)
    third = store.attempt_now(attempt("3"))
    assert isinstance(third, Denied) and third.reason == "concurrency"
    store.settle_now(Settlement(A, "m", "1"))
    assert isinstance(store.attempt_now(attempt("3")), Admitted)


def test_cooldown_keeps_the_account_out_and_only_extends() -> None:
    clock = Clock()
    store = LocalBackend(clock=clock)
    assert isinstance(store.attempt_now(attempt("1", accounts=(A, B))), Admitted)
    store.settle_now(Settlement(A, "m", "1", cooldown_s=10.0))
    store.settle_now(Settlement(A, "m", "x", cooldown_s=2.0))  # a shorter, later 429 changes nothing
    got = store.attempt_now(attempt("2", accounts=(A, B)))
    assert isinstance(got, Admitted) and got.account == "b"
    store.settle_now(Settlement(B, "m", "2", cooldown_s=5.0))
    denied = store.attempt_now(attempt("3", accounts=(A, B)))
    assert isinstance(denied, Denied) and denied.reason == "cooldown" and abs(denied.wait_s - 5.0) < 1e-9
    clock.t += 9.9
    got = store.attempt_now(attempt("3", accounts=(A, B)))
    assert isinstance(got, Admitted) and got.account == "b"
    clock.t += 0.2
    store.settle_now(Settlement(B, "m", "3", cooldown_s=60.0))
    got = store.attempt_now(attempt("4", accounts=(A, B)))
    assert isinstance(got, Admitted) and got.account == "a"


def test_usage_above_the_charge_is_charged_and_lower_remaining_is_adopted() -> None:
    store = LocalBackend(clock=Clock())
    assert isinstance(store.attempt_now(attempt("1", tokens=1_000)), Admitted)
    store.settle_now(Settlement(A, "m", "1", extra_tokens=500))
    used = (1_000 + 500 + 10) / 6_000  # charge, extra usage, and the 0.1 s lag a full bucket gives up
    assert abs(store.usage_ratio()[("a", "m")]["tokens"] - used) < 1e-9
    store.settle_now(Settlement(A, "m", "-", remaining_tokens=5_000))  # higher than ours: ignored
    assert abs(store.usage_ratio()[("a", "m")]["tokens"] - used) < 1e-9
    store.settle_now(Settlement(A, "m", "-", remaining_tokens=600, remaining_requests=6))
    usage = store.usage_ratio()[("a", "m")]
    assert abs(usage["tokens"] - 0.9) < 1e-9 and abs(usage["requests"] - 0.9) < 1e-9


def test_a_better_waiter_is_not_overtaken_unless_capacity_covers_both() -> None:
    clock = Clock()
    store = LocalBackend(clock=clock)
    for i in range(2):  # use up the two slots
        assert isinstance(store.attempt_now(attempt(f"busy{i}")), Admitted)
    high = store.attempt_now(attempt("high", priority=9))
    assert isinstance(high, Denied)
    store.settle_now(Settlement(A, "m", "busy0"))
    low = store.attempt_now(attempt("low", priority=1))  # one slot free, the high waiter needs it
    assert isinstance(low, Denied) and low.reason == "queue"
    assert isinstance(store.attempt_now(attempt("high", priority=9)), Admitted)
    store.settle_now(Settlement(A, "m", "busy1"))
    assert isinstance(store.attempt_now(attempt("low", priority=1)), Admitted)


def test_fair_share_scales_every_limit() -> None:
    clock = Clock()
    store = LocalBackend(clock=clock, share=lambda: 0.25, start_full=False)
    assert store.scaled(A) == (15.0, 1_500.0, 1)
    denied = store.attempt_now(attempt("1"))  # starts empty: no burst on top of the shared buckets
    assert isinstance(denied, Denied)
    clock.t += 4.0  # 15 RPM share: one request per 4 s (an empty bucket starts refilling at once)
    assert isinstance(store.attempt_now(attempt("1")), Admitted)
