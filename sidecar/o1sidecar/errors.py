"""OpenAI-style error answers: the body shape the official SDKs parse into their exception types."""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from o1sidecar.limits.api import ClientLimited, NoCapacity, QueueFull, QueueTimeout, QuotaExhausted
from o1sidecar.spend import BudgetSpent


class ProxyError(Exception):
    """An answer the proxy gives instead of the upstream's; ``message`` says what was wrong and what to do."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        close_connection: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.close_connection = close_connection  # after an unreadable request: nothing more to read

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)

    def response(self, extra_headers: dict[str, str] | None = None) -> web.Response:
        headers = {**self.headers, **(extra_headers or {})}
        response = web.Response(
            status=self.status,
            body=json.dumps(self.body()).encode(),
            content_type="application/json",
            headers=headers,
        )
        if self.close_connection:
            response.force_close()
        return response


def error_body(
    message: str, *, type: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def not_cached(cache_on: bool) -> ProxyError:
    """The request asked for a cached answer only, and there is none."""
    why = "no stored answer matches it" if cache_on else "this pool's cache is off (cache.enabled)"
    return ProxyError(
        504,
        f"The request asked for a cached answer only (x-o1pool-cache-mode: only, or Cache-Control: "
        f"only-if-cached), and {why}; the model was not called. Send it without that to get an answer.",
        type="cache_miss",
        code="cache_miss",
    )


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ProxyError:
    return ProxyError(400, message, param=param, code=code)


def unknown_model(model: str, served: list[str], pool: str) -> ProxyError:
    return ProxyError(
        404,
        f"The model `{model}` is not served by this pool ({pool}); models served: "
        f"{', '.join(served) or 'none'}. Ask for one of those, or add the model to an account of the O1Pool.",
        code="model_not_found",
        param="model",
    )


def context_too_long(model: str, window: int, prompt: int, budget: int, field: str) -> ProxyError:
    """OpenAI's own context_length_exceeded answer, given before anything is sent."""
    return ProxyError(
        400,
        f"This model's maximum context length is {window} tokens. However, you requested "
        f"{prompt + budget} tokens ({prompt} in the messages, {budget} in the completion). Please reduce "
        f"the length of the messages or completion. (Counted by o1pool for {model} before sending: nothing "
        "was sent upstream. With context.on_overflow: truncate the oldest messages are dropped instead.)",
        param=field,
        code="context_length_exceeded",
    )


def queue_timeout(exc: QueueTimeout, model: str, priority: int, deadline_ms: int) -> ProxyError:
    retry_after = max(1, round(exc.retry_after_s))
    return ProxyError(
        429,
        f"Queued for {round(exc.waited_s * 1000)} ms waiting for {model} capacity at priority {priority}, "
        f"and the request's deadline ({deadline_ms} ms) passed: {exc.reason}. Retry after {retry_after} s, "
        "raise x-o1pool-priority, or allow a longer x-o1pool-deadline-ms.",
        type="rate_limit_exceeded",
        code="queue_timeout",
        headers={"retry-after": str(retry_after), "retry-after-ms": str(round(exc.retry_after_s * 1000))},
    )


def client_rate_limited(exc: ClientLimited, client: str) -> ProxyError:
    """The request's client is at its own rate limit past the request's deadline (limits/caps.py)."""
    retry_after = max(1, math.ceil(exc.retry_after_s))
    return ProxyError(
        429,
        f"Rate limit reached for client {client!r} of this pool: {exc.reason}. Nothing was sent upstream. "
        f"Retry after {retry_after} s, send fewer requests, or raise the client's limits in the O1Pool "
        "(spec.clients[].limits).",
        type="rate_limit_exceeded",
        code="client_rate_limited",
        headers={"retry-after": str(retry_after), "retry-after-ms": str(round(exc.retry_after_s * 1000))},
    )


def queue_full(exc: QueueFull, max_length: int) -> ProxyError:
    return ProxyError(
        429,
        f"This sidecar's queue is full ({max_length} requests waiting, queue.max_length): {exc}. "
        "Retry shortly, or send fewer requests at once.",
        type="rate_limit_exceeded",
        code="queue_full",
        headers={"retry-after": "1"},
    )


