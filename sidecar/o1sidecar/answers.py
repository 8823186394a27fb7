"""What the client gets back when the sidecar answers: a stored answer (replayed as a stream when it
asked for one), the upstream's own answer, or an error of the sidecar's; each counted in the metrics
with the exchange's ``x-o1pool-*`` headers."""

from __future__ import annotations

import json
import logging
import time

from aiohttp import web

from o1sidecar import errors
from o1sidecar.audit import AuditLog
from o1sidecar.cache import Claim, Hit, ResponseCache
from o1sidecar.calling import UpstreamCall
from o1sidecar.clients import Clients
from o1sidecar.config import SidecarConfig
from o1sidecar.demand import DemandCounts
from o1sidecar.errors import ProxyError
from o1sidecar.exchange import Exchange
from o1sidecar.inbound import RESPONSES
from o1sidecar.metrics import NO_KEY, SidecarMetrics
from o1sidecar.plan import Outcome
from o1sidecar.prices import PriceTable, TokenUse
from o1sidecar.reports import usage_from_body
from o1sidecar.streaming import replay_chat_completion, replay_response

log = logging.getLogger("o1sidecar.proxy")


class Answers:
    def __init__(
        self,
        config: SidecarConfig,
        cache: ResponseCache,
        metrics: SidecarMetrics,
        audit: AuditLog,
        clients: Clients,
        demand: DemandCounts | None = None,
    ) -> None:
        self.config = config
        self.cache = cache
        self.metrics = metrics
        self.audit = audit
        self.clients = clients
        self.demand = demand
        self.prices: PriceTable = config.price_table()

    async def cached(self, ex: Exchange, claim: Claim | None = None) -> Hit | None:
        """The stored answer to the exchange's request and the layer that had it (``l1``, ``l2``,
        ``l3``, or ``semantic`` when it asked a question that one answers); an L2 miss takes the
        ``claim``'s in-flight key (coalescing.py)."""
        assert ex.cache_key is not None
        with ex.trace.lookup() as span:
            hit = await self.cache.get(ex.cache_key, ex.question, claim)
            span.found(hit)
        self.metrics.cache_lookup(hit.layer if hit else "miss")
        if hit is not None:
            ex.cache, ex.similarity = hit.layer, hit.similarity
        return hit

    async def from_cache(self, ex: Exchange, data: bytes) -> web.StreamResponse:
        ex.usage = usage_from_body(data)  # (what the hit saved)
        if not ex.stream:
            answer = web.Response(body=data, content_type="application/json", headers=ex.headers())
            self.observe(ex, 200, cached=True, answer=data)
            return answer
        options = ex.body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        response = web.StreamResponse(status=200, headers=ex.headers())
        response.content_type = "text/event-stream"
        await response.prepare(ex.request)
        stored = json.loads(data)
        events = (
            replay_response(stored)
            if ex.endpoint is RESPONSES
            else replay_chat_completion(stored, include_usage)
        )
        for event in events:
            await response.write(event)
        await response.write_eof()
        self.observe(ex, 200, cached=True, answer=data)
        return response

    async def cache_only(self, ex: Exchange) -> web.StreamResponse | None:
        """The last resort when no model can answer: any stored answer to the same request."""
        if ex.cache_key is None or not ex.reads_cache or not self.config.fallback.cache_only_last:
            return None
        hit = await self.cached(ex)
        if hit is None:
            return None
        ex.degraded, ex.account, ex.key, ex.model = True, "", NO_KEY, ex.requested
        return await self.from_cache(ex, hit.body)

    async def unavailable(self, ex: Exchange, retry_after_s: float) -> web.StreamResponse:
        """Every model left in the chain is down: a stored answer, or 503 with when to retry."""
        cached = await self.cache_only(ex)
        if cached is not None:
            return cached
        return self.finish(ex, errors.model_unavailable(ex.models, retry_after_s))

    def upstream(self, ex: Exchange, call: UpstreamCall) -> web.Response:
        """The upstream's answer as it came, with the exchange's headers."""
        return web.Response(
            status=call.status,
            body=call.body,
            content_type=call.content_type,
            headers={**call.headers, **ex.headers()},
        )

    def exhausted(self, ex: Exchange, call: UpstreamCall | None) -> ProxyError:
        """Every model of the chain failed (or kept answering 429) within the retry budget."""
        if call is not None and call.outcome is Outcome.RATE_LIMITED:
            return errors.upstream_rate_limited(ex.models, call.headers.get("retry-after", "1"))
        return errors.upstream_unavailable(
            ex.models,
            self.config.retry.max_attempts,
            call.reason if call else "no attempt",
            timed_out=call is not None and call.outcome is Outcome.TIMEOUT,
        )

    def finish(self, ex: Exchange, response: web.Response | ProxyError) -> web.Response:
        error = None
        if isinstance(response, ProxyError):
            error = response.code or response.type
            response = response.response(ex.headers())
        self.observe(ex, response.status, error=error)
        return response

    def observe(
        self,
        ex: Exchange,
        status: int,
        cached: bool = False,
        answer: bytes | None = None,
        error: str | None = None,
    ) -> None:
        """Count the answered exchange (metrics, demand, spend) and write its audit line; ``answer``
        is the body the client got when it was not streamed from the upstream, ``error`` the code of
        the sidecar's own error answer."""
        elapsed = time.monotonic() - ex.started
        self.metrics.answered(status, ex.model or NO_KEY, ex.key, cached, elapsed)
        if ex.models and ex.tokens:
            self.metrics.offered(ex.requested, ex.tokens)
        use = TokenUse.of(ex.usage) if ex.usage is not None and status < 300 else None
        cost = self.prices.cost_usd(ex.model, use) if use is not None and ex.models else None
        if cost is not None:
            self.metrics.spent(ex.model, cost, saved=cached)
        if use is not None and not cached:
            self.clients.spent(ex.client, cost or 0.0, use.input + use.output)
        self.audit.record(ex, status, elapsed, use, cost, answer, error)
        if self.demand is not None and ex.models:  # (a model the pool serves: not any client's string)
            admitted, arrived = bool(ex.account), time.time() - elapsed
            self.demand.record(
                ex.requested,
                ex.controls.priority,
                admitted=admitted,
                queued=ex.waited_s > 0,
                refused=not admitted and status in (429, 503) and error != "budget_exceeded",
                cached=ex.cache != "miss",
                tokens=ex.tokens,
                arrived=arrived,
            )
            for model, calls in ex.calls.items():  # (each a model the pool serves)
                self.demand.called(model, calls.made, calls.rate_limited, arrived)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%d %s via %s in %.1f ms (queued %.1f ms, cache %s, degraded %s)",
                status,
                ex.model or "-",
                ex.key,
                elapsed * 1000,
                ex.waited_s * 1000,
                ex.cache,
                ex.degraded,
            )
