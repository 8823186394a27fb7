"""Per-request controls carried in headers: priority, deadline and the cache. Pure parsing, clear errors.

The cache: ``x-o1pool-cache-mode`` is ``use`` (the default: answered from the cache when it can be,
the answer stored), ``bypass`` (neither), ``refresh`` (not answered from the cache; the fresh answer
stored) or ``only`` (answered from the cache or not at all: 504 ``cache_miss``, no upstream call).
The standard ``Cache-Control`` request directives mean the same: ``no-cache`` reads nothing,
``no-store`` stores nothing, ``only-if-cached`` is ``only``; other directives are ignored.
``x-o1pool-cache-semantic: on|off`` says whether the semantic layer may answer (default: the pool's
``cache.service.semantic.requests``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from o1sidecar.config import QueuePolicy
from o1sidecar.errors import ProxyError, bad_request

PRIORITY_HEADER = "x-o1pool-priority"
DEADLINE_HEADER = "x-o1pool-deadline-ms"
CACHE_MODE_HEADER = "x-o1pool-cache-mode"
CACHE_MODES = ("use", "bypass", "refresh", "only")
SEMANTIC_HEADER = "x-o1pool-cache-semantic"
SEMANTIC_VALUES = {"on": True, "true": True, "off": False, "false": False}
PRIORITY_NAMES = {"high": 8, "normal": 5, "low": 2}
_ALLOWED_PRIORITIES = "an integer 0-9 (9 is served first) or one of high (8), normal (5), low (2)"


@dataclass(frozen=True)
class CacheControls:
    read: bool = True  # may be answered from the cache (up front, or as the last resort)
    store: bool = True  # its answer may be stored
    only: bool = False  # answered from the cache or not at all
    semantic: bool | None = None  # the request's own say on the semantic layer (None: the pool's policy)


@dataclass(frozen=True)
class RequestControls:
    priority: int
    deadline_ms: int
    cache: CacheControls = CacheControls()


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


DEFAULT_CACHE = CacheControls()


def parse_cache(mode_value: str | None, cache_control: str | None) -> CacheControls:
    if mode_value is None and cache_control is None:
        return DEFAULT_CACHE  # (most requests: no header to parse)
    mode = (mode_value or "").strip().lower() or "use"
    if mode not in CACHE_MODES:
        raise bad_request(
            f"Invalid {CACHE_MODE_HEADER} header {(mode_value or '')[:40]!r}: use one of "
            f"{', '.join(CACHE_MODES)} (default use).",
            param=CACHE_MODE_HEADER,
        )
    directives = {d.split("=", 1)[0].strip().lower() for d in (cache_control or "").split(",")}
    only = mode == "only" or "only-if-cached" in directives
    read = mode in ("use", "only") and "no-cache" not in directives
    if only and not read:
        raise bad_request(
            f"The request asks for a cached answer only ({CACHE_MODE_HEADER}: only or Cache-Control: "
            "only-if-cached) and not to read the cache (no-cache, bypass or refresh): drop one of them.",
            param=CACHE_MODE_HEADER,
        )
    store = mode in ("use", "refresh") and "no-store" not in directives
    return CacheControls(read=read, store=store, only=only)


def parse_semantic(value: str | None) -> bool | None:
    if value is None or not value.strip():
        return None
    asked = SEMANTIC_VALUES.get(value.strip().lower())
    if asked is None:
        raise bad_request(
            f"Invalid {SEMANTIC_HEADER} header {value[:40]!r}: use on or off (default: the pool's policy).",
            param=SEMANTIC_HEADER,
        )
    return asked


def parse_controls(headers: Mapping[str, str], policy: QueuePolicy) -> RequestControls:
    """The controls from request headers; raises :class:`ProxyError` (400) naming the bad header."""
    priority = parse_priority(headers.get(PRIORITY_HEADER), policy.default_priority)
    deadline_ms = parse_deadline_ms(headers.get(DEADLINE_HEADER), policy)
    cache = parse_cache(headers.get(CACHE_MODE_HEADER), headers.get("cache-control"))
    semantic = parse_semantic(headers.get(SEMANTIC_HEADER))
    if semantic is not None:
        cache = CacheControls(cache.read, cache.store, cache.only, semantic)
    return RequestControls(priority, deadline_ms, cache)


__all__ = [
    "CACHE_MODE_HEADER",
    "DEADLINE_HEADER",
    "PRIORITY_HEADER",
    "SEMANTIC_HEADER",
    "CacheControls",
    "ProxyError",
    "RequestControls",
    "parse_controls",
]
