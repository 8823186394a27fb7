"""Traces of requests (OpenTelemetry). With ``tracing.otlp_endpoint`` set, each request the proxy
handles gets a root span named and described by the GenAI semantic conventions, and child spans for
its steps, exported over OTLP/HTTP (otlp.py); a request carrying a W3C ``traceparent`` continues the
app's trace. Off (the default), ``Tracing.request`` gives ``NO_TRACE``, whose steps are empty
methods, and the OpenTelemetry SDK is not even imported.

One request's spans::

    chat o1            SERVER    the client's request until its answer is sent (a stream's last event)
      cache lookup     INTERNAL  the layer that had the answer, or miss; an event per remote layer
      coalesce         INTERNAL  answered by an identical request in flight, or leading it
      admission        INTERNAL  the queue: model and account granted, seconds waited (or why not)
      upstream o1      CLIENT    one per attempt: account, key name, HTTP status, outcome
      ...              (a fallback to another model is an event of the root: from, to)

No attribute holds prompt or answer content or a key's value: the request's parameters (model, max
tokens, temperature, ...), the answer's id, model, finish reasons and token counts, names of accounts
and keys, statuses and error codes. Strings from the upstream are kept only when they look like the
identifiers they should be.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from o1sidecar.config import PoolRef, SidecarConfig
from o1sidecar.errors import ProxyError
from o1sidecar.inbound import EMBEDDINGS
from o1sidecar.metrics import NO_KEY
from o1sidecar.plan import Outcome
from o1sidecar.streaming import ChatStreamRelay, ResponsesStreamRelay

if TYPE_CHECKING:
    from o1sidecar.admission import Admission, Unavailable
    from o1sidecar.cache import Hit, LookupObserver
    from o1sidecar.calling import UpstreamCall
    from o1sidecar.coalescing import Lead
    from o1sidecar.exchange import Exchange
    from o1sidecar.otlp import Exporting

log = logging.getLogger("o1sidecar.tracing")

Attributes = dict[str, AttributeValue]

# GenAI semantic conventions (and the general ones they use).
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
SYSTEM = "gen_ai.system"  # (the name before gen_ai.provider.name; backends still read it)
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
ERROR_TYPE = "error.type"
HTTP_STATUS = "http.response.status_code"
# o1pool's own.
POOL = "o1pool.pool"
PRIORITY = "o1pool.priority"
CACHE = "o1pool.cache"  # miss, l1, l2, l3, semantic, coalesced
ACCOUNT = "o1pool.account"
KEY = "o1pool.key"  # account/key: the key's name
QUEUE_WAIT = "o1pool.queue.wait_s"

# The request's numeric parameters (the first of several names wins).
REQUEST_NUMBERS = (
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("max_output_tokens", "gen_ai.request.max_tokens"),
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("seed", "gen_ai.request.seed"),
    ("n", "gen_ai.request.choice.count"),
)
ANSWER_STRINGS = (
    ("id", RESPONSE_ID),
    ("model", RESPONSE_MODEL),
    ("service_tier", "openai.response.service_tier"),
    ("system_fingerprint", "openai.response.system_fingerprint"),
)
_IDENTIFIER = re.compile(r"[\w.:/-]{1,128}", re.ASCII)
_INT64 = range(-(2**63), 2**63)


class StepSpan:
    """A child span of a request's trace while its ``with`` block runs; this one records nothing."""

    def __enter__(self) -> StepSpan:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def found(self, hit: Hit | None) -> None:
        """(cache lookup) The layer that had the answer, or a miss."""

    def joined(self, joined: bytes | Lead) -> None:
        """(coalesce) Answered by an identical request in flight, or leading (or alone)."""

    def admitted(self, admission: Admission | ProxyError | Unavailable) -> None:
        """(admission) The model and account granted and the wait, or why not."""

    def ended(self, call: UpstreamCall) -> None:
        """(upstream attempt) The key used, the HTTP status and what it meant."""


NO_STEP_SPAN = StepSpan()


