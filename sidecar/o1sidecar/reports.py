"""What an upstream answer tells the limiter: rate-limit headers, retry-after, usage. Pure parsing.

Upstreams omit or garble these headers (Azure sometimes sends -1 or 0); anything that does not parse
becomes ``None`` so the limiter keeps its own view.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from o1common import durations
from o1sidecar.limits.api import UpstreamReport


def parse_duration(text: str | None) -> float | None:
    """Seconds in OpenAI's reset format (``1s``, ``6m0s``, ``120ms``, ``1h2m3.5s``); a bare number is
    seconds. ``None`` when absent or unparseable."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if value >= 0 else None
    simple = _simple_duration(text)
    if simple is not None:
        return simple
    try:
        return durations.parse_duration(text)
    except ValueError:
        return None


def _simple_duration(text: str) -> float | None:
    """The common one-unit forms (``120ms``, ``1.5s``) without the regex."""
    if text.endswith("ms"):
        number, scale = text[:-2], 1e-3
    elif text.endswith("s") and text[-2:-1].isdigit():
        number, scale = text[:-1], 1.0
    else:
        return None
    if not number.replace(".", "", 1).isdigit():
        return None
    return float(number) * scale


def _non_negative_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(float(text.strip()))
    except ValueError:
        return None
    return value if value >= 0 else None


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """From ``retry-after-ms`` (preferred, finer) or ``retry-after`` (seconds)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if value >= 0:
                return value
        except ValueError:
            pass
    return parse_duration(headers.get("retry-after"))


LimitType = Literal["requests", "tokens", "concurrency", "quota"]


def limit_type_of_429(error: Mapping[str, Any] | None) -> LimitType | None:
    """Which limit a 429 body says was hit (OpenAI puts it in ``error.type``, sometimes the message):
    RPM, TPM, concurrency, or the account's quota (``insufficient_quota``: spent, not rate-limited)."""
    if not error:
        return None
    kind = str(error.get("type") or "")
    if kind == "insufficient_quota" or error.get("code") == "insufficient_quota":
        return "quota"
    message = str(error.get("message") or "").lower()
    if "concurrent requests" in message:
        return "concurrency"
    if kind in {"requests", "tokens"}:
        return kind  # type: ignore[return-value]
    if "tokens per min" in message or "(tpm)" in message:
        return "tokens"
    if "requests per min" in message or "(rpm)" in message:
        return "requests"
    return None


def usage_tokens(usage: Mapping[str, Any] | None) -> int | None:
    """Total tokens from a ``usage`` object of chat, responses or embeddings (reasoning included)."""
    if not isinstance(usage, Mapping):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")]
    numbers = [p for p in parts if isinstance(p, int)]
    return sum(numbers) if numbers else None


_DECODER = json.JSONDecoder()
_USAGE_KEY = b'"usage"'


def usage_from_body(data: bytes) -> dict[str, Any] | None:
    """The top-level ``usage`` of a successful JSON answer. Reads only the tail from the last
    ``"usage"`` key on (it comes last, after the answer), and parses the whole body only when that
    does not give a usage object."""
    at = data.rfind(_USAGE_KEY)
    if at >= 0:
        colon = data.find(b":", at + len(_USAGE_KEY))
        try:
            tail = data[colon + 1 :].decode().lstrip()
            usage, _ = _DECODER.raw_decode(tail)
        except ValueError:
            usage = None
        if isinstance(usage, dict) and usage_tokens(usage) is not None:
            return usage
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    return usage if isinstance(usage, dict) else None


def error_from_body(data: bytes) -> dict[str, Any] | None:
    """The ``error`` object of a failed answer, if it has one."""
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else None


def build_report(
    status: int,
    headers: Mapping[str, str],
    *,
    usage: Mapping[str, Any] | None = None,
    error: Mapping[str, Any] | None = None,
    failed: bool = False,
) -> UpstreamReport:
    return UpstreamReport(
        status=status,
        usage_tokens=usage_tokens(usage),
        remaining_requests=_non_negative_int(headers.get("x-ratelimit-remaining-requests")),
        remaining_tokens=_non_negative_int(headers.get("x-ratelimit-remaining-tokens")),
        reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
        limit_requests=_non_negative_int(headers.get("x-ratelimit-limit-requests")),
        limit_tokens=_non_negative_int(headers.get("x-ratelimit-limit-tokens")),
        retry_after_s=retry_after_s(headers) if status == 429 else None,
        limit_type=limit_type_of_429(error) if status == 429 else None,
        failed=failed or status >= 500 or status in (401, 403),
    )


def failure_report(status: int = 0) -> UpstreamReport:
    """A call that produced no usable answer: network error, timeout, cut stream."""
    return UpstreamReport(status=status, failed=True)
