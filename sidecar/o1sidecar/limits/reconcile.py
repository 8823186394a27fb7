"""What an upstream answer changes: extra usage, the upstream's remaining counts, and 429 cooldowns.

All pure. Rules:
- Usage above the admission charge is charged on top; usage below it is not refunded (the upstream
  charged ``max(max_tokens, estimate)`` at admission and does not refund either).
- ``x-ratelimit-remaining-*`` lowers our view when the upstream says less remains (other clients of
  the account spend its quota too), never raises it. Values that cannot be true are ignored: missing,
  negative (Azure sends -1), or 0 without a positive reset time (Azure sends 0 as "unknown").
- A 429 cools the account+model for ``max(Retry-After, backoff)`` where the backoff doubles with each
  consecutive 429 and starts at 1 s (2 s for token-limit 429s, which take longer to clear); never more
  than 300 s. A later 429 may only extend a cooldown.
"""

from __future__ import annotations

from typing import Literal

MAX_COOLDOWN_S = 300.0
BASE_BACKOFF_S = 1.0
TOKEN_LIMIT_FACTOR = 2.0


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


def remaining_now(remaining: int, rate_per_s: float, capacity: float, elapsed_s: float) -> float:
    """The upstream's remaining count carried forward to now: it refilled while the answer was made.

    The upstream counted ``remaining`` when it admitted the call, about ``elapsed_s`` ago.
    """
    return min(capacity, remaining + rate_per_s * max(0.0, elapsed_s))


def cooldown_after_429(
    retry_after_s: float | None,
    limit_type: Literal["requests", "tokens"] | None,
    consecutive: int,
    *,
    base_s: float = BASE_BACKOFF_S,
    cap_s: float = MAX_COOLDOWN_S,
) -> float:
    """Seconds the account+model rests after its ``consecutive``-th 429 in a row (1 for the first)."""
    factor = TOKEN_LIMIT_FACTOR if limit_type == "tokens" else 1.0
    backoff = base_s * factor * 2.0 ** max(0, consecutive - 1)
    honoured = retry_after_s if retry_after_s is not None and retry_after_s > 0 else 0.0
    return min(cap_s, max(honoured, backoff))


def merge_cooldown(current_until: float, now: float, wait_s: float) -> float:
    """The cooldown's end after a new 429: only ever extended."""
    return max(current_until, now + wait_s)
