"""What an upstream answer tells the rule: usage, remaining and limit headers, the 429's kind (pure)."""

from __future__ import annotations

from o1sidecar.limits.api import UpstreamReport
from o1sidecar.limits.backend import AccountLimits, Settlement
from o1sidecar.limits.reconcile import extra_usage, settlement, trusted_limit, trusted_remaining

BASE = Settlement(AccountLimits("a", 60, 6_000, None), "m", "lease", elapsed_s=1.5)


def test_extra_usage_is_charged_and_never_refunded() -> None:
    assert extra_usage(1000, 1500) == 500
    assert extra_usage(1000, 200) == 0
    assert extra_usage(1000, None) == 0


def test_untrustworthy_remaining_and_limit_headers_are_ignored() -> None:
    assert trusted_remaining(None, 1.0) is None
    assert trusted_remaining(-1, 1.0) is None  # Azure's "unknown"
    assert trusted_remaining(0, None) is None  # 0 with no reset: Azure's other "unknown"
    assert trusted_remaining(0, 0.0) is None
    assert trusted_remaining(0, 2.5) == 0  # really exhausted: it says when it resets
    assert trusted_remaining(42, None) == 42
    assert trusted_limit(0) is None and trusted_limit(None) is None and trusted_limit(480) == 480


def test_a_429_settles_as_rate_limited_with_what_it_said() -> None:
    report = UpstreamReport(
        status=429,
        retry_after_s=2.0,
        limit_type="tokens",
        remaining_tokens=0,
        reset_tokens_s=3.0,
        limit_requests=480,
        limit_tokens=-1,
    )
    s = settlement(BASE, 100, report)
    assert (s.outcome, s.retry_after_s, s.limit_type, s.remaining_tokens) == (
        "rate_limited",
        2.0,
        "tokens",
        0,
    )
    assert (s.limit_requests, s.limit_tokens, s.elapsed_s, s.lease_id) == (480, None, 1.5, "lease")


def test_success_failure_and_client_error_outcomes() -> None:
    ok = settlement(BASE, 100, UpstreamReport(status=200, usage_tokens=250))
    assert ok.outcome == "ok" and ok.extra_tokens == 150
    assert settlement(BASE, 100, UpstreamReport(status=503, failed=True)).outcome == "other"
    assert settlement(BASE, 100, UpstreamReport(status=400)).outcome == "other"
