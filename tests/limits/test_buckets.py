"""Token-bucket arithmetic (pure)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from o1sidecar.limits.buckets import (
    Bucket,
    charge,
    lower_to,
    refill,
    resize,
    seconds_until,
    try_charge,
    used_ratio,
)

capacities = st.floats(min_value=1, max_value=1e7, allow_nan=False)
times = st.floats(min_value=0, max_value=1e5, allow_nan=False)


def test_refills_at_limit_per_minute() -> None:
    b = Bucket(capacity=600, level=0, updated=100.0)
    assert refill(b, 101.0).level == 10  # 600 per minute = 10 per second
    assert refill(b, 130.0).level == 300
    assert refill(b, 1000.0).level == 600  # never above capacity


def test_clock_going_backwards_changes_nothing() -> None:
    b = Bucket(capacity=60, level=5, updated=100.0)
    assert refill(b, 90.0) == b


def test_charge_is_both_or_neither() -> None:
    rpm = Bucket.full(10, 0.0)
    tpm = Bucket(capacity=1000, level=50, updated=0.0)
    assert try_charge([(rpm, 1), (tpm, 100)], 0.0) is None  # TPM short: RPM is not charged either
    charged = try_charge([(rpm, 1), (tpm, 40)], 0.0)
    assert charged is not None
    assert [b.level for b in charged] == [9, 10]


def test_a_charge_that_takes_a_bucket_off_capacity_gives_up_the_upstream_lag() -> None:
    # The upstream's full bucket starts refilling only when our request reaches it, lag_s later.
    full = Bucket.full(60, 0.0)
    (charged,) = try_charge([(full, 10)], 0.0, lag_s=0.1)  # type: ignore[misc]
    assert charged.level == pytest.approx(49.9)
    (again,) = try_charge([(charged, 10)], 0.0, lag_s=0.1)  # type: ignore[misc]
    assert again.level == pytest.approx(39.9)  # it was not full: nothing more


def test_seconds_until_and_impossible_demands() -> None:
    b = Bucket(capacity=60, level=0, updated=0.0)  # 1 per second
    assert seconds_until(b, 5, 0.0) == 5
    assert seconds_until(b, 61, 0.0) == math.inf
    assert seconds_until(b, 5, 10.0) == 0


def test_debt_is_capped_and_only_lowering_is_adopted() -> None:
    b = Bucket.full(100, 0.0)
    assert charge(b, 1000, 0.0).level == -100
    assert lower_to(b, 30, 0.0).level == 30
    assert lower_to(Bucket(100, 20, 0.0), 30, 0.0).level == 20


def test_resize_keeps_fill_ratio() -> None:
    b = Bucket(capacity=100, level=50, updated=0.0)
    assert resize(b, 50, 0.0).level == 25
    assert used_ratio(b, 0.0) == 0.5


@given(capacities, st.floats(min_value=-1, max_value=1), times, times)
def test_refill_stays_within_capacity_and_is_monotone(cap: float, fill: float, t0: float, dt: float) -> None:
    b = Bucket(capacity=cap, level=fill * cap, updated=t0)
    later = refill(b, t0 + dt)
    assert b.level <= later.level <= max(cap, b.level) + 1e-6 * cap


@given(capacities, st.floats(min_value=0, max_value=1), st.floats(min_value=0, max_value=2), times)
def test_waiting_the_predicted_time_is_enough(cap: float, fill: float, want: float, t0: float) -> None:
    b = Bucket(capacity=cap, level=fill * cap, updated=t0)
    amount = want * cap
    wait = seconds_until(b, amount, t0)
    if amount > cap:
        assert wait == math.inf
    else:
        assert refill(b, t0 + wait).level >= amount - 1e-6 * cap


@given(
    st.lists(st.tuples(capacities, st.floats(0, 1), st.floats(0, 2)), min_size=1, max_size=4),
    times,
)
def test_try_charge_charges_all_or_none(specs: list[tuple[float, float, float]], now: float) -> None:
    charges = [(Bucket(c, f * c, now), a * c) for c, f, a in specs]
    result = try_charge(charges, now)
    if result is None:
        assert any(b.level < a for b, a in charges)
    else:
        for new, (old, amount) in zip(result, charges, strict=True):
            assert abs(new.level - (old.level - amount)) < 1e-6 * old.capacity
        assert all(nb.level >= 0 for nb in result)
