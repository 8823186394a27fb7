"""OpenAI's rate-limit durations (Go ``time.Duration`` style): ``1s``, ``6m0s``, ``120ms``, ``1m30.5s``.

Durations are kept to millisecond precision, as OpenAI sends them.
"""

from __future__ import annotations

import math
import re

_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")


def _trim(number: str) -> str:
    return number.rstrip("0").rstrip(".") if "." in number else number


def format_duration(seconds: float) -> str:
    """``seconds`` (rounded up to whole milliseconds) as OpenAI writes it in ``x-ratelimit-reset-*``."""
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"duration must be a non-negative number of seconds, got {seconds!r}")
    ms = math.ceil(round(seconds * 1000, 6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = _trim(f"{rest / 1000:.3f}")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def parse_duration(text: str) -> float:
    """Seconds in a duration string such as ``6m0s`` or ``120ms``; ``ValueError`` names a bad string."""
    text = text.strip()
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration like '6m0s' or '120ms': {text!r}")
    return total
