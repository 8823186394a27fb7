"""Prometheus metrics of one sidecar, in a registry of its own (several sidecars may share a process).

Label ``key`` is always an ``account/key`` *name*; key values never reach a label. Queue length,
usage ratios and the limiter mode are read from the limiter at scrape time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from o1sidecar.config import Client
from o1sidecar.limits.api import LimiterState

NO_KEY = "-"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
CACHE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
# o1_api_queue_rejections_total's reasons (admission.py)
QUEUE_REJECTIONS = ("timeout", "full", "quota", "client")
REPORTED_PRIORITIES = (2, 5, 8)  # low/normal/high always present, so dashboards see zeros


class _LimiterStateCollector(Collector):
    def __init__(self, state: Callable[[], LimiterState]) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._state()
        queue = GaugeMetricFamily(
            "o1_api_queue_length", "Requests waiting in this sidecar", labels=["priority"]
        )
        waiting = {p: 0 for p in REPORTED_PRIORITIES} | dict(state.queue_length)
        for priority, count in sorted(waiting.items()):
            queue.add_metric([str(priority)], count)
        yield queue
        ratio = GaugeMetricFamily(
            "o1_api_token_usage_ratio",
            "Share of an account's per-minute limit used (highest over its models)",
            labels=["key", "type"],
        )
        per_account: dict[tuple[str, str], float] = {}
        for (account, _model), usage in state.usage.items():
            for kind, value in (("requests", usage.requests_ratio), ("tokens", usage.tokens_ratio)):
                per_account[(account, kind)] = max(value, per_account.get((account, kind), 0.0))
        for (account, kind), value in sorted(per_account.items()):
            ratio.add_metric([account, kind], value)
        yield ratio
        effective = GaugeMetricFamily(
            "o1_api_effective_limit",
            "Per-minute limit admission acts on: the configured one, or lower after upstream 429s",
            labels=["account", "model", "type"],
        )
        quota = GaugeMetricFamily(
            "o1_api_quota_remaining",
            "Requests left under an account's request cap (UTC day or month)",
            labels=["account", "model", "period"],
        )
        for (account, model), usage in sorted(state.usage.items()):
            effective.add_metric([account, model, "requests"], usage.effective_rpm)
            effective.add_metric([account, model, "tokens"], usage.effective_tpm)
            if usage.daily_left is not None:
                quota.add_metric([account, model, "day"], usage.daily_left)
            if usage.monthly_left is not None:
                quota.add_metric([account, model, "month"], usage.monthly_left)
        yield effective
        yield quota
        mode = GaugeMetricFamily(
            "o1_api_limiter_mode",
            "1 for the limiter mode in force (shared on Redis or local)",
            labels=["mode"],
        )
        for name in ("shared", "local"):
            mode.add_metric([name], 1.0 if state.mode == name else 0.0)
        yield mode
        yield GaugeMetricFamily(
            "o1_api_live_sidecars", "Sidecars of the pool seen alive by this one", value=state.live_sidecars
        )


class SidecarMetrics:
    """The sidecar's instruments, each label child created once and reused on the hot path."""

    def __init__(self, limiter_state: Callable[[], LimiterState] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "o1_api_requests",
            "Requests answered, by status, model served and key",
            ["status", "model", "key"],
            registry=r,
        )
        self.duration = Histogram(
            "o1_api_response_duration_seconds",
            "Time from request to answer (stream: to the end)",
            ["model", "cached"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "o1_api_queue_wait_seconds",
            "Time a request waited for admission",
            ["priority"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.upstream_429 = Counter(
            "o1_api_upstream_429", "429 answers from the upstream", ["key", "model", "type"], registry=r
        )
        self.admissions = Counter(
            "o1_api_admissions",
            "Requests admitted by the limiter and sent upstream",
            ["key", "model"],
            registry=r,
        )
        self.upstream_failures = Counter(
            "o1_api_upstream_failures",
            "Upstream 5xx, refused keys, connection errors, timeouts and cut streams",
            ["key", "model", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "o1_api_fallbacks",
            "Requests moved to the next model of the fallback chain",
            ["from_model", "to_model"],
            registry=r,
        )
        self.context_truncations = Counter(
            "o1_api_context_truncations",
            "Prompts shortened before sending because they could not fit the model's context window",
            registry=r,
        )
        self.cache_lookups = Counter(
            "o1_api_cache_lookups",
            "Cache lookups by result (l1, l2, l3, semantic, miss)",
            ["result"],
            registry=r,
        )
        self.cache_layer_lookups = Counter(
            "o1_api_cache_layer_lookups",
            "Lookups in the shared cache layers (l2: Redis; l3 and semantic: the cache service) by result: "
            "hit, miss, error (slow or failed: a miss to the request) or skipped (its breaker is open)",
            ["layer", "result"],
            registry=r,
        )
        self.cache_lookup_seconds = Histogram(
            "o1_api_cache_lookup_seconds",
            "How long a lookup in a shared cache layer took",
            ["layer"],
            buckets=CACHE_BUCKETS,
            registry=r,
        )
        self.config_rejections = Counter(
            "o1_api_config_rejections",
            "Changed config files not applied (invalid, or a key unreadable): the sidecar keeps its config",
            registry=r,
        )
        self.key_renewals = Counter(
            "o1_api_key_renewals",
            "New values of file-mounted keys read without a restart (a rotation), by account/key",
            ["key"],
            registry=r,
        )
        self.tokens_offered = Counter(
            "o1_api_tokens_offered",
            "Tokens the answered requests were charged at admission, by the model asked for (what the "
            "operator's forecasts predict per hour)",
            ["model"],
            registry=r,
        )
        self.spend = Counter(
            "o1_api_spend_usd",
            "US dollars the upstream's answers cost, from their usage and the pool's prices, by model",
            ["model"],
            registry=r,
        )
        self.cache_saved = Counter(
            "o1_api_cache_saved_usd",
            "US dollars the answers served from the cache would have cost, by model",
            ["model"],
            registry=r,
        )
        self.queue_rejections = Counter(
            "o1_api_queue_rejections",
            "Requests answered 429 by the queue (timeout or full)",
            ["reason"],
            registry=r,
        )
        if limiter_state is not None:
            r.register(_LimiterStateCollector(limiter_state))
        # Label sets are bounded: statuses x configured models x key names (never client input).
        self._answer_children: dict[tuple[int, str, str, bool], tuple[Any, Any]] = {}
        self._admit_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._offered_children: dict[str, Any] = {}
        self._spend_children: dict[str, tuple[Any, Any]] = {}
        self._lookup_children: dict[str, Any] = {}
        self._layer_children: dict[tuple[str, str], tuple[Any, Any | None]] = {}

    def cache_lookup(self, result: str) -> None:
        """One lookup in the cache, by the layer that had the answer (or ``miss``)."""
        child = self._lookup_children.get(result)
        if child is None:
            child = self._lookup_children[result] = self.cache_lookups.labels(result)
        child.inc()

    def cache_layer(self, layer: str, result: str, seconds: float) -> None:
        """One lookup in L2 or L3 (``cache.LookupObserver``)."""
        children = self._layer_children.get((layer, result))
        if children is None:
            children = self._layer_children[(layer, result)] = (
                self.cache_layer_lookups.labels(layer, result),
                None if result == "skipped" else self.cache_lookup_seconds.labels(layer),
            )
        children[0].inc()
        if children[1] is not None:
            children[1].observe(seconds)

    def answered(self, status: int, model: str, key: str, cached: bool, seconds: float) -> None:
        """One answered request (hot path: label children are looked up once and kept)."""
        children = self._answer_children.get((status, model, key, cached))
        if children is None:
            children = self._answer_children[(status, model, key, cached)] = (
                self.requests.labels(str(status), model, key),
                self.duration.labels(model, "true" if cached else "false"),
            )
        children[0].inc()
        children[1].observe(seconds)

    def admitted(self, key: str, model: str, priority: int, waited_s: float) -> None:
        """One admission by the limiter, and how long it waited."""
        children = self._admit_children.get((key, model, priority))
        if children is None:
            children = self._admit_children[(key, model, priority)] = (
                self.admissions.labels(key, model),
                self.queue_wait.labels(str(priority)),
            )
        children[0].inc()
        children[1].observe(waited_s)

    def offered(self, model: str, tokens: int) -> None:
        """Tokens one request was charged, under the model it asked for (one the pool serves)."""
        child = self._offered_children.get(model)
        if child is None:
            child = self._offered_children[model] = self.tokens_offered.labels(model)
        child.inc(tokens)

    def spent(self, model: str, usd: float, saved: bool) -> None:
        """What one answer cost (``saved``: what a cached answer would have cost), on a model the
        pool serves."""
        children = self._spend_children.get(model)
        if children is None:
            pair = (self.spend.labels(model), self.cache_saved.labels(model))
            children = self._spend_children[model] = pair
        children[1 if saved else 0].inc(usd)

    def start_at_zero(self, keys: Sequence[str]) -> None:
        """Series of rare events at 0 from the start (each key's renewals, each reason a queue refuses),
        so that ``rate()`` and ``increase()`` count their first event too."""
        for key in keys:
            self.key_renewals.labels(key)
        for reason in QUEUE_REJECTIONS:
            self.queue_rejections.labels(reason)

    def watch_models(self, models: Sequence[str], availability: Callable[[str], float]) -> None:
        """``o1_api_model_availability``: per served model, 1 up, the ramp's share while coming back
        from an outage, 0 down (outages.py); read at scrape time."""
        gauge = Gauge(
            "o1_api_model_availability",
            "Share of a model's requests let through: 1 up, 0 down (every account failing), between "
            "while ramping back after an outage; pool-wide with Redis",
            ["model"],
            registry=self.registry,
        )
        for model in models:
            gauge.labels(model).set_function(functools.partial(availability, model))

    def watch_budgets(self, clients: Sequence[Client], left: Callable[[Client], dict[str, float]]) -> None:
        """``o1_api_budget_remaining``: what is left of each budget of the clients this sidecar serves,
        by the pool's spend as last read plus this sidecar's since (spend.py); read at scrape time."""
        if not clients:
            return
        gauge = Gauge(
            "o1_api_budget_remaining",
            "What is left of a client's budget in the UTC day or month under way (dollars or tokens)",
            ["client", "budget"],
            registry=self.registry,
        )

        def remaining(client: Client, budget: str) -> float:
            return left(client).get(budget, 0.0)

        for client in clients:
            for budget, value in client.budgets.model_dump().items():
                if value is not None:
                    child = gauge.labels(client.name, budget)
                    child.set_function(functools.partial(remaining, client, budget))

    def identify(self, identity: dict[str, str], clients: Sequence[str]) -> None:
        """``o1_api_sidecar_info``: 1, labelled with the pod's identity (identity.py) and the clients it
        serves, to join its other series by ``pod`` with a workload and a client."""
        gauge = Gauge(
            "o1_api_sidecar_info",
            "This sidecar's pod identity and the pool's clients it serves (always 1)",
            ["workload", "service_account", "client"],
            registry=self.registry,
        )
        for client in clients or [""]:
            gauge.labels(identity.get("workload", ""), identity.get("service_account", ""), client).set(1)

    def scrape(self) -> bytes:
        return generate_latest(self.registry)


def create_metrics_app(metrics: SidecarMetrics, ready: Callable[[], bool] | None = None) -> web.Application:
    """A tiny app serving ``GET /metrics`` for Prometheus and, when ``ready`` is given, ``GET /readyz``
    (200 while the sidecar takes requests, 503 starting or draining): the metrics port is the one the
    kubelet can probe, as the API listens on the pod's loopback only."""

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.scrape(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def readyz(_request: web.Request) -> web.Response:
        if ready is not None and ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", handle)
    if ready is not None:
        app.router.add_get("/readyz", readyz)
    return app
