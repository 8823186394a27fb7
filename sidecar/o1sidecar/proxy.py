"""One request from the app to an answer: the cache, admission (admission.py), the upstream call
(calling.py), then what ``plan.next_step`` decides (retry, fall back, shorten the prompt, cache-only,
fail), until something answers (answers.py). Decisions live in pure modules; the steps do the I/O;
the request's ``Exchange`` carries what was asked, what was tried and what the answer reports."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import replace
from typing import Any

from aiohttp import web

from o1sidecar import errors
from o1sidecar.admission import Admission, Admitter, Unavailable
from o1sidecar.answers import Answers
from o1sidecar.audit import AuditLog
from o1sidecar.cache import ResponseCache, cache_key, is_cacheable
from o1sidecar.calling import UpstreamCall, UpstreamCaller
from o1sidecar.clients import Clients
from o1sidecar.coalescing import Coalescer
from o1sidecar.config import Client, SidecarConfig
from o1sidecar.controls import RequestControls
from o1sidecar.demand import DemandRecorder
from o1sidecar.errors import ProxyError
from o1sidecar.exchange import Exchange
from o1sidecar.identity import Identity
from o1sidecar.inbound import Endpoint
from o1sidecar.limits.api import Limiter
from o1sidecar.metrics import SidecarMetrics
from o1sidecar.outage_sync import SharedOutages
from o1sidecar.outages import ModelOutages
from o1sidecar.plan import Action, Outcome, PlanState, Step, next_step
from o1sidecar.poolsync import PoolSync
from o1sidecar.prediction import PredictionMirror
from o1sidecar.quarantine import SharedQuarantine
from o1sidecar.semantic import semantic_query, uses_semantic
from o1sidecar.spend import SpendRecorder
from o1sidecar.tokens import TokenCounter
from o1sidecar.tracing import Tracing
from o1sidecar.upstream import AccountRoute

log = logging.getLogger("o1sidecar.proxy")


class Proxy:
    """One sidecar's proxy: its steps, and what they share (config, limiter, routes, cache, metrics)."""

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
        demand: DemandRecorder | None = None,
        prediction: PredictionMirror | None = None,
        coalescer: Coalescer | None = None,
        tracing: Tracing | None = None,
        audit: AuditLog | None = None,
        clients: Clients | None = None,
        spend: SpendRecorder | None = None,
        sync: PoolSync | None = None,
    ) -> None:
        self.config = config
        self.limiter = limiter
        self.routes = routes
        self.counter = counter
        self.cache = cache
        self.metrics = metrics
        self.outages = outages or ModelOutages(
            config.fallback.outage_failures, config.fallback.outage_probe_s
        )
        self.models = config.served_models()
        accounts_for = {m: [a.name for a in config.accounts_for(m)] for m in self.models}
        peak = prediction.peak if prediction is not None else (lambda: False)
        reserves = frozenset(a.name for a in config.accounts if a.reserve)
        self.admitter = Admitter(
            config, limiter, counter, metrics, self.outages, outage_sync, accounts_for, peak, reserves
        )
        self.caller = UpstreamCaller(config, routes, limiter, cache, metrics, quarantine)
        self.audit = audit or AuditLog(config.audit, config.pool, Identity())
        self.clients = clients or Clients(config, Identity())
        self.answers = Answers(
            config, cache, metrics, self.audit, self.clients, demand.counts if demand is not None else None
        )
        self.coalescer = coalescer or Coalescer(cache, None, None, "")
        self.tracing = tracing or Tracing(config)
        self.sync = sync  # (the parts above, exchanged with the pool every interval)
        self._random = random.Random()

    async def start(self) -> None:
        await self.caller.start()
        if self.sync is not None:
            await self.sync.start()

    async def close(self) -> None:
        if self.sync is not None:
            await self.sync.close()
        await self.coalescer.close()
        await self.caller.close()

    async def handle(self, ex: Exchange) -> web.StreamResponse:
        """Answer one parsed request (``exchange`` makes its ``Exchange``), traced (tracing.py)."""
        with self.tracing.request(ex) as trace:
            response = await self._handle(ex)
            trace.answered(response)
            return response

    async def _handle(self, ex: Exchange) -> web.StreamResponse:
        if not ex.models:
            ex.model = ""  # not a metric label: any string a client sends would become a series
            pool = f"{self.config.pool.namespace}/{self.config.pool.name}"
            return self.answers.finish(ex, errors.unknown_model(ex.requested, self.models, pool))
        # Every good answer is stored; only cacheable requests are answered from it up front. Any
        # stored answer may serve as the last resort (cache-only) once every model has failed.
        if ex.cache_key is not None and ex.reads_cache and is_cacheable(ex.body, self.config.cache):
            leads = not ex.controls.cache.only and ex.stores_answer  # (unless one in flight leads)
            claim = self.coalescer.claim(ex.cache_key, ex.deadline) if leads else None
            try:
                hit = await self.answers.cached(ex, claim)
            except BaseException:
                if claim is not None:
                    self.coalescer.drop(claim)
                raise
            if hit is not None:
                if claim is not None:
                    self.coalescer.drop(claim)
                return await self.answers.from_cache(ex, hit.body)
            if leads:  # an identical request in flight?
                with ex.trace.coalescing() as span:
                    joined = await self.coalescer.join(ex.cache_key, ex.deadline, claim)
                    span.joined(joined)
                if isinstance(joined, bytes):
                    ex.cache = "coalesced"
                    return await self.answers.from_cache(ex, joined)
                ex.lead = joined
        if ex.controls.cache.only:
            return self.answers.finish(ex, errors.not_cached(self.config.cache.enabled))
        try:
            spent = self.clients.budget_spent(ex.client)  # (a stored answer costs nothing: served above)
            if spent is not None:
                assert ex.client is not None
                downgrade = ex.client.on_budget == "downgrade"
                if not downgrade or len(ex.models) < 2:
                    return self.answers.finish(ex, errors.budget_exceeded(ex.client.name, spent, downgrade))
                ex.models, ex.degraded = ex.models[1:], True  # (its fallback chain only)
            return await self._answer(ex)
        finally:
            ex.lead.done()  # (answered or refused: the identical requests waiting for it go)

    async def _answer(self, ex: Exchange) -> web.StreamResponse:
        """Admission, the call, and what follows, until there is an answer."""
        while True:
            with ex.trace.admission() as span:
                admission = await self.admitter.admit(ex)
                span.admitted(admission)
            if isinstance(admission, Unavailable):
                return await self.answers.unavailable(ex, admission.retry_after_s)
            if isinstance(admission, ProxyError):
                return self.answers.finish(ex, admission)
            call = await self._call(ex, admission)
            if call.outcome is Outcome.OK:
                return self._answered(ex, call)
            answer = await self._after(ex, admission, call)
            if answer is not None:
                return answer

    def exchange(
        self,
        request: web.Request,
        endpoint: Endpoint,
        raw: bytes,
        body: dict[str, Any],
        controls: RequestControls,
        client: Client | None = None,
    ) -> Exchange:
        """The exchange of one parsed request from ``client`` (clients.py); ``raw`` is forwarded as is
        when nothing in it has to change."""
        requested = body["model"]
        chain = [requested, *self.config.fallback.chains.get(requested, [])]
        models = [m for m in chain if m in self.models]
        key = cache_key(endpoint.path, body) if self.config.cache.enabled else None
        deadline = time.time() + controls.deadline_ms / 1000
        applied = self.clients.priority(client, controls.priority)
        asked = None if applied == controls.priority else controls.priority
        if asked is not None:
            controls = replace(controls, priority=applied)
        ex = Exchange(request, endpoint, raw, body, controls, models, deadline, key, model=requested)
        ex.client, ex.priority_asked = client, asked
        ex.request_id = self.audit.new_request_id()
        ex.degraded = bool(models) and models[0] != requested
        semantic = self.config.cache.service.semantic if self.config.cache.service is not None else None
        if (
            key is not None
            and semantic is not None
            and uses_semantic(semantic, controls.cache.semantic, body)
        ):
            ex.question = semantic_query(endpoint.path, body)
        return ex

    async def _call(self, ex: Exchange, admission: Admission) -> UpstreamCall:
        """The upstream call under the admission's grant, and what it tells the outage policy."""
        if admission.index != ex.plan.model_index:
            ex.plan = PlanState(admission.index, truncated=ex.plan.truncated)
        ex.waited_s += admission.grant.waited_s
        try:
            with ex.trace.attempt(admission) as span:
                call = await self.caller.call(
                    ex, admission.model, admission.body, admission.strip_usage, admission.grant
                )
                span.ended(call)
        except BaseException:
            if admission.probe:
                self.outages.probe_lost(admission.model)
            raise
        await self.admitter.record_outcome(admission.model, call.outcome, admission.probe)
        return call

    def _answered(self, ex: Exchange, call: UpstreamCall) -> web.StreamResponse:
        if call.streamed is not None:
            self.answers.observe(ex, call.streamed.status)
            return call.streamed
        if ex.cache_key is not None and ex.stores_answer and not ex.stream:
            ex.lead.store(self.cache, ex.cache_key, call.body, ex.question)
        response = self.answers.upstream(ex, call)
        self.answers.observe(ex, response.status, answer=call.body)
        return response

    async def _after(
        self, ex: Exchange, admission: Admission, call: UpstreamCall
    ) -> web.StreamResponse | None:
        """Act on the plan's next step after a call that did not succeed; ``None``: go round again."""
        step = self._next_step(ex, admission.model, call)
        if step.action is Action.RETURN:
            return self.answers.finish(ex, self.answers.upstream(ex, call))
        if step.action is Action.TRUNCATE:
            ex.prompt = self.admitter.shortened(ex, admission.body, admission.model, call.error)
            if ex.prompt is None:
                return self.answers.finish(ex, self.answers.upstream(ex, call))
        elif step.action is Action.RETRY:
            if step.delay_s > 0:
                await asyncio.sleep(step.delay_s)
        elif step.action is Action.FALLBACK:
            self.admitter.fall_back(ex, ex.plan.model_index)
        else:  # CACHE_ONLY, FAIL
            cached = await self.answers.cache_only(ex) if step.action is Action.CACHE_ONLY else None
            if cached is not None:
                return cached
            return self.answers.finish(ex, self.answers.exhausted(ex, call))
        ex.plan = step.state
        return None

    def _next_step(self, ex: Exchange, model: str, call: UpstreamCall) -> Step:
        return next_step(
            call.outcome,
            ex.plan,
            ex.models,
            self.config.retry,
            cache_only=self.config.fallback.cache_only_last and self.config.cache.enabled,
            time_left_s=ex.time_left_s(),
            jitter=self._random.random() * 0.25,
            model_down=self.outages.down(model),
        )
