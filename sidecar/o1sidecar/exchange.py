"""One request's exchange: what the client asked (and on what terms), what has been tried, and what the
answer reports in its ``x-o1pool-*`` headers. Created by the proxy for each request and passed to
each step (admission.py, calling.py, answers.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from o1sidecar.coalescing import ALONE, Lead
from o1sidecar.config import Client
from o1sidecar.controls import RequestControls
from o1sidecar.inbound import Endpoint
from o1sidecar.metrics import NO_KEY
from o1sidecar.plan import PlanState
from o1sidecar.semantic import SemanticQuery
from o1sidecar.tracing import NO_TRACE, RequestTrace


@dataclass
class Calls:
    """Upstream calls one request made to one model (every attempt), and how many were answered 429."""

    made: int = 0
    rate_limited: int = 0


@dataclass
class Exchange:
    # What was asked, and on what terms.
    request: web.Request
    endpoint: Endpoint
    raw: bytes  # forwarded as is when nothing in the body has to change
    body: dict[str, Any]
    controls: RequestControls
    models: list[str]  # [requested, *fallback chain] that this pool serves
    deadline: float  # wall-clock epoch seconds
    cache_key: str | None  # None: the cache is off
    started: float = field(default_factory=time.monotonic)
    # What has been tried.
    plan: PlanState = field(default_factory=PlanState)
    prompt: list[Any] | None = None  # a shortened prompt, once the upstream said it was too long
    # What the answer reports.
    account: str = ""
    model: str = ""
    key: str = NO_KEY
    waited_s: float = 0.0
    tokens: int = 0  # what admission charged for the last model tried (0: not counted)
    calls: dict[str, Calls] = field(default_factory=dict)  # upstream calls made, by the model called
    degraded: bool = False
    cache: str = "miss"
    question: SemanticQuery | None = None  # what the semantic layer matches on, if this request uses it
    similarity: float | None = None  # of the question a semantic hit answered
    trace: RequestTrace = NO_TRACE  # its spans, while tracing.py records them
    client: Client | None = None  # the pool's client it is from (clients.py)
    priority_asked: int | None = None  # what it asked, when the client's ceiling lowered it
    request_id: str = ""  # the audit line's and x-o1pool-request-id's ("": the audit trail is off)
    usage: dict[str, Any] | None = None  # the answer's usage (the upstream's, or a stored answer's)
    upstream_request_id: str | None = None  # the upstream's x-request-id for the answer
    # What it leads while it calls the model: identical requests wait for its answer (coalescing.py).
    lead: Lead = field(default_factory=lambda: ALONE)

    @property
    def requested(self) -> str:
        return str(self.body["model"])

    @property
    def reads_cache(self) -> bool:
        """Whether a stored answer may answer this request (the pool's cache is on, the request allows it)."""
        return self.cache_key is not None and self.controls.cache.read

    @property
    def stores_answer(self) -> bool:
        """Whether this request's answer may be stored: the cache is on, the request allows it, and the
        answer is the requested model's (not a fallback's)."""
        return self.cache_key is not None and self.controls.cache.store and not self.degraded

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    def time_left_s(self) -> float:
        return self.deadline - time.time()

    def headers(self) -> dict[str, str]:
        out = {
            "x-o1pool-queue-wait-ms": str(round(self.waited_s * 1000)),
            "x-o1pool-degraded": "true" if self.degraded else "false",
            "x-o1pool-cache": self.cache,
        }
        if self.similarity is not None:
            out["x-o1pool-cache-similarity"] = f"{self.similarity:.4f}"
        if self.account:
            out["x-o1pool-account"] = self.account
        if self.model:
            out["x-o1pool-model"] = self.model
        if self.request_id:
            out["x-o1pool-request-id"] = self.request_id
        if self.priority_asked is not None:
            out["x-o1pool-priority"] = str(self.controls.priority)
            out["x-o1pool-priority-asked"] = str(self.priority_asked)
        return out
