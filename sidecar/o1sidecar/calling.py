"""One upstream call under a limiter grant: the account's next key, the request, and the answer read
whole or relayed event by event as a stream; the grant released exactly once with what the upstream
said (usage, rate-limit headers, a 429's type) for the limiter to reconcile; refused keys rested."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from o1sidecar.cache import ResponseCache
from o1sidecar.config import SidecarConfig
from o1sidecar.errors import error_body
from o1sidecar.exchange import Calls, Exchange
from o1sidecar.inbound import CHAT, RESPONSES
from o1sidecar.limits.api import Grant, Limiter, UpstreamReport
from o1sidecar.metrics import SidecarMetrics
from o1sidecar.plan import Outcome, classify
from o1sidecar.quarantine import SharedQuarantine
from o1sidecar.reports import build_report, error_from_body, failure_report, usage_from_body
from o1sidecar.streaming import ChatStreamCollector, ChatStreamRelay, ResponsesStreamRelay, sse_events
from o1sidecar.upstream import AccountRoute, UpstreamKey

log = logging.getLogger("o1sidecar.proxy")

CLIENT_CLOSED = 499
# Client headers that change what the upstream does and carry nothing of the app's identity.
FORWARDED_REQUEST_HEADERS = ("OpenAI-Beta", "X-Request-Id")
PASSED_RESPONSE_HEADERS = (
    "x-request-id",
    "openai-processing-ms",
    "openai-version",
    "openai-model",
    "retry-after",
    "retry-after-ms",
)


@dataclass
class UpstreamCall:
    """One upstream answer that was read (non-stream) or is being streamed (``streamed``)."""

    outcome: Outcome
    status: int = 0
    body: bytes = b""
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    content_type: str = "application/json"
    streamed: web.StreamResponse | None = None  # the client is (or was) answered by this stream


class UpstreamCaller:
    def __init__(
        self,
        config: SidecarConfig,
        routes: Mapping[str, AccountRoute],
        limiter: Limiter,
        cache: ResponseCache,
        metrics: SidecarMetrics,
        quarantine: SharedQuarantine | None,
    ) -> None:
        self.routes = routes
        self.limiter = limiter
        self.cache = cache
        self.metrics = metrics
        self.quarantine = quarantine
        t = config.timeouts
        self._timeout = aiohttp.ClientTimeout(total=t.total_s, connect=t.connect_s, sock_read=t.read_s)
        # No total for a stream: a long reasoning stream is fine while events keep coming (read_s
        # between two reads). An answer that is not streamed must come whole within total_s.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, connect=t.connect_s, sock_read=t.read_s)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
            timeout=self._timeout,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def call(
        self, ex: Exchange, model: str, body: dict[str, Any], strip_usage: bool, grant: Grant
    ) -> UpstreamCall:
        """Send ``body`` to ``model`` on the grant's account with its next key; releases the grant."""
        route = self.routes[grant.account]
        key = route.next_key()
        ex.account, ex.key = grant.account, key.label
        calls = ex.calls.setdefault(model, Calls())
        calls.made += 1
        self.metrics.admitted(key.label, model, ex.controls.priority, grant.waited_s)
        payload = ex.raw if body is ex.body else json.dumps(body).encode()
        report: UpstreamReport = failure_report()
        try:
            result, report = await self._send(ex, route, key, model, payload, strip_usage)
        except TimeoutError:
            result = UpstreamCall(Outcome.TIMEOUT, reason="timed out")
        except aiohttp.ClientError as exc:
            result = UpstreamCall(Outcome.NETWORK_ERROR, reason=f"connection error ({type(exc).__name__})")
        except asyncio.CancelledError:
            report = UpstreamReport(status=CLIENT_CLOSED)  # the client left; not the upstream's fault
            raise
        finally:
            await self.limiter.release(grant, report)
        calls.rate_limited += result.outcome is Outcome.RATE_LIMITED
        await self._note(result, route, key, model, report)
        return result

    async def _send(
        self,
        ex: Exchange,
        route: AccountRoute,
        key: UpstreamKey,
        model: str,
        payload: bytes,
        strip_usage: bool,
    ) -> tuple[UpstreamCall, UpstreamReport]:
        assert self.session is not None
        headers = {"Content-Type": "application/json", **route.auth_headers(key)}
        for name in FORWARDED_REQUEST_HEADERS:
            value = ex.request.headers.get(name)
            if value is not None:
                headers[name] = value
        timeout = self._stream_timeout if ex.stream else self._timeout
        url = route.url(ex.endpoint.path, model)
        async with self.session.post(url, data=payload, headers=headers, timeout=timeout) as up:
            if up.status == 200 and ex.stream:
                await self._key_worked(route, key)
                response, report = await self._relay(ex, up, strip_usage)
                return UpstreamCall(Outcome.OK, 200, streamed=response), report
            data = await up.read()
            error = error_from_body(data) if up.status >= 400 else None
            usage = usage_from_body(data) if up.status < 300 else None
            ex.usage, ex.upstream_request_id = usage, up.headers.get("x-request-id")
            report = build_report(up.status, up.headers, usage=usage, error=error)
            outcome = classify(up.status, (error or {}).get("code"))
            reason = f"HTTP {up.status}"
            if outcome is Outcome.AUTH_ERROR:
                reason += f": the upstream refused key {key.label}"
            passed = {h: up.headers[h] for h in PASSED_RESPONSE_HEADERS if h in up.headers}
            content_type = up.content_type or "application/json"
            return UpstreamCall(outcome, up.status, data, error, passed, reason, content_type), report

    async def _note(
        self, result: UpstreamCall, route: AccountRoute, key: UpstreamKey, model: str, report: UpstreamReport
    ) -> None:
        """Metrics and logs of a call that ended, and what it says about its key."""
        outcome = result.outcome
        if outcome is Outcome.OK:
            if result.streamed is None:  # (a stream's key was noted when it began)
                await self._key_worked(route, key)
        elif outcome is Outcome.RATE_LIMITED:
            limit = report.limit_type or "other"
            self.metrics.upstream_429.labels(key.label, model, limit).inc()
            log.warning(
                "upstream 429 on %s for %s (%s); waiting through the limiter",
                key.label,
                model,
                report.limit_type or "unknown limit",
            )
        elif outcome in (Outcome.SERVER_ERROR, Outcome.TIMEOUT, Outcome.NETWORK_ERROR):
            reason = {Outcome.TIMEOUT: "timeout", Outcome.NETWORK_ERROR: "connection"}.get(
                outcome, f"http_{result.status}"
            )
            self.note_failure(key.label, model, reason)
        elif outcome is Outcome.AUTH_ERROR:
            self.note_failure(key.label, model, "key_refused")
            held = (
                route.refused(key) if self.quarantine is None else await self.quarantine.refused(route, key)
            )
            log.warning(
                "the upstream refused key %s (HTTP %s); not used for %.0fs (refusal %d in a row)",
                key.label,
                result.status,
                held.rest_s,
                held.refusals,
            )

    async def _key_worked(self, route: AccountRoute, key: UpstreamKey) -> None:
        if route.accepted(key) and self.quarantine is not None:
            await self.quarantine.accepted(key)

    def note_failure(self, key: str, model: str, reason: str) -> None:
        self.metrics.upstream_failures.labels(key, model, reason).inc()
        log.warning("upstream %s failed for %s: %s", key, model, reason)

    async def _relay(
        self, ex: Exchange, up: aiohttp.ClientResponse, strip_usage: bool
    ) -> tuple[web.StreamResponse, UpstreamReport]:
        """Relay the upstream's stream event by event; a streamed answer from the requested model is
        stored in the cache too."""
        collect_for = ex.cache_key if ex.stores_answer else None
        relay: ChatStreamRelay | ResponsesStreamRelay
        relay = (
            ResponsesStreamRelay()
            if ex.endpoint is RESPONSES
            else ChatStreamRelay(strip_usage, watch=ex.trace.recording)
        )
        collector = ChatStreamCollector() if collect_for is not None and ex.endpoint is CHAT else None
        response = web.StreamResponse(status=200, headers=ex.headers())
        response.content_type = "text/event-stream"
        response.headers["Cache-Control"] = "no-cache"
        for h in PASSED_RESPONSE_HEADERS:
            if h in up.headers:
                response.headers[h] = up.headers[h]
        await response.prepare(ex.request)
        try:
            async for event in sse_events(up.content):
                if collector is not None:
                    collector.add(event)
                out = relay.feed(event)
                if out is None:
                    continue
                try:
                    await response.write(out)
                except ConnectionError:
                    log.info("client of %s went away during the stream", ex.model)
                    return response, UpstreamReport(status=CLIENT_CLOSED, usage_tokens=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:  # ValueError: an over-long line
            return response, await self._cut(ex, response, type(exc).__name__)
        if not relay.finished:
            return response, await self._cut(ex, response, "ended before its last event")
        await response.write_eof()
        ex.usage, ex.upstream_request_id = relay.usage, up.headers.get("x-request-id")
        ex.trace.streamed(relay)
        if collect_for is not None:
            if isinstance(relay, ResponsesStreamRelay):
                rebuilt = relay.completed
            else:
                rebuilt = collector.completion(relay.usage) if collector is not None else None
            if rebuilt is not None:
                ex.lead.store(self.cache, collect_for, json.dumps(rebuilt).encode(), ex.question)
        return response, build_report(200, up.headers, usage=relay.usage)

    async def _cut(self, ex: Exchange, response: web.StreamResponse, why: str) -> UpstreamReport:
        """Tell the client in-band (the SDKs raise on an ``error`` event), since the status is sent."""
        log.warning("stream from %s for %s cut: %s", ex.key, ex.model, why)
        self.metrics.upstream_failures.labels(ex.key, ex.model, "stream_cut").inc()
        error = error_body(
            f"The upstream stream for {ex.model} was cut part way ({why}); the answer is incomplete. "
            "Retry the request.",
            type="server_error",
            code="stream_cut",
        )
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
            await response.write_eof()
        return failure_report(200)