def no_capacity(exc: NoCapacity, model: str, tokens: int) -> ProxyError:
    return ProxyError(
        400,
        f"No account of this pool can ever admit this request for {model}: it needs {tokens} tokens per "
        f"minute at admission ({exc}). Lower max_tokens / max_completion_tokens or send a shorter prompt.",
        code="request_too_large",
    )


def quota_exhausted(exc: QuotaExhausted, models: list[str]) -> ProxyError:
    """OpenAI's shape for a spent quota (the SDKs raise RateLimitError with code insufficient_quota)."""
    retry_after = max(1, round(exc.retry_after_s))
    return ProxyError(
        429,
        f"The pool's request caps are spent for every model tried ({', '.join(models)}): {exc.reason}. "
        f"Retry after {retry_after} s, or raise daily_requests / monthly_requests in the O1Pool.",
        type="insufficient_quota",
        code="insufficient_quota",
        headers={"retry-after": str(retry_after)},
    )


def budget_exceeded(client: str, spent: BudgetSpent, downgrade: bool) -> ProxyError:
    """A client's budget is spent (OpenAI's shape for a spent quota, code budget_exceeded)."""
    retry_after = max(1, math.ceil(spent.resets_in_s))
    period, unit = spent.budget.split("_")

    def amount(value: float) -> str:
        return f"${value:,.2f}" if unit == "usd" else f"{value:,.0f} tokens"

    camel = period + unit.capitalize()
    why = " (and the requested model has no fallback to downgrade to)" if downgrade else ""
    return ProxyError(
        429,
        f"Client {client!r} has spent its {period} budget{why}: {amount(spent.spent)} of "
        f"{amount(spent.limit)}. It resets in {_duration(retry_after)} (UTC); or ask the pool's owner to "
        f"raise spec.clients[{client}].budgets.{camel} in the O1Pool.",
        type="insufficient_quota",
        code="budget_exceeded",
        headers={"retry-after": str(retry_after)},
    )


def missing_api_key() -> ProxyError:
    return ProxyError(
        401,
        "You didn't provide an API key. This o1pool gateway takes a virtual key of one of its pool's clients "
        "in an Authorization header (Bearer auth; the openai SDK's api_key); ask the pool's owner for one.",
        code="invalid_api_key",
    )


def invalid_api_key(presented: str) -> ProxyError:
    """OpenAI's 401 for a wrong key, showing at most its last four characters."""
    shown = f"...{presented[-4:]}" if len(presented) >= 16 else "(too short to be one)"
    return ProxyError(
        401,
        f"Incorrect API key provided: {shown}. This o1pool gateway takes the virtual keys of its pool's "
        "clients; ask the pool's owner for one.",
        code="invalid_api_key",
    )


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{max(1, rest // 60)}m"


def upstream_rate_limited(models: list[str], retry_after: str) -> ProxyError:
    return ProxyError(
        429,
        f"The upstream kept answering 429 for every model tried ({', '.join(models)}) until the request's "
        "deadline or retry budget ran out, although the sidecar waited for admission each time; other "
        "clients are probably using the same accounts. Retry later or allow a longer x-o1pool-deadline-ms.",
        type="rate_limit_exceeded",
        code="upstream_rate_limited",
        headers={"retry-after": retry_after},
    )


def upstream_unavailable(models: list[str], attempts: int, last_error: str, *, timed_out: bool) -> ProxyError:
    return ProxyError(
        504 if timed_out else 502,
        f"The upstream failed for every model tried ({', '.join(models)}), after {attempts} attempt(s) "
        f"each; last error: {last_error}. No cached answer was available. The sidecar already retried; "
        "try again later.",
        type="server_error",
        code="upstream_unavailable",
        headers={"x-should-retry": "false"},
    )


def model_unavailable(models: list[str], retry_after_s: float) -> ProxyError:
    retry = max(1, math.ceil(retry_after_s))
    return ProxyError(
        503,
        f"Every model of the request's chain ({', '.join(models)}) is failing on every account, and no "
        f"cached answer was available; nothing was sent upstream. The pool probes the model and lets "
        f"requests back gradually once it answers: retry after {retry} s.",
        type="server_error",
        code="model_unavailable",
        headers={"retry-after": str(retry)},
    )
