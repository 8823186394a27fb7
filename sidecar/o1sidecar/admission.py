"""Getting one request admitted: which model of its chain may take it (outages.py), the prompt that fits
that model's context window, what it costs, and the limiter's grant; at the deadline, a later model
with headroom right now. Also what a failed call tells the outage policy."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from o1sidecar import errors
from o1sidecar.config import Client, SidecarConfig
from o1sidecar.errors import ProxyError
from o1sidecar.exchange import Exchange
from o1sidecar.inbound import CHAT, RESPONSES, Endpoint
from o1sidecar.limits.api import (
    ClientLimited,
    Demand,
    Grant,
    Limiter,
    NoCapacity,
    QueueFull,
    QueueTimeout,
    QuotaExhausted,
)
from o1sidecar.limits.caps import Cap
from o1sidecar.metrics import SidecarMetrics
from o1sidecar.outage_sync import SharedOutages
from o1sidecar.outages import Gate, ModelOutages
from o1sidecar.plan import Outcome
from o1sidecar.tokens import TokenCounter, count_messages, prompt_bound, requested_max_tokens
from o1sidecar.truncation import (
    overflows,
    parse_context_error,
    target_tokens,
    truncate_messages,
    window_target,
)

log = logging.getLogger("o1sidecar.proxy")

OUTAGE_POLL_S = 1.0  # a protected request waiting for a down model re-checks this often


@dataclass(frozen=True)
class Admission:
    """A grant for one model of the chain, with the body to send it."""

    index: int  # in [requested, *fallback chain]
    model: str
    body: dict[str, Any]
    strip_usage: bool  # the sidecar asked for stream usage the client did not
    grant: Grant
    probe: bool = False  # the probe of a model that is down (outages.py)


@dataclass(frozen=True)
class Unavailable:
    """Every model left in the chain is down: answer from the cache, or 503 with ``retry_after_s``."""

    retry_after_s: float


@dataclass(frozen=True)
class Fitted:
    """The prompt to send (``None``: the client's own) and its token count, when already counted, or
    an upper bound of it (``tokens.prompt_bound``), when already computed."""

    prompt: list[Any] | None
    prompt_tokens: int | None = None
    bound: int | None = None


def upstream_body(
    endpoint: Endpoint, body: dict[str, Any], model: str, prompt: list[Any] | None
) -> tuple[dict[str, Any], bool]:
    """The body to send (the client's own object when unchanged) and whether the sidecar switched on
    stream usage the client did not ask for. Changes: served model, shortened prompt, usage."""
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


class Admitter:
    def __init__(
        self,
        config: SidecarConfig,
        limiter: Limiter,
        counter: TokenCounter,
        metrics: SidecarMetrics,
        outages: ModelOutages,
        outage_sync: SharedOutages | None,
        accounts_for: Mapping[str, Sequence[str]],
        peak: Callable[[], bool] = lambda: False,
        reserves: frozenset[str] = frozenset(),
    ) -> None:
        self.config = config
        self.limiter = limiter
        self.counter = counter
        self.metrics = metrics
        self.outages = outages
        self.outage_sync = outage_sync
        self._accounts = accounts_for
        self.peak = peak
        self.reserves = reserves  # accounts that serve only under a predicted peak

    async def admit(self, ex: Exchange) -> Admission | ProxyError | Unavailable:
        """Wait for a grant on the plan's model; a model that is down or can never admit the request
        moves on along the chain. When the last model is down, a protected priority waits for it (up
        to its deadline); others are ``Unavailable`` at once. Under a predicted peak, a request below
        the protected priority starts at its fallback model (prediction.py)."""
        index = ex.plan.model_index
        if index == 0 and len(ex.models) > 1 and self._yields_to_peak(ex):
            index = self.fall_back(ex, index, expected=True)
        while True:
            model = ex.model = ex.models[index]
            gate = await self.gate(model)
            if gate.action == "down":
                if index + 1 < len(ex.models):
                    index = self.fall_back(ex, index)  # down everywhere: not worth a wait
                    continue
                left = ex.time_left_s()
                if ex.controls.priority < self.config.queue.peak_min_priority or left <= gate.retry_after_s:
                    return Unavailable(gate.retry_after_s)
                await asyncio.sleep(min(OUTAGE_POLL_S, left))
                continue
            probe = gate.action == "probe"
            fitted = self.fit(ex, model)
            if isinstance(fitted, ProxyError):
                if probe:
                    self.outages.probe_lost(model)
                return fitted
            demand, body, strip_usage = self.demand(ex, model, fitted, ex.deadline)
            try:
                grant = await self._acquire(demand, probe)
                return Admission(index, model, body, strip_usage, grant, probe)
            except ClientLimited as exc:
                self.metrics.queue_rejections.labels("client").inc()
                return errors.client_rate_limited(exc, ex.client.name if ex.client is not None else "")
            except (NoCapacity, QuotaExhausted) as exc:
                if index + 1 < len(ex.models):
                    index = self.fall_back(ex, index)
                    continue
                return self._never(ex, exc, demand)
            except (QueueTimeout, QueueFull) as exc:
                return await self._too_late(ex, index, exc)

    async def _acquire(self, demand: Demand, probe: bool) -> Grant:
        try:
            return await self.limiter.acquire(demand, self.accounts_for(demand.model))
        except BaseException:
            if probe:
                self.outages.probe_lost(demand.model)
            raise

    def _never(self, ex: Exchange, exc: NoCapacity | QuotaExhausted, demand: Demand) -> ProxyError:
        """No account of the last model can ever admit the request (or their request caps are spent)."""
        if isinstance(exc, QuotaExhausted):
            self.metrics.queue_rejections.labels("quota").inc()
            return errors.quota_exhausted(exc, ex.models)
        return errors.no_capacity(exc, demand.model, demand.tokens)

    async def _too_late(
        self, ex: Exchange, index: int, exc: QueueTimeout | QueueFull
    ) -> Admission | ProxyError:
        if isinstance(exc, QueueFull):
            self.metrics.queue_rejections.labels("full").inc()
            return errors.queue_full(exc, self.config.queue.max_length)
        ex.waited_s += exc.waited_s
        late = await self._admit_now(ex, index)
        if late is not None:
            return late
        self.metrics.queue_rejections.labels("timeout").inc()
        return errors.queue_timeout(exc, ex.models[index], ex.controls.priority, ex.controls.deadline_ms)

    async def _admit_now(self, ex: Exchange, index: int) -> Admission | None:
        """The request's deadline passed waiting for ``ex.models[index]``: the first later model of the
        chain that can admit it right now, without waiting."""
        for later in range(index + 1, len(ex.models)):
            model = ex.models[later]
            if self.outages.state(model).phase != "up":
                continue
            fitted = self.fit(ex, model)
            if isinstance(fitted, ProxyError):
                continue
            demand, body, strip_usage = self.demand(ex, model, fitted, time.time())
            grant = await self.limiter.try_acquire(demand, self.accounts_for(model))
            if grant is not None:
                self.note_fallback(ex.models[index], model)
                ex.model, ex.degraded = model, True
                return Admission(later, model, body, strip_usage, grant)
        return None

    def accounts_for(self, model: str) -> Sequence[str]:
        """The accounts a request for ``model`` may use now: reserve accounts only under a predicted peak."""
        accounts = self._accounts[model]
        if not self.reserves or self.peak():
            return accounts
        return [a for a in accounts if a not in self.reserves]

    def _yields_to_peak(self, ex: Exchange) -> bool:
        return ex.controls.priority < self.config.queue.peak_min_priority and self.peak()

    def fall_back(self, ex: Exchange, index: int, expected: bool = False) -> int:
        """Move ``ex`` from model ``index`` of its chain to the next; returns the next index.
        ``expected``: by the pool's policy (a predicted peak), not a failure: logged at debug."""
        self.note_fallback(ex.models[index], ex.models[index + 1], expected)
        ex.degraded = True
        return index + 1

    def note_fallback(self, from_model: str, to_model: str, expected: bool = False) -> None:
        self.metrics.fallbacks.labels(from_model, to_model).inc()
        log.log(
            logging.DEBUG if expected else logging.WARNING, "falling back from %s to %s", from_model, to_model
        )

    async def gate(self, model: str) -> Gate:
        """Whether a request may go to ``model`` now (outages.py); a probe is claimed for the pool."""
        gate = self.outages.gate(model)
        if gate.action == "probe" and self.outage_sync is not None:
            if not await self.outage_sync.claim_probe(model):
                self.outages.probe_lost(model)
                return Gate("down", self.outages.probe_s)
        return gate

    async def record_outcome(self, model: str, outcome: Outcome, probe: bool) -> None:
        """Tell the outage policy how a call on ``model`` ended, and the pool when its phase changed."""
        changed = self.outages.record(model, outcome, probe=probe)
        if changed is not None and self.outage_sync is not None:
            await self.outage_sync.publish(model, changed, self.outages.now())

    def demand(
        self, ex: Exchange, model: str, fitted: Fitted, deadline: float
    ) -> tuple[Demand, dict[str, Any], bool]:
        body, strip_usage = upstream_body(ex.endpoint, ex.body, model, fitted.prompt)
        tokens = self.counter.charge(
            ex.endpoint.path, model, body, self.config.tokens, fitted.prompt_tokens, fitted.bound
        )
        ex.tokens = tokens
        return (
            Demand(
                model,
                tokens,
                ex.controls.priority,
                deadline,
                ex.client.name if ex.client is not None else "",
                ex.client.weight if ex.client is not None else 1.0,
                _cap(ex.client),
            ),
            body,
            strip_usage,
        )

    def fit(self, ex: Exchange, model: str) -> Fitted | ProxyError:
        """The prompt to send to ``model`` (``None``: the client's own), so that it fits the model's
        context window with the completion budget: as it is, with the oldest messages dropped
        (``context.on_overflow: truncate``), or a 400 like the upstream's, before any quota is spent."""
        policy, prompt = self.config.context, ex.prompt
        window = policy.window(model)
        if window is None or policy.on_overflow == "send" or ex.endpoint not in (CHAT, RESPONSES):
            return Fitted(prompt)
        field = ex.endpoint.prompt_field
        body = ex.body if prompt is None else {**ex.body, field: prompt}
        budget = requested_max_tokens(body) or 0
        bound = prompt_bound(ex.endpoint.path, body)
        if not overflows(bound, budget, window):
            return Fitted(prompt, bound=bound)  # it fits whatever its count: counted if the charge needs it
        used = self.counter.prompt(ex.endpoint.path, model, body)
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

    def shortened(
        self, ex: Exchange, sent: dict[str, Any], model: str, error: dict[str, Any] | None
    ) -> list[Any] | None:
        """The prompt ``sent`` to ``model`` with its oldest messages dropped, to fit what the upstream's
        ``context_length_exceeded`` error says; ``None`` when nothing can be dropped."""
        items = sent.get(ex.endpoint.prompt_field)
        if not isinstance(items, list):
            return None
        count = self.counter.counter_for(model)
        estimate = count_messages(items, count)
        target = target_tokens(estimate, parse_context_error(str((error or {}).get("message", ""))))
        kept = truncate_messages(items, lambda msgs: count_messages(msgs, count), target)
        if kept is not None:
            log.info(
                "context length exceeded on %s; retrying once with %d of %d messages",
                model,
                len(kept),
                len(items),
            )
        return kept


def _cap(client: Client | None) -> Cap | None:
    """The client's own limits, as the limiter applies them (limits/caps.py)."""
    if client is None or client.limits is None:
        return None
    return Cap(client.limits.rpm, client.limits.tpm)