class RequestTrace:
    """What one request's trace records; this one (``NO_TRACE``) records nothing."""

    recording = False

    def lookup(self) -> StepSpan:
        return NO_STEP_SPAN

    def coalescing(self) -> StepSpan:
        return NO_STEP_SPAN

    def admission(self) -> StepSpan:
        return NO_STEP_SPAN

    def attempt(self, admission: Admission) -> StepSpan:
        return NO_STEP_SPAN

    def streamed(self, relay: ChatStreamRelay | ResponsesStreamRelay) -> None:
        """A streamed answer was relayed whole: what its events said."""

    def answered(self, response: web.StreamResponse) -> None:
        """The answer the client gets."""


NO_TRACE = RequestTrace()
_OFF: nullcontext[RequestTrace] = nullcontext(NO_TRACE)


class Tracing:
    """A sidecar's tracing: off unless ``tracing.otlp_endpoint`` is set. ``start`` and ``close`` run with
    the app: the exporter's thread, and its last flush."""

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config.tracing
        self.pool: PoolRef = config.pool
        self.servers = {a.name: _server(a.base_url) for a in config.accounts}
        self.exporting: Exporting | None = None
        self._tracer: Tracer | None = None
        self._propagator = TraceContextTextMapPropagator()

    @property
    def enabled(self) -> bool:
        return self.config.otlp_endpoint is not None

    async def start(self) -> None:
        if self.enabled:
            from o1sidecar.otlp import Exporting  # the SDK and the exporter: only when used

            self.exporting = Exporting(self.config, self.pool)
            self._tracer = self.exporting.provider.get_tracer("o1sidecar")

    async def close(self) -> None:
        self._tracer = None
        if self.exporting is not None:
            await self.exporting.close()

    def request(self, ex: Exchange) -> AbstractContextManager[RequestTrace]:
        """The root span of ``ex`` while its answer is made (``ex.trace`` meanwhile); ``NO_TRACE`` when
        tracing is off or the request is not sampled."""
        return _OFF if self._tracer is None else self._root(ex, self._tracer)

    @contextmanager
    def _root(self, ex: Exchange, tracer: Tracer) -> Iterator[RequestTrace]:
        parent = self._propagator.extract(ex.request.headers)
        operation = "embeddings" if ex.endpoint is EMBEDDINGS else "chat"
        with tracer.start_as_current_span(
            f"{operation} {ex.requested}" if ex.models else operation,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=_request_attributes(ex, operation, self.pool),
            record_exception=False,  # (an exception's message is not ours to export)
            set_status_on_exception=False,
        ) as span:
            if not span.is_recording():
                yield NO_TRACE
                return
            trace = ex.trace = _Recording(self, tracer, span, ex)
            try:
                yield trace
            except BaseException as exc:
                _failed(span, exc)
                raise
            finally:
                trace.close()

    def observing(self, observe: LookupObserver) -> LookupObserver:
        """``observe`` (the metrics' per-layer cache observer) that, with tracing on, also adds each
        remote layer's result to the cache lookup span under way."""
        if not self.enabled:
            return observe

        def both(layer: str, result: str, seconds: float) -> None:
            observe(layer, result, seconds)
            span = otel_trace.get_current_span()
            if span.is_recording():
                attributes = {"o1pool.cache.layer": layer, "o1pool.cache.result": result}
                span.add_event("cache layer", {**attributes, "o1pool.cache.seconds": seconds})

        return both


