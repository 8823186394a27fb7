"""The audit trail: one JSON line per answered request on stdout, for the cluster's log pipeline
(``audit.enabled``; docs/tenants.md#audit-trail gives the format).

A line says who asked (the pod's identity, identity.py), what for (model asked and served, priority,
endpoint), how it went (status, queue wait, duration, cache layer, fallback, upstream calls and 429s),
by which account and key *name*, and what it cost (tokens by kind, dollars, or what a cache hit saved;
prices.py). Prompt and answer content are left out unless ``audit.content`` is on; then every string
in them passes the masking rules first. Key values never reach a line: the key is named, and
key-shaped strings in content are masked."""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from o1sidecar.config import AuditConfig, PoolRef
from o1sidecar.identity import Identity
from o1sidecar.prices import TokenUse

if TYPE_CHECKING:
    from o1sidecar.exchange import Exchange

LOGGER = "o1pool.audit"
MAX_CONTENT_CHARS = 32_768  # per string of content; longer ones are cut, and say so
MAX_CLIENT_CHARS = 128  # a client's request id or model name, as logged

# Built-in masking rules, applied in this order (keys first: a key may contain digits and dashes).
_KEY = re.compile(
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}"  # OpenAI-style and others' secret keys
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key ids
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"  # GitHub tokens
    r"|\bxox[abpr]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|\bAIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWTs
    r"|(?i:\bbearer\s+)[A-Za-z0-9._~+/=-]{16,}"
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d[\d ().-]{5,}\d(?![\w])")
_DATE_OR_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}$|^\d{1,2}[.:]\d{2}([.:]\d{2})?$|^\d+(\.\d+)?$")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[card]" if _luhn(digits) else match.group()


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    digits = sum(ch.isdigit() for ch in text)
    if digits < 7 or digits > 15 or _DATE_OR_TIME.match(text):
        return text
    return "[phone]"


class Masker:
    """Masks e-mail addresses, phone and card numbers, key-shaped strings, and the pool's own
    patterns (``audit.mask_patterns``, each match becomes ``[masked]``) in every string of a value."""

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self._extra = [re.compile(p) for p in patterns]

    def text(self, value: str) -> str:
        value = _KEY.sub("[key]", value)
        value = _EMAIL.sub("[email]", value)
        value = _CARD.sub(_card, value)
        value = _PHONE.sub(_phone, value)
        for pattern in self._extra:
            value = pattern.sub("[masked]", value)
        return value

    def value(self, value: Any) -> Any:
        """A copy of a JSON value with every string masked (and cut to ``MAX_CONTENT_CHARS``)."""
        if isinstance(value, str):
            if len(value) > MAX_CONTENT_CHARS:
                value = value[:MAX_CONTENT_CHARS] + f"... [cut: {len(value)} characters]"
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {str(k): self.value(v) for k, v in value.items()}
        return value


def _stdout_writer() -> Callable[[str], None]:
    logger = logging.getLogger(LOGGER)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # (not in the sidecar's own log on stderr)
        logger.setLevel(logging.INFO)
    return logger.info


def _client_string(value: str | None) -> str | None:
    if value is None:
        return None
    value = value[:MAX_CLIENT_CHARS]
    return value if value.isprintable() else value.encode("unicode_escape").decode()[:MAX_CLIENT_CHARS]


class AuditLog:
    def __init__(
        self,
        config: AuditConfig,
        pool: PoolRef,
        identity: Identity,
        write: Callable[[str], None] | None = None,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self._pool = f"{pool.namespace}/{pool.name}"
        self._identity = identity.as_dict()
        self._masker = Masker(config.mask_patterns)
        self._write = write if write is not None else (_stdout_writer() if config.enabled else None)
        self._sample = sample

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def new_request_id(self) -> str:
        """The id a line and the answer's ``x-o1pool-request-id`` share ("" when the trail is off)."""
        return uuid.uuid4().hex if self.config.enabled else ""

    def record(
        self,
        ex: Exchange,
        status: int,
        elapsed_s: float,
        use: TokenUse | None,
        cost_usd: float | None,
        answer: bytes | None,
        error: str | None,
    ) -> None:
        """Write the exchange's line, if the trail is on and the sample takes it (errors always)."""
        if self._write is None or (status < 400 and self._sample() >= self.config.sample_ratio):
            return
        cached = ex.cache != "miss"
        line: dict[str, Any] = {
            **self._head(ex.request_id, ex.request, status, error),
            "upstream_request_id": _client_string(ex.upstream_request_id),
            "stream": ex.stream,
            "model_requested": _client_string(ex.requested),
            "model": ex.model or None,
            "account": ex.account or None,
            "key": ex.key if ex.account else None,
            "client": ex.client.name if ex.client is not None else None,
            "priority": ex.controls.priority,
            "priority_asked": ex.priority_asked if ex.priority_asked is not None else ex.controls.priority,
            "queue_wait_ms": round(ex.waited_s * 1000, 1),
            "duration_ms": round(elapsed_s * 1000, 1),
            "cache": ex.cache,
            "degraded": ex.degraded,
            "fallback": bool(ex.model) and ex.model != ex.requested,
            "upstream_calls": sum(c.made for c in ex.calls.values()),
            "upstream_429s": sum(c.rate_limited for c in ex.calls.values()),
            "tokens": use.as_dict() if use is not None else None,
            "cost_usd": 0.0 if cached else cost_usd,
            "saved_usd": cost_usd if cached else None,
        }
        if self.config.content:
            line["prompt"] = self._masker.value(_prompt_of(ex.body))
            line["answer"] = self._masker.value(_answer_of(answer)) if answer is not None else None
        self._write(json.dumps(line, ensure_ascii=False, separators=(",", ":")))

    def refused(self, request: web.Request, status: int, error: str | None) -> str:
        """Write the line of a request refused before it was parsed (malformed, too large, bad
        headers); the id for its answer's ``x-o1pool-request-id`` ("" when the trail is off)."""
        if self._write is None:
            return ""
        request_id = self.new_request_id()
        line = self._head(request_id, request, status, error)
        self._write(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
        return request_id

    def _head(self, request_id: str, request: web.Request, status: int, error: str | None) -> dict[str, Any]:
        """The fields every line starts with."""
        return {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "request_id": request_id,
            "client_request_id": _client_string(request.headers.get("X-Request-Id")),
            "pool": self._pool,
            **self._identity,
            "endpoint": request.path,
            "status": status,
            "error": error,
        }


def _prompt_of(body: dict[str, Any]) -> Any:
    for name in ("messages", "input", "prompt"):
        if name in body:
            return body[name]
    return None


def _answer_of(data: bytes) -> Any:
    """What an answer said: its choices' messages (Chat Completions) or its output (Responses);
    ``None`` for anything else (an embedding's vectors are not content anyone reads)."""
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    choices = parsed.get("choices")
    if isinstance(choices, list):
        return [c.get("message") for c in choices if isinstance(c, dict)]
    output = parsed.get("output")
    return output if isinstance(output, list) else None
