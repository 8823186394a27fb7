"""Per-request controls carried in headers: priority and deadline. Pure parsing, clear errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from o1sidecar.config import QueuePolicy
from o1sidecar.errors import ProxyError, bad_request

PRIORITY_HEADER = "x-o1pool-priority"
DEADLINE_HEADER = "x-o1pool-deadline-ms"
PRIORITY_NAMES = {"high": 8, "normal": 5, "low": 2}
_ALLOWED_PRIORITIES = "an integer 0-9 (9 is served first) or one of high (8), normal (5), low (2)"


@dataclass(frozen=True)
class RequestControls:
    priority: int
    deadline_ms: int


def parse_priority(value: str | None, default: int) -> int:
    if value is None or not value.strip():
        return default
    text = value.strip().lower()
    if text in PRIORITY_NAMES:
        return PRIORITY_NAMES[text]
    if len(text) == 1 and text.isascii() and text.isdigit():
        return int(text)
    raise bad_request(
        f"Invalid {PRIORITY_HEADER} header {value[:40]!r}: use {_ALLOWED_PRIORITIES}.", param=PRIORITY_HEADER
    )


def parse_deadline_ms(value: str | None, policy: QueuePolicy) -> int:
    if value is None or not value.strip():
        return policy.default_deadline_ms
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or int(text) <= 0:
        raise bad_request(
            f"Invalid {DEADLINE_HEADER} header {value[:40]!r}: use a whole number of milliseconds "
            f"between 1 and {policy.max_deadline_ms} (default {policy.default_deadline_ms}).",
            param=DEADLINE_HEADER,
        )
    deadline = int(text)
    if deadline > policy.max_deadline_ms:
        raise bad_request(
            f"Invalid {DEADLINE_HEADER} header {value[:40]!r}: the pool allows at most "
            f"{policy.max_deadline_ms} ms (queue.max_deadline_ms); ask for less.",
            param=DEADLINE_HEADER,
        )
    return deadline


def parse_controls(headers: Mapping[str, str], policy: QueuePolicy) -> RequestControls:
    """Both controls from request headers; raises :class:`ProxyError` (400) naming the bad header."""
    return RequestControls(
        priority=parse_priority(headers.get(PRIORITY_HEADER), policy.default_priority),
        deadline_ms=parse_deadline_ms(headers.get(DEADLINE_HEADER), policy),
    )


__all__ = ["DEADLINE_HEADER", "PRIORITY_HEADER", "ProxyError", "RequestControls", "parse_controls"]