class _Recording(RequestTrace):
    recording = True

    def __init__(self, tracing: Tracing, tracer: Tracer, root: Span, ex: Exchange) -> None:
        self.tracing = tracing
        self.tracer = tracer
        self.root = root
        self.ex = ex
        self.attempts = 0
        self.model = ex.requested  # what the last admission granted: another is a fallback
        self.answer: Attributes = {}  # a streamed answer's, from its events

    def lookup(self) -> StepSpan:
        return _SpanStep(self, "cache lookup", SpanKind.INTERNAL, {})

    def coalescing(self) -> StepSpan:
        return _SpanStep(self, "coalesce", SpanKind.INTERNAL, {})

    def admission(self) -> StepSpan:
        ex = self.ex
        waiting: Attributes = {PRIORITY: ex.controls.priority, REQUEST_MODEL: ex.models[ex.plan.model_index]}
        return _SpanStep(self, "admission", SpanKind.INTERNAL, waiting)

    def attempt(self, admission: Admission) -> StepSpan:
        self.attempts += 1
        account = admission.grant.account
        attributes: Attributes = {
            REQUEST_MODEL: admission.model,
            ACCOUNT: account,
            "o1pool.attempt": self.attempts,
            "http.request.method": "POST",
            **self.tracing.servers.get(account, {}),
        }
        if admission.probe:
            attributes["o1pool.probe"] = True
        return _SpanStep(self, f"upstream {admission.model}", SpanKind.CLIENT, attributes)

    def granted(self, model: str) -> None:
        if model != self.model:
            self.root.add_event("fallback", {"o1pool.fallback.from": self.model, "o1pool.fallback.to": model})
            self.model = model

    def streamed(self, relay: ChatStreamRelay | ResponsesStreamRelay) -> None:
        if isinstance(relay, ResponsesStreamRelay):
            data = relay.completed if relay.completed is not None else {"usage": relay.usage}
        else:
            reasons = [{"finish_reason": reason} for reason in relay.finish_reasons]
            data = {**relay.head, "usage": relay.usage, "choices": reasons}
        self.answer = _answer_attributes(data, usage=True)

    def answered(self, response: web.StreamResponse) -> None:
        try:
            self._answered(response)
        except Exception:  # a trace is never worth a client's answer
            log.debug("could not describe the answer in its span", exc_info=True)

    def _answered(self, response: web.StreamResponse) -> None:
        ex, span = self.ex, self.root
        span.set_attribute(HTTP_STATUS, response.status)
        body = response.body if isinstance(response, web.Response) else None
        data = _json(body) if isinstance(body, bytes) else None
        if response.status >= 400:
            span.set_attribute(ERROR_TYPE, _error_code(data) or str(response.status))
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return
        answer = self.answer or _answer_attributes(data, usage=ex.cache == "miss")  # (a hit spent nothing)
        if ex.model:
            answer.setdefault(RESPONSE_MODEL, ex.model)
        span.set_attributes(answer)

    def close(self) -> None:
        """What the exchange says once it is over, however it ended."""
        ex = self.ex
        attributes: Attributes = {
            CACHE: ex.cache,
            "o1pool.degraded": ex.degraded,
            QUEUE_WAIT: ex.waited_s,
            "o1pool.attempts": self.attempts,
        }
        if ex.model:
            attributes["o1pool.model"] = ex.model
        if ex.account:
            attributes[ACCOUNT] = ex.account
            attributes.update(self.tracing.servers.get(ex.account, {}))
        if ex.key != NO_KEY:
            attributes[KEY] = ex.key
        self.root.set_attributes(attributes)


