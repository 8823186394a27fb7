"""The forwarding loop of one request: cache, admission, upstream call, then what ``plan.next_step``
decides (retry, fall back, truncate, cache-only, fail). Decisions live in pure modules; this one does
the I/O and keeps each limiter grant released exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from o1sidecar import errors
from o1sidecar.cache import ResponseCache, cache_key, is_cacheable
from o1sidecar.config import SidecarConfig
from o1sidecar.controls import RequestControls
from o1sidecar.errors import ProxyError, error_body
from o1sidecar.inbound import CHAT, RESPONSES, Endpoint
from o1sidecar.limits.api import (
    Demand,
    Grant,
    Limiter,
    NoCapacity,
    QueueFull,
    QueueTimeout,
    QuotaExhausted,
    UpstreamReport,
)
from o1sidecar.metrics import NO_KEY, SidecarMetrics
from o1sidecar.outage_sync import SharedOutages
from o1sidecar.outages import Gate, ModelOutages
from o1sidecar.plan import Action, Outcome, PlanState, classify, next_step
from o1sidecar.quarantine import SharedQuarantine
from o1sidecar.reports import build_report, error_from_body, failure_report, usage_from_body
from o1sidecar.streaming import (
    ChatStreamCollector,
    ChatStreamRelay,
    ResponsesStreamRelay,
    replay_chat_completion,
    replay_response,
    sse_events,
)
from o1sidecar.tokens import TokenCounter, count_messages, requested_max_tokens
from o1sidecar.truncation import (
    overflows,
    parse_context_error,
    target_tokens,
    truncate_messages,
    window_target,
)
from o1sidecar.upstream import AccountRoute, UpstreamKey

log = logging.getLogger("o1sidecar.proxy")

CLIENT_CLOSED = 499
OUTAGE_POLL_S = 1.0  # a protected request waiting for a down model re-checks this often
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
    """One upstream answer that was read (non-stream) or is about to be streamed."""

    outcome: Outcome
    status: int = 0
    body: bytes = b""
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    content_type: str = "application/json"


@dataclass
class Served:
    """What the response headers report."""

    account: str = ""
    model: str = ""
    key: str = NO_KEY
    waited_s: float = 0.0
    degraded: bool = False
    cache: str = "miss"

    def headers(self) -> dict[str, str]:
        out = {
            "x-o1pool-queue-wait-ms": str(round(self.waited_s * 1000)),
            "x-o1pool-degraded": "true" if self.degraded else "false",
            "x-o1pool-cache": self.cache,
        }
        if self.account:
            out["x-o1pool-account"] = self.account
        if self.model:
            out["x-o1pool-model"] = self.model
        return out


@dataclass(frozen=True)
class Ask:
    """What the client asked for, and on what terms."""

    endpoint: Endpoint
    body: dict[str, Any]
    models: list[str]  # [requested, *fallback chain] that this pool serves
    controls: RequestControls
    deadline: float  # wall-clock epoch seconds


@dataclass(frozen=True)
class Admission:
    """A grant for one model of the chain, with the body to send it."""

    index: int  # in [requested, *fallback chain]
    model: str
    body: dict[str, Any]
    strip_usage: bool
    grant: Grant
    probe: bool = False  # the probe of a model that is down (outages.py)


@dataclass(frozen=True)
class Unavailable:
    """Every model left in the chain is down: answer from the cache, or 503 with ``retry_after_s``."""

    retry_after_s: float


@dataclass(frozen=True)
class Fitted:
    """The prompt to send (``None``: the client's own) and its token count, when already counted."""

    prompt: list[Any] | None
    prompt_tokens: int | None = None


class Proxy:
    """Shared state of one sidecar's proxy: config, limiter, routes, HTTP session, cache, metrics."""

    def __init__(
        self,
        config: SidecarConfig,
        limiter: Limiter,
        routes: dict[str, AccountRoute],
        counter: TokenCounter,
        cache: ResponseCache,
        metrics: SidecarMetrics,
        quarantine: SharedQuarantine | None = None,
        outages: ModelOutages | None = None,
        outage_sync: SharedOutages | None = None,
    ) -> None:
        self.config = config
        self.quarantine = quarantine
        self.outage_sync = outage_sync
        self.limiter = limiter
        self.routes = routes
        self.counter = counter
        self.cache = cache
        self.metrics = metrics
        self.session: aiohttp.ClientSession | None = None
        t = config.timeouts
        # No total for a stream: a long reasoning stream is fine while events keep coming (read_s
        # between two reads). An answer that is not streamed must come whole within total_s.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, connect=t.connect_s, sock_read=t.read_s)
        self._random = random.Random()
        self.outages = outages or ModelOutages(
            config.fallback.outage_failures, config.fallback.outage_probe_s
        )
        self._served_models = sorted({m for a in config.accounts for m in a.serves()})
        self._accounts_for = {m: [a.name for a in config.accounts_for(m)] for m in self._served_models}

    @property
    def models(self) -> list[str]:
        return self._served_models

    async def start(self) -> None:
        t = self.config.timeouts
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=t.total_s, connect=t.connect_s, sock_read=t.read_s),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        if self.quarantine is not None:
            await self.quarantine.start()
        if self.outage_sync is not None:
            await self.outage_sync.start()

    async def close(self) -> None:
        if self.quarantine is not None:
            await self.quarantine.close()
        if self.outage_sync is not None:
            await self.outage_sync.close()
        if self.session is not None:
            await self.session.close()

    # -- one request ---------------------------------------------------------------------------

    async def handle(
        self,
        request: web.Request,
        endpoint: Endpoint,
        raw: bytes,
        body: dict[str, Any],
        controls: RequestControls,
    ) -> web.StreamResponse:
        """Answer one parsed request; ``raw`` is forwarded as is when nothing in it has to change."""
        started = time.monotonic()
        requested = body["model"]
        stream = bool(body.get("stream"))
        served = Served(model=requested)
        models = [
            m for m in [requested, *self.config.fallback.chains.get(requested, [])] if m in self._accounts_for
        ]
        if not models:
            served.model = ""  # not a metric label: any string a client sends would become a series
            pool = f"{self.config.pool.namespace}/{self.config.pool.name}"
            return self._finish(errors.unknown_model(requested, self.models, pool), served, started)
        if models[0] != requested:
            served.degraded = True
        key = cache_key(endpoint.path, body) if self.config.cache.enabled else None
        # Every good answer is stored; only cacheable requests are answered from it up front. Any stored
        # answer may serve as the last resort (cache-only) once every model has failed.
        if key is not None and is_cacheable(body, self.config.cache):
            hit = await self._cache_get(key)
            if hit is not None:
                served.cache = hit[1]
                return await self._answer_from_cache(request, endpoint, hit[0], body, served, started)
        deadline = time.time() + controls.deadline_ms / 1000
        ask = Ask(endpoint, body, models, controls, deadline)
        state = PlanState()
        truncated_prompt: list[Any] | None = None
        attempt: UpstreamCall | None = None
        while True:
            admission = await self._admit(ask, state.model_index, truncated_prompt, served)
            if isinstance(admission, Unavailable):
                cached = await self._cache_only(request, endpoint, key, body, served, started)
                if cached is not None:
                    return cached
                return self._finish(
                    errors.model_unavailable(models, admission.retry_after_s), served, started
                )
            if isinstance(admission, ProxyError):
                return self._finish(admission, served, started)
            if admission.index != state.model_index:
                state = PlanState(admission.index, truncated=state.truncated)
            model, upstream_body, strip_usage, grant = (
                admission.model,
                admission.body,
                admission.strip_usage,
                admission.grant,
            )
            served.waited_s += grant.waited_s
            route = self.routes[grant.account]
            upstream_key = route.next_key()
            served.account, served.key = grant.account, upstream_key.label
            self.metrics.admitted(upstream_key.label, model, controls.priority, grant.waited_s)
            payload = raw if upstream_body is body else json.dumps(upstream_body).encode()
            # A streamed answer is cached too, when it came from the requested model.
            collect_for = key if stream and not served.degraded else None
            try:
                attempt, response = await self._call(
                    request,
                    endpoint,
                    route,
                    upstream_key,
                    model,
                    payload,
                    grant,
                    served,
                    stream,
                    strip_usage,
                    collect_for,
                )
            except BaseException:
                if admission.probe:
                    self.outages.probe_lost(model)
                raise
            await self._record_outcome(model, attempt.outcome, admission.probe)
            if response is not None:
                self._observe(response.status, served, started)
                if attempt.outcome is Outcome.OK and key is not None and not stream and not served.degraded:
                    self.cache.store(key, attempt.body)
                return response
            step = next_step(
                attempt.outcome,
                state,
                models,
                self.config.retry,
                cache_only=self.config.fallback.cache_only_last and self.config.cache.enabled,
                time_left_s=deadline - time.time(),
                jitter=self._random.random() * 0.25,
                model_down=self.outages.down(model),
            )
            if step.action is Action.RETURN:
                return self._finish(self._upstream_response(attempt, served), served, started)
            if step.action is Action.TRUNCATE:
                truncated_prompt = self._truncate(endpoint, upstream_body, model, attempt)
                if truncated_prompt is None:
                    return self._finish(self._upstream_response(attempt, served), served, started)
                log.info(
                    "context length exceeded on %s; retrying once with %d of %d messages",
                    model,
                    len(truncated_prompt),
                    len(upstream_body[endpoint.prompt_field]),
                )
                state = step.state
                continue
            if step.action is Action.RETRY:
                if step.delay_s > 0:
                    await asyncio.sleep(step.delay_s)
                state = step.state
                continue
            if step.action is Action.FALLBACK:
                self._note_fallback(model, models[step.state.model_index])
                state, served.degraded = step.state, True
                continue
            if step.action is Action.CACHE_ONLY:
                cached = await self._cache_only(request, endpoint, key, body, served, started)
                if cached is not None:
                    return cached
            return self._finish(self._exhausted(attempt, models), served, started)

    async def _cache_only(
        self,
        request: web.Request,
        endpoint: Endpoint,
        key: str | None,
        body: dict[str, Any],
        served: Served,
        started: float,
    ) -> web.StreamResponse | None:
        """The last resort when no model can answer: any stored answer to the same request."""
        if key is None or not self.config.fallback.cache_only_last:
            return None
        hit = await self._cache_get(key)
        if hit is None:
            return None
        served.cache, served.degraded, served.account, served.key = hit[1], True, "", NO_KEY
        served.model = body["model"]
        return await self._answer_from_cache(request, endpoint, hit[0], body, served, started)

    async def _record_outcome(self, model: str, outcome: Outcome, probe: bool) -> None:
        """Tell the outage policy how a call on ``model`` ended, and the pool when its phase changed."""
        changed = self.outages.record(model, outcome, probe=probe)
        if changed is not None and self.outage_sync is not None:
            await self.outage_sync.publish(model, changed, self.outages.now())

    async def _gate(self, model: str) -> Gate:
        """Whether a request may go to ``model`` now (outages.py); a probe is claimed for the pool."""
        gate = self.outages.gate(model)
        if gate.action == "probe" and self.outage_sync is not None:
            if not await self.outage_sync.claim_probe(model):
                self.outages.probe_lost(model)
                return Gate("down", self.outages.probe_s)
        return gate

    # -- admission -----------------------------------------------------------------------------

    def _demand(
        self, ask: Ask, model: str, fitted: Fitted, deadline: float
    ) -> tuple[Demand, dict[str, Any], bool]:
        upstream_body, strip_usage = self._upstream_body(ask.endpoint, ask.body, model, fitted.prompt)
        tokens = self.counter.charge(
            ask.endpoint.path, model, upstream_body, self.config.tokens, fitted.prompt_tokens
        )
        return Demand(model, tokens, ask.controls.priority, deadline), upstream_body, strip_usage

    async def _admit(
        self, ask: Ask, index: int, prompt: list[Any] | None, served: Served
    ) -> Admission | ProxyError | Unavailable:
        """Wait for a grant on ``ask.models[index]``; a model that is down or can never admit the
        request moves on along the chain, and at the deadline a later model with headroom right now
        takes it. When the last model is down, a protected priority waits for it (up to its deadline);
        others are ``Unavailable`` at once."""
        models, controls = ask.models, ask.controls
        while True:
            model = models[index]
            served.model = model
            gate = await self._gate(model)
            if gate.action == "down":
                if index + 1 < len(models):
                    self._note_fallback(model, models[index + 1])  # down everywhere: not worth a wait
                    index, served.degraded = index + 1, True
                    continue
                left = ask.deadline - time.time()
                if controls.priority < self.config.queue.peak_min_priority or left <= gate.retry_after_s:
                    return Unavailable(gate.retry_after_s)
                await asyncio.sleep(min(OUTAGE_POLL_S, left))
                continue
            probe = gate.action == "probe"
            fitted = self._fit_context(ask, model, prompt)
            if isinstance(fitted, ProxyError):
                if probe:
                    self.outages.probe_lost(model)
                return fitted
            demand, upstream_body, strip_usage = self._demand(ask, model, fitted, ask.deadline)
            try:
                grant = await self._acquire(demand, model, probe)
                return Admission(index, model, upstream_body, strip_usage, grant, probe)
            except QueueTimeout as exc:
                served.waited_s += exc.waited_s
                late = await self._admit_now(ask, index, prompt, served)
                if late is not None:
                    return late
                self.metrics.queue_rejections.labels("timeout").inc()
                return errors.queue_timeout(exc, model, controls.priority, controls.deadline_ms)
            except QueueFull as exc:
                self.metrics.queue_rejections.labels("full").inc()
                return errors.queue_full(exc, self.config.queue.max_length)
            except (NoCapacity, QuotaExhausted) as exc:
                if index + 1 < len(models):
                    self._note_fallback(model, models[index + 1])
                    index, served.degraded = index + 1, True
                    continue
                if isinstance(exc, QuotaExhausted):
                    self.metrics.queue_rejections.labels("quota").inc()
                    return errors.quota_exhausted(exc, models)
                return errors.no_capacity(exc, model, demand.tokens)

    async def _acquire(self, demand: Demand, model: str, probe: bool) -> Grant:
        try:
            return await self.limiter.acquire(demand, self._accounts_for[model])
        except BaseException:
            if probe:
                self.outages.probe_lost(model)
            raise

    def _fit_context(self, ask: Ask, model: str, prompt: list[Any] | None) -> Fitted | ProxyError:
        """The prompt to send to ``model`` (``None``: the client's own), so that it fits the model's
        context window with the completion budget: as it is, with the oldest messages dropped
        (``context.on_overflow: truncate``), or a 400 like the upstream's, before any quota is spent."""
        policy = self.config.context
        window = policy.window(model)
        if window is None or policy.on_overflow == "send" or ask.endpoint not in (CHAT, RESPONSES):
            return Fitted(prompt)
        field = ask.endpoint.prompt_field
        body = ask.body if prompt is None else {**ask.body, field: prompt}
        used = self.counter.prompt(ask.endpoint.path, model, body)
        budget = requested_max_tokens(body) or 0
        if not overflows(used, budget, window):
            return Fitted(prompt, used)  # counted once: the charge reuses it
        items = body.get(field)
        if policy.on_overflow == "truncate" and isinstance(items, list):
            count = self.counter.counter_for(model)
            kept = truncate_messages(items, lambda m: count_messages(m, count), window_target(budget, window))
            if kept is not None:
                log.info(
                    "%s: %d prompt tokens over its window; sending %d of %d messages",
                    model,
                    used,
                    len(kept),
                    len(items),
                )
                self.metrics.context_truncations.inc()
                return Fitted(kept)
        return errors.context_too_long(model, window, used, budget, field)

    async def _admit_now(
        self, ask: Ask, index: int, prompt: list[Any] | None, served: Served
    ) -> Admission | None:
        """The request's deadline passed waiting for ``ask.models[index]``: the first later model of the
        chain that can admit it right now, without waiting."""
        for later in range(index + 1, len(ask.models)):
            model = ask.models[later]
            if self.outages.state(model).phase != "up":
                continue
            fitted = self._fit_context(ask, model, prompt)
            if isinstance(fitted, ProxyError):
                continue
            demand, upstream_body, strip_usage = self._demand(ask, model, fitted, time.time())
            grant = await self.limiter.try_acquire(demand, self._accounts_for[model])
            if grant is not None:
                self._note_fallback(ask.models[index], model)
                served.model, served.degraded = model, True
                return Admission(later, model, upstream_body, strip_usage, grant)
        return None

    # -- upstream ------------------------------------------------------------------------------

    async def _call(
        self,
        request: web.Request,
        endpoint: Endpoint,
        route: AccountRoute,
        key: UpstreamKey,
        model: str,
        payload: bytes,
        grant: Grant,
        served: Served,
        stream: bool,
        strip_usage: bool,
        collect_for: str | None = None,
    ) -> tuple[UpstreamCall, web.StreamResponse | None]:
        """One upstream call under ``grant``; releases it. Returns the response when the client has
        been (or is being) answered, or ``None`` with the attempt for the plan to decide."""
        assert self.session is not None
        headers = {"Content-Type": "application/json", **route.auth_headers(key)}
        for name in FORWARDED_REQUEST_HEADERS:
            value = request.headers.get(name)
            if value is not None:
                headers[name] = value
        report: UpstreamReport | None = failure_report()
        try:
            try:
                async with self.session.post(
                    route.url(endpoint.path, model),
                    data=payload,
                    headers=headers,
                    timeout=self._stream_timeout if stream else self.session.timeout,
                ) as up:
                    if up.status == 200 and stream:
                        await self._key_worked(route, key)
                        response, report = await self._relay_stream(
                            request, endpoint, up, served, strip_usage, collect_for
                        )
                        return UpstreamCall(Outcome.OK, 200), response
                    data = await up.read()
                    error = error_from_body(data) if up.status >= 400 else None
                    usage = usage_from_body(data) if up.status < 300 else None
                    report = build_report(up.status, up.headers, usage=usage, error=error)
                    outcome = classify(up.status, (error or {}).get("code"))
                    reason = f"HTTP {up.status}"
                    if outcome is Outcome.AUTH_ERROR:
                        reason += f": the upstream refused key {key.label}"
                    attempt = UpstreamCall(
                        outcome,
                        status=up.status,
                        body=data,
                        error=error,
                        headers={h: up.headers[h] for h in PASSED_RESPONSE_HEADERS if h in up.headers},
                        reason=reason,
                        content_type=up.content_type or "application/json",
                    )
            except TimeoutError:
                self._note_failure(key, model, "timeout")
                return UpstreamCall(Outcome.TIMEOUT, reason="timed out"), None
            except aiohttp.ClientError as exc:
                self._note_failure(key, model, "connection")
                return UpstreamCall(
                    Outcome.NETWORK_ERROR, reason=f"connection error ({type(exc).__name__})"
                ), None
            except asyncio.CancelledError:
                report = UpstreamReport(status=CLIENT_CLOSED)  # the client left; not the upstream's fault
                raise
        finally:
            await self.limiter.release(grant, report)
        if attempt.outcome is Outcome.RATE_LIMITED:
            self.metrics.upstream_429.labels(key.label, model, report.limit_type or "other").inc()
            log.warning(
                "upstream 429 on %s for %s (%s); waiting through the limiter",
                key.label,
                model,
                report.limit_type or "unknown limit",
            )
        elif attempt.outcome is Outcome.SERVER_ERROR:
            self._note_failure(key, model, f"http_{attempt.status}")
        elif attempt.outcome is Outcome.AUTH_ERROR:
            self._note_failure(key, model, "key_refused")
            held = (
                route.refused(key) if self.quarantine is None else await self.quarantine.refused(route, key)
            )
            log.warning(
                "the upstream refused key %s (HTTP %s); not used for %.0fs (refusal %d in a row)",
                key.label,
                attempt.status,
                held.rest_s,
                held.refusals,
            )
        if attempt.outcome is Outcome.OK:
            await self._key_worked(route, key)
            return attempt, self._upstream_response(attempt, served)
        return attempt, None

    async def _key_worked(self, route: AccountRoute, key: UpstreamKey) -> None:
        if route.accepted(key) and self.quarantine is not None:
            await self.quarantine.accepted(key)

    async def _relay_stream(
        self,
        request: web.Request,
        endpoint: Endpoint,
        up: aiohttp.ClientResponse,
        served: Served,
        strip_usage: bool,
        collect_for: str | None,
    ) -> tuple[web.StreamResponse, UpstreamReport]:
        relay: ChatStreamRelay | ResponsesStreamRelay
        relay = ResponsesStreamRelay() if endpoint is RESPONSES else ChatStreamRelay(strip_usage)
        collector = ChatStreamCollector() if collect_for is not None and endpoint is CHAT else None
        response = web.StreamResponse(status=200, headers=served.headers())
        response.content_type = "text/event-stream"
        response.headers["Cache-Control"] = "no-cache"
        for h in PASSED_RESPONSE_HEADERS:
            if h in up.headers:
                response.headers[h] = up.headers[h]
        await response.prepare(request)
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
                    log.info("client of %s went away during the stream", served.model)
                    return response, UpstreamReport(status=CLIENT_CLOSED, usage_tokens=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:  # ValueError: an over-long line
            return response, await self._stream_cut(response, served, type(exc).__name__)
        if not relay.finished:
            return response, await self._stream_cut(response, served, "ended before its last event")
        await response.write_eof()
        if collect_for is not None:
            if isinstance(relay, ResponsesStreamRelay):
                rebuilt = relay.completed
            else:
                rebuilt = collector.completion(relay.usage) if collector is not None else None
            if rebuilt is not None:
                self.cache.store(collect_for, json.dumps(rebuilt).encode())
        return response, build_report(200, up.headers, usage=relay.usage)

    async def _stream_cut(self, response: web.StreamResponse, served: Served, why: str) -> UpstreamReport:
        """Tell the client in-band (the SDKs raise on an ``error`` event), since the status is sent."""
        log.warning("stream from %s for %s cut: %s", served.key, served.model, why)
        self.metrics.upstream_failures.labels(served.key, served.model, "stream_cut").inc()
        error = error_body(
            f"The upstream stream for {served.model} was cut part way ({why}); the answer is incomplete. "
            "Retry the request.",
            type="server_error",
            code="stream_cut",
        )
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
            await response.write_eof()
        return failure_report(200)

    def _upstream_body(
        self, endpoint: Endpoint, body: dict[str, Any], model: str, prompt: list[Any] | None
    ) -> tuple[dict[str, Any], bool]:
        """The body to send (the client's own object when unchanged) and whether the sidecar switched
        on stream usage the client did not ask for. Changes: served model, truncated prompt, usage."""
        changes: dict[str, Any] = {}
        if model != body["model"]:
            changes["model"] = model
        if prompt is not None:
            changes[endpoint.prompt_field] = prompt
        if endpoint is CHAT and body.get("stream"):
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage")):
                base = options if isinstance(options, dict) else {}
                changes["stream_options"] = {**base, "include_usage": True}
        strip_usage = "stream_options" in changes
        return ({**body, **changes} if changes else body), strip_usage

    def _truncate(
        self, endpoint: Endpoint, upstream_body: dict[str, Any], model: str, attempt: UpstreamCall
    ) -> list[Any] | None:
        items = upstream_body.get(endpoint.prompt_field)
        if not isinstance(items, list):
            return None
        count = self.counter.counter_for(model)
        estimate = count_messages(items, count)
        target = target_tokens(estimate, parse_context_error(str((attempt.error or {}).get("message", ""))))
        return truncate_messages(items, lambda msgs: count_messages(msgs, count), target)

    # -- answers -------------------------------------------------------------------------------

    def _upstream_response(self, attempt: UpstreamCall, served: Served) -> web.Response:
        return web.Response(
            status=attempt.status,
            body=attempt.body,
            content_type=attempt.content_type,
            headers={**attempt.headers, **served.headers()},
        )

    async def _answer_from_cache(
        self,
        request: web.Request,
        endpoint: Endpoint,
        data: bytes,
        body: dict[str, Any],
        served: Served,
        started: float,
    ) -> web.StreamResponse:
        if not body.get("stream"):
            answer = web.Response(body=data, content_type="application/json", headers=served.headers())
            self._observe(200, served, started, cached=True)
            return answer
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        response = web.StreamResponse(status=200, headers=served.headers())
        response.content_type = "text/event-stream"
        await response.prepare(request)
        stored = json.loads(data)
        events = (
            replay_response(stored)
            if endpoint is RESPONSES
            else replay_chat_completion(stored, include_usage)
        )
        for event in events:
            await response.write(event)
        await response.write_eof()
        self._observe(200, served, started, cached=True)
        return response

    async def _cache_get(self, key: str) -> tuple[bytes, str] | None:
        hit = await self.cache.get(key)
        self.metrics.cache_lookups.labels(hit[1] if hit else "miss").inc()
        return hit

    def _finish(self, response: web.Response | ProxyError, served: Served, started: float) -> web.Response:
        if isinstance(response, ProxyError):
            response = response.response(served.headers())
        self._observe(response.status, served, started)
        return response

    def _observe(self, status: int, served: Served, started: float, cached: bool = False) -> None:
        elapsed = time.monotonic() - started
        self.metrics.answered(status, served.model or NO_KEY, served.key, cached, elapsed)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%d %s via %s in %.1f ms (queued %.1f ms, cache %s, degraded %s)",
                status,
                served.model or "-",
                served.key,
                elapsed * 1000,
                served.waited_s * 1000,
                served.cache,
                served.degraded,
            )

    def _note_failure(self, key: UpstreamKey, model: str, reason: str) -> None:
        self.metrics.upstream_failures.labels(key.label, model, reason).inc()
        log.warning("upstream %s failed for %s: %s", key.label, model, reason)

    def _note_fallback(self, from_model: str, to_model: str) -> None:
        self.metrics.fallbacks.labels(from_model, to_model).inc()
        log.warning("falling back from %s to %s", from_model, to_model)

    def _exhausted(self, attempt: UpstreamCall | None, models: list[str]) -> ProxyError:
        if attempt is not None and attempt.outcome is Outcome.RATE_LIMITED:
            return errors.upstream_rate_limited(models, attempt.headers.get("retry-after", "1"))
        return errors.upstream_unavailable(
            models,
            self.config.retry.max_attempts,
            attempt.reason if attempt else "no attempt",
            timed_out=attempt is not None and attempt.outcome is Outcome.TIMEOUT,
        )
