"""The operator's own metrics, served on ``--metrics-port`` (the chart's Service and ServiceMonitor):
reconciliations by result and how long they took, the webhook's admissions by result and how long
they took, each pool as its last reconciliation left it (its conditions, its keys, its forecast) and
its live sidecars as last counted, and what its clients spent as last read. Pool series
follow the pools: a deleted pool's go at once, and an operator that has not reconciled a pool since
it started says nothing about it.

The sidecars export what the pools do (requests, limits, queues); these say what the operator does.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from o1sidecar.spend import ClientSpend

RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ADMISSION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
KEYS = re.compile(r"^(\d+)/(\d+)$")  # status.keys: "<usable>/<referenced>"


@dataclass(frozen=True)
class PoolFacts:
    conditions: tuple[tuple[str, str, str], ...]  # (type, status, reason)
    keys_ready: int
    keys_total: int
    forecast: tuple[float, float] | None = None  # tokens expected in the hour under way: mean, upper


def pool_facts(status: Mapping[str, Any]) -> PoolFacts:
    """What a pool's status says that the metrics carry."""
    conditions = tuple(
        (str(c.get("type")), str(c.get("status")), str(c.get("reason") or ""))
        for c in status.get("conditions") or []
    )
    found = KEYS.match(str(status.get("keys") or ""))
    ready, total = (int(found[1]), int(found[2])) if found else (0, 0)
    prediction = status.get("prediction") or {}
    forecast = None
    if "tokensPerHour" in prediction and "upperTokensPerHour" in prediction:
        forecast = (float(prediction["tokensPerHour"]), float(prediction["upperTokensPerHour"]))
    return PoolFacts(conditions, ready, total, forecast)


class _Pools(Collector):
    def __init__(
        self,
        pools: Mapping[tuple[str, str], PoolFacts],
        live: Mapping[tuple[str, str], int],
        spend: Mapping[tuple[str, str], Mapping[str, ClientSpend]],
    ) -> None:
        self._pools = pools
        self._live = live
        self._spend = spend

    def collect(self) -> Iterator[GaugeMetricFamily]:
        conditions = GaugeMetricFamily(
            "o1_operator_pool_condition",
            "1 for each condition of an O1Pool as its last reconciliation set it (type, status, reason)",
            labels=["namespace", "pool", "type", "status", "reason"],
        )
        keys = GaugeMetricFamily(
            "o1_operator_pool_keys",
            "An O1Pool's API keys: referenced, and ready (present and not empty in their Secrets)",
            labels=["namespace", "pool", "state"],
        )
        forecast = GaugeMetricFamily(
            "o1_operator_pool_forecast_tokens_per_hour",
            "Tokens an O1Pool's sidecars are expected to be offered in the hour under way (all models), "
            "mean and upper bound, while a prediction is published (docs/forecast.md)",
            labels=["namespace", "pool", "bound"],
        )
        for (namespace, name), facts in sorted(dict(self._pools).items()):
            for type_, status, reason in facts.conditions:
                conditions.add_metric([namespace, name, type_, status, reason], 1)
            keys.add_metric([namespace, name, "ready"], facts.keys_ready)
            keys.add_metric([namespace, name, "referenced"], facts.keys_total)
            if facts.forecast is not None:
                forecast.add_metric([namespace, name, "mean"], facts.forecast[0])
                forecast.add_metric([namespace, name, "upper"], facts.forecast[1])
        live = GaugeMetricFamily(
            "o1_operator_pool_live_sidecars",
            "Sidecars of an O1Pool alive in its Redis (their heartbeats), as the operator last counted them",
            labels=["namespace", "pool"],
        )
        for (namespace, name), count in sorted(dict(self._live).items()):
            live.add_metric([namespace, name], count)
        spend = GaugeMetricFamily(
            "o1_operator_client_spend_usd",
            "US dollars a client of an O1Pool spent in the UTC day or month under way (period), counted "
            "across the pool's sidecars in its Redis, as the operator last read it (docs/tenants.md#clients)",
            labels=["namespace", "pool", "client", "period"],
        )
        for (namespace, name), clients in sorted(dict(self._spend).items()):
            for client, spent in clients.items():
                spend.add_metric([namespace, name, client, "day"], spent.today.usd)
                spend.add_metric([namespace, name, client, "month"], spent.month.usd)
        yield conditions
        yield keys
        yield forecast
        yield live
        yield spend


class OperatorMetrics:
    """The operator's instruments and the pools' last facts, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "o1_operator_reconciles",
            "Reconciliations of an O1Pool by result: rendered (config and Secret applied), "
            "not_rendered (the spec or its Secrets are not usable: see the pool's conditions), "
            "error (an exception; the next event or resync tries again)",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "o1_operator_reconcile_seconds",
            "How long a reconciliation took (reading Secrets, applying, patching the status)",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.admissions = Counter(
            "o1_operator_webhook_admissions",
            "Pods the injection webhook answered, by result: injected, unchanged (already injected), "
            "refused (no such pool, or not rendered yet), error",
            ["result"],
            registry=self.registry,
        )
        self.admission_seconds = Histogram(
            "o1_operator_webhook_admission_seconds",
            "How long the webhook took to answer",
            buckets=ADMISSION_BUCKETS,
            registry=self.registry,
        )
        self._pools: dict[tuple[str, str], PoolFacts] = {}
        self._live: dict[tuple[str, str], int] = {}
        self._spend: dict[tuple[str, str], Mapping[str, ClientSpend]] = {}
        self.registry.register(_Pools(self._pools, self._live, self._spend))

    def reconcile(
        self,
        namespace: str,
        name: str,
        run: Callable[[], Mapping[str, Any]],
        clock: Callable[[], float] = time.perf_counter,
    ) -> Mapping[str, Any]:
        """``run()`` (one reconciliation, returning the status it set), counted and timed."""
        started = clock()
        try:
            status = run()
        except Exception:
            self.reconciles.labels("error").inc()
            raise
        finally:
            self.reconcile_seconds.observe(clock() - started)
        self.reconciles.labels("rendered" if status.get("configHash") else "not_rendered").inc()
        self._pools[namespace, name] = pool_facts(status)
        if "spend" in status and status["spend"] is None:  # nothing counted any more (status.py)
            self._spend.pop((namespace, name), None)
        return status

    def counted(self, namespace: str, name: str, live: int) -> None:
        """A pool's live sidecars, as the operator counted them in its Redis (sidecars.py)."""
        self._live[namespace, name] = live

    def spent(self, namespace: str, name: str, spend: Mapping[str, ClientSpend]) -> None:
        """What each client of a pool spent, as the operator read it in its Redis (sidecars.py); a
        client that is no longer in the pool's spec is no longer in ``spend``, and its series go."""
        if spend:
            self._spend[namespace, name] = dict(spend)
        else:
            self._spend.pop((namespace, name), None)

    def forget(self, namespace: str, name: str) -> None:
        """A deleted pool: its series go."""
        self._pools.pop((namespace, name), None)
        self._live.pop((namespace, name), None)
        self._spend.pop((namespace, name), None)

    def admitted(self, result: str, seconds: float) -> None:
        self.admissions.labels(result).inc()
        self.admission_seconds.observe(seconds)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``port`` from a thread of its own."""
        start_http_server(port, addr=addr, registry=self.registry)
