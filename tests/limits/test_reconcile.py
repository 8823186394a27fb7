"""Reconciliation with the upstream: usage, remaining headers, 429 cooldowns (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from o1sidecar.limits.reconcile import (
    MAX_COOLDOWN_S,
    cooldown_after_429,
    extra_usage,
    merge_cooldown,
    remaining_now,
    trusted_remaining,
)


def test_extra_usage_is_charged_and_never_refunded() -> None:
    assert extra_usage(1000, 1500) == 500
    assert extra_usage(1000, 200) == 0
    assert extra_usage(1000, None) == 0


def test_untrustworthy_remaining_headers_are_ignored() -> None:
    assert trusted_remaining(None, 1.0) is None
    assert trusted_remaining(-1, 1.0) is None  # Azure's "unknown"
    assert trusted_remaining(0, None) is None  # 0 with no reset: Azure's other "unknown"
    assert trusted_remaining(0, 0.0) is None
    assert trusted_remaining(0, 2.5) == 0  # really exhausted: it says when it resets
    assert trusted_remaining(42, None) == 42


def test_remaining_is_carried_forward_by_the_refill() -> None:
    # 600 RPM refills 10/s: "5 left" said 2 s ago means about 25 now, never above the limit.
    assert remaining_now(5, 10.0, 600, 2.0) == 25
    assert remaining_now(595, 10.0, 600, 2.0) == 600


def test_429_cooldown_honours_retry_after_tokens_longer_exponential_capped() -> None:
    assert cooldown_after_429(7.0, "requests", 1) == 7.0
    assert cooldown_after_429(None, "requests", 1) == 1.0
    assert cooldown_after_429(None, "tokens", 1) == 2.0  # token-limit 429s wait longer
    assert cooldown_after_429(None, "requests", 4) == 8.0  # exponential with consecutive 429s
    assert cooldown_after_429(0.2, "requests", 3) == 4.0
    assert cooldown_after_429(None, "tokens", 30) == MAX_COOLDOWN_S
    assert cooldown_after_429(10_000.0, "requests", 1) == MAX_COOLDOWN_S


@given(st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0, 300))
def test_a_later_429_only_extends_a_cooldown(current: float, now: float, wait: float) -> None:
    merged = merge_cooldown(current, now, wait)
    assert merged >= current
    assert merged >= now + wait


@given(
    st.one_of(st.none(), st.floats(-5, 1000)),
    st.sampled_from(["requests", "tokens", None]),
    st.integers(1, 50),
)
def test_cooldown_is_at_least_retry_after_and_at_most_the_cap(
    retry_after: float | None, kind: str | None, n: int
) -> None:
    wait = cooldown_after_429(retry_after, kind, n)  # type: ignore[arg-type]
    assert 0 < wait <= MAX_COOLDOWN_S
    if retry_after is not None and retry_after > 0:
        assert wait >= min(retry_after, MAX_COOLDOWN_S)