class _SpanStep(StepSpan):
    """A child span, current while its ``with`` block runs."""

    def __init__(self, trace: _Recording, name: str, kind: SpanKind, attributes: Attributes) -> None:
        self.trace = trace
        self.span = trace.tracer.start_span(name, kind=kind, attributes=attributes)
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> StepSpan:
        self._token = otel_context.attach(otel_trace.set_span_in_context(self.span))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            _failed(self.span, exc)
        if self._token is not None:
            otel_context.detach(self._token)
        self.span.end()

    def found(self, hit: Hit | None) -> None:
        self.span.set_attribute("o1pool.cache.result", hit.layer if hit is not None else "miss")
        if hit is not None and hit.similarity is not None:
            self.span.set_attribute("o1pool.cache.similarity", hit.similarity)

    def joined(self, joined: bytes | Lead) -> None:
        result = "answered" if isinstance(joined, bytes) else "alone" if joined.coalescer is None else "lead"
        self.span.set_attribute("o1pool.coalesce", result)

    def admitted(self, admission: Admission | ProxyError | Unavailable) -> None:
        from o1sidecar.admission import Admission  # (admission.py imports exchange.py, which imports this)

        if isinstance(admission, Admission):
            self.trace.granted(admission.model)
            granted: Attributes = {
                "o1pool.model": admission.model,
                ACCOUNT: admission.grant.account,
                QUEUE_WAIT: admission.grant.waited_s,
            }
            self.span.set_attributes(granted)
        elif isinstance(admission, ProxyError):
            self.span.set_attribute(ERROR_TYPE, admission.code or str(admission.status))
        else:  # every model left is down
            self.span.set_attribute(ERROR_TYPE, "model_unavailable")

    def ended(self, call: UpstreamCall) -> None:
        ex, span = self.trace.ex, self.span
        attributes: Attributes = {"o1pool.outcome": call.outcome.value}
        if ex.key != NO_KEY:
            attributes[KEY] = ex.key
        if call.status:
            attributes[HTTP_STATUS] = call.status
        if call.outcome is not Outcome.OK:
            attributes[ERROR_TYPE] = str(call.status) if call.status else call.outcome.value
            code = _identifier((call.error or {}).get("code"))
            if code is not None:
                attributes["o1pool.upstream.error_code"] = code
            span.set_status(Status(StatusCode.ERROR))
        span.set_attributes(attributes)


def _failed(span: Span, exc: BaseException) -> None:
    """An exception ended the span: its type (never its message); a client that left is no error."""
    if isinstance(exc, asyncio.CancelledError):
        span.set_attribute(ERROR_TYPE, "cancelled")
        return
    span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR))


def _request_attributes(ex: Exchange, operation: str, pool: PoolRef) -> Attributes:
    attributes: Attributes = {
        OPERATION: operation,
        PROVIDER: "openai",
        SYSTEM: "openai",
        "http.request.method": "POST",
        "http.route": f"/v1/{ex.endpoint.path}",
        POOL: f"{pool.namespace}/{pool.name}",
        PRIORITY: ex.controls.priority,
        "o1pool.deadline_ms": ex.controls.deadline_ms,
        "o1pool.stream": ex.stream,
    }
    if ex.models:  # (a model the pool knows, not any string a client sends)
        attributes[REQUEST_MODEL] = ex.requested
    for field, name in REQUEST_NUMBERS:
        value = ex.body.get(field)
        if name in attributes or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, int) and value not in _INT64:
            continue
        if name != "gen_ai.request.choice.count" or value != 1:
            attributes[name] = value
    return attributes


def _answer_attributes(data: Any, usage: bool) -> Attributes:
    """What an answer (a chat completion, a Responses-API response, embeddings) says of itself."""
    if not isinstance(data, dict):
        return {}
    attributes: Attributes = {}
    for field, name in ANSWER_STRINGS:
        value = _identifier(data.get(field))
        if value is not None:
            attributes[name] = value
    choices = data.get("choices")
    if isinstance(choices, list):
        reasons = [_identifier(c.get("finish_reason")) for c in choices if isinstance(c, dict)]
        attributes[FINISH_REASONS] = [r for r in reasons if r is not None]
    elif (status := _identifier(data.get("status"))) is not None:  # a response: completed, incomplete
        attributes[FINISH_REASONS] = [status]
    counts = data.get("usage")
    if usage and isinstance(counts, dict):
        for names, name in (
            (("prompt_tokens", "input_tokens"), INPUT_TOKENS),
            (("completion_tokens", "output_tokens"), OUTPUT_TOKENS),
        ):
            found = [counts[n] for n in names if type(counts.get(n)) is int and counts[n] in _INT64]
            if found:
                attributes[name] = found[0]
    return attributes


def _error_code(data: Any) -> str | None:
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None
    return _identifier(error.get("code")) or _identifier(error.get("type"))


def _identifier(value: Any) -> str | None:
    return value if isinstance(value, str) and _IDENTIFIER.fullmatch(value) else None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _server(base_url: str) -> Attributes:
    url = urlsplit(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    return {"server.address": url.hostname or "", "server.port": port}
