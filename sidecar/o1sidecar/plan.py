"""What to do after each upstream attempt: return, wait and retry, back off, fall back, truncate, or
answer from cache. A pure function of the outcome, the attempt so far and the policy.

Rules: a 429 is reported and retried through the limiter (which waits out the cooldown), never blindly;
5xx, refused keys (401/403: the next try takes the account's next key, and balancing avoids an
account whose keys fail), connection errors and timeouts retry with exponential backoff up to
``retry.max_attempts`` on one model, then move along the fallback chain, then to cache-only if
enabled, then fail. A context-length error truncates the conversation once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

from o1sidecar.config import RetryPolicy

MAX_RATE_LIMITED_RETRIES = 20


class Outcome(Enum):
    OK = "ok"
    RATE_LIMITED = "rate_limited"
    CONTEXT_LENGTH = "context_length"
    CLIENT_ERROR = "client_error"
    AUTH_ERROR = "auth_error"  # 401/403: the pool's key was refused; another key or account may work
    SERVER_ERROR = "server_error"
    NETWORK_ERROR = "network_error"
    TIMEOUT = "timeout"


class Action(Enum):
    RETURN = "return"  # give the upstream's answer to the client as it is
    RETRY = "retry"  # same model, after ``delay_s`` (0 for a 429: the limiter does the waiting)
    FALLBACK = "fallback"  # next model of the chain
    TRUNCATE = "truncate"  # drop old messages, retry once
    CACHE_ONLY = "cache_only"  # every model failed: answer from cache if there is an entry
    FAIL = "fail"  # every option is spent: answer the client with an error


@dataclass(frozen=True)
class PlanState:
    """Where a request stands: which model of ``[requested, *chain]`` and how many tries on it."""

    model_index: int = 0
    attempt: int = 1  # attempts made on the current model, including the one that just ended
    rate_limited: int = 0
    truncated: bool = False


@dataclass(frozen=True)
class Step:
    action: Action
    state: PlanState
    delay_s: float = 0.0


def classify(status: int, error_code: str | None = None) -> Outcome:
    """Outcome of an answered call from its status and ``error.code``."""
    if 200 <= status < 300:
        return Outcome.OK
    if status == 429:
        return Outcome.RATE_LIMITED
    if status >= 500:
        return Outcome.SERVER_ERROR
    if status in (401, 403):
        return Outcome.AUTH_ERROR
    if error_code == "context_length_exceeded":
        return Outcome.CONTEXT_LENGTH
    return Outcome.CLIENT_ERROR


def backoff_s(attempt: int, policy: RetryPolicy, jitter: float = 0.0) -> float:
    """Delay before try ``attempt + 1``: base * 2^(attempt-1), capped, stretched by ``jitter`` in [0, 1)."""
    return min(policy.backoff_base_s * math.pow(2, attempt - 1), policy.max_retry_after_s) * (1.0 + jitter)


def next_step(
    outcome: Outcome,
    state: PlanState,
    models: Sequence[str],
    policy: RetryPolicy,
    *,
    cache_only: bool,
    time_left_s: float,
    jitter: float = 0.0,
    model_down: bool = False,
) -> Step:
    """The step after an attempt ended in ``outcome``; ``models`` is ``[requested, *fallback chain]``.
    ``model_down``: the model fails everywhere (outages.py), so a failure moves on without retrying."""
    if outcome in {Outcome.OK, Outcome.CLIENT_ERROR}:
        return Step(Action.RETURN, state)
    if outcome is Outcome.CONTEXT_LENGTH:
        if state.truncated:
            return Step(Action.RETURN, state)
        return Step(Action.TRUNCATE, replace(state, truncated=True))
    if outcome is Outcome.RATE_LIMITED:
        if state.rate_limited + 1 < MAX_RATE_LIMITED_RETRIES and time_left_s > 0:
            return Step(Action.RETRY, replace(state, rate_limited=state.rate_limited + 1))
        return _move_on(state, models, cache_only)
    delay = backoff_s(state.attempt, policy, jitter)
    if state.attempt < policy.max_attempts and delay < time_left_s and not model_down:
        return Step(Action.RETRY, replace(state, attempt=state.attempt + 1), delay_s=delay)
    return _move_on(state, models, cache_only)


def _move_on(state: PlanState, models: Sequence[str], cache_only: bool) -> Step:
    if state.model_index + 1 < len(models):
        return Step(Action.FALLBACK, PlanState(model_index=state.model_index + 1, truncated=state.truncated))
    return Step(Action.CACHE_ONLY if cache_only else Action.FAIL, state)
