"""What an upstream answer tells the admission rule: a ``Settlement`` from an ``UpstreamReport``.

All pure. Rules:
- Usage above the admission charge is charged on top (to the bucket and to the call's entry in the
  window, so that both count a call alike); usage below it is not refunded (the upstream charged
  ``max(max_tokens, estimate)`` at admission and does not refund either).
- ``x-ratelimit-remaining-*`` lowers our view when the upstream says less remains (other clients of
  the account spend its quota too), never raises it. Values that cannot be true are ignored: missing,
  negative (Azure sends -1), or 0 without a positive reset time (Azure sends 0 as "unknown").
- ``x-ratelimit-limit-*`` is the upstream's own limit; a value below 1 is ignored. With the remaining
  count and ``x-ratelimit-reset-*`` (a negative reset is ignored) it also says how much the upstream
  has counted, which the rule compares with what it logged (``rule.upstream_ceiling``).
- What a 429 changes (debt, episode, cut, cooldown, probe) is the admission rule's (rule.py).
"""

from __future__ import annotations

from dataclasses import replace

from o1sidecar.limits.api import UpstreamReport
from o1sidecar.limits.backend import Settlement, SettleOutcome


def extra_usage(charged_tokens: int, usage_tokens: int | None) -> int:
    """Tokens to charge on top of the admission charge once the real usage is known."""
    if usage_tokens is None or usage_tokens <= charged_tokens:
        return 0
    return usage_tokens - charged_tokens


def trusted_remaining(remaining: int | None, reset_s: float | None) -> int | None:
    """The upstream's remaining count if it is believable, else ``None`` (ignore it)."""
    if remaining is None or remaining < 0:
        return None
    if remaining == 0 and (reset_s is None or reset_s <= 0):
        return None
    return remaining


def trusted_limit(limit: int | None) -> int | None:
    return limit if limit is not None and limit >= 1 else None


def trusted_reset(reset_s: float | None) -> float | None:
    return reset_s if reset_s is not None and reset_s >= 0 else None


def settlement(base: Settlement, charged_tokens: int, report: UpstreamReport) -> Settlement:
    """``base`` (lease, account, model, seconds since admission) with what ``report`` says."""
    outcome: SettleOutcome
    if report.status == 429:
        outcome = "rate_limited"
    elif 200 <= report.status < 400:
        outcome = "ok"
    else:
        outcome = "other"
    return replace(
        base,
        outcome=outcome,
        extra_tokens=extra_usage(charged_tokens, report.usage_tokens),
        charged_tokens=charged_tokens,
        remaining_requests=trusted_remaining(report.remaining_requests, report.reset_requests_s),
        remaining_tokens=trusted_remaining(report.remaining_tokens, report.reset_tokens_s),
        limit_requests=trusted_limit(report.limit_requests),
        limit_tokens=trusted_limit(report.limit_tokens),
        reset_requests_s=trusted_reset(report.reset_requests_s),
        reset_tokens_s=trusted_reset(report.reset_tokens_s),
        retry_after_s=report.retry_after_s,
        limit_type=report.limit_type,
    )
