"""The operator's metrics (o1operator/metrics.py) as a scrape shows them: reconciliations counted by
result and timed, each pool's last conditions and keys, gone when the pool is; webhook admissions.
Served over HTTP by the operator's process: tests/operator/test_operator_kube.py (the webhook test)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from o1operator.metrics import OperatorMetrics, pool_facts
from o1sidecar.spend import ClientSpend, Spent

READY = {"type": "Ready", "status": "True", "reason": "Serving"}
RENDERED = {"type": "ConfigRendered", "status": "True", "reason": "Rendered"}


def scrape(metrics: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_pools_status_gives_its_conditions_and_keys() -> None:
    facts = pool_facts({"conditions": [READY, RENDERED], "keys": "3/4"})
    assert facts.conditions == (("Ready", "True", "Serving"), ("ConfigRendered", "True", "Rendered"))
    assert (facts.keys_ready, facts.keys_total) == (3, 4)
    assert pool_facts({}) == pool_facts({"keys": "garbled"})  # nothing known: no conditions, 0/0


def test_a_published_prediction_gives_the_forecast_of_the_hour_under_way() -> None:
    metrics = OperatorMetrics()
    prediction = {"load": "medium", "tokensPerHour": 61234, "upperTokensPerHour": 80500, "peak": {}}
    metrics.reconcile("team-a", "main", lambda: {"conditions": [READY], "prediction": prediction})
    metrics.reconcile("team-b", "new", lambda: {"conditions": [READY]})  # no prediction yet
    got = scrape(metrics)
    forecasts = {k: v for k, v in got.items() if k[0] == "o1_operator_pool_forecast_tokens_per_hour"}
    main = (("namespace", "team-a"), ("pool", "main"))
    assert forecasts == {
        ("o1_operator_pool_forecast_tokens_per_hour", (("bound", "mean"), *main)): 61234,
        ("o1_operator_pool_forecast_tokens_per_hour", (("bound", "upper"), *main)): 80500,
    }
    metrics.reconcile("team-a", "main", lambda: {"conditions": [READY], "prediction": None})  # withdrawn
    assert not [k for k in scrape(metrics) if k[0] == "o1_operator_pool_forecast_tokens_per_hour"]


def test_live_sidecars_follow_the_last_count_until_the_pool_is_deleted() -> None:
    metrics = OperatorMetrics()
    metrics.counted("team-a", "main", 3)
    metrics.counted("team-a", "main", 2)
    main = ("o1_operator_pool_live_sidecars", (("namespace", "team-a"), ("pool", "main")))
    assert scrape(metrics)[main] == 2
    metrics.forget("team-a", "main")
    assert main not in scrape(metrics)


def test_client_spend_follows_the_last_read_until_the_client_its_redis_or_the_pool_is_gone() -> None:
    metrics = OperatorMetrics()
    web = ClientSpend(today=Spent(1.25, 10), month=Spent(40.5, 900))
    batch = ClientSpend(today=Spent(0.0, 0), month=Spent(3.0, 70))
    metrics.spent("team-a", "main", {"web": web, "batch": batch})
    metrics.spent("team-b", "other", {"web": web})

    def spend() -> dict[tuple[str, ...], float]:
        return {
            (labels["namespace"], labels["pool"], labels["client"], labels["period"]): value
            for (name, key), value in scrape(metrics).items()
            if name == "o1_operator_client_spend_usd"
            for labels in [dict(key)]
        }

    assert spend() == {
        ("team-a", "main", "web", "day"): 1.25,
        ("team-a", "main", "web", "month"): 40.5,
        ("team-a", "main", "batch", "day"): 0.0,
        ("team-a", "main", "batch", "month"): 3.0,
        ("team-b", "other", "web", "day"): 1.25,
        ("team-b", "other", "web", "month"): 40.5,
    }
    metrics.spent("team-a", "main", {"web": web})  # batch left the spec
    assert ("team-a", "main", "batch", "day") not in spend()
    metrics.spent("team-b", "other", {})  # no clients any more
    metrics.forget("team-a", "main")
    assert spend() == {}
    metrics.spent("team-a", "main", {"web": web})
    metrics.reconcile("team-a", "main", lambda: {"conditions": [READY]})  # (says nothing of spend)
    assert ("team-a", "main", "web", "month") in spend()
    metrics.reconcile("team-a", "main", lambda: {"conditions": [READY], "spend": None})  # no Redis any more
    assert spend() == {}


def test_reconciliations_are_counted_by_result_and_pools_kept_until_deleted() -> None:
    metrics = OperatorMetrics()
    ticks = iter([0.0, 0.2, 1.0, 1.05, 2.0, 2.5])
    clock = lambda: next(ticks)  # noqa: E731

    rendered: dict[str, Any] = {"conditions": [READY], "keys": "2/2", "configHash": "abc"}
    metrics.reconcile("team-a", "main", lambda: rendered, clock)
    metrics.reconcile(
        "team-b", "bad", lambda: {"conditions": [{**READY, "status": "False"}], "keys": "0/1"}, clock
    )

    def fails() -> dict[str, Any]:
        raise RuntimeError("the API server went away")

    with pytest.raises(RuntimeError):
        metrics.reconcile("team-a", "main", fails, clock)
    got = scrape(metrics)
    assert got[("o1_operator_reconciles_total", (("result", "rendered"),))] == 1
    assert got[("o1_operator_reconciles_total", (("result", "not_rendered"),))] == 1
    assert got[("o1_operator_reconciles_total", (("result", "error"),))] == 1
    assert got[("o1_operator_reconcile_seconds_count", ())] == 3
    assert got[("o1_operator_reconcile_seconds_sum", ())] == pytest.approx(0.2 + 0.05 + 0.5)
    main = (("namespace", "team-a"), ("pool", "main"))
    condition = (
        "o1_operator_pool_condition",
        (*main, ("reason", "Serving"), ("status", "True"), ("type", "Ready")),
    )
    assert got[condition] == 1  # (the failed reconciliation left the last known facts)
    assert got[("o1_operator_pool_keys", (*main, ("state", "ready")))] == 2
    bad = (("namespace", "team-b"), ("pool", "bad"))
    assert got[("o1_operator_pool_keys", (*bad, ("state", "referenced")))] == 1
    metrics.forget("team-a", "main")
    assert not [
        k for k in scrape(metrics) if k[0].startswith("o1_operator_pool") and ("pool", "main") in k[1]
    ]


def test_admissions_are_counted_by_result_and_timed() -> None:
    metrics = OperatorMetrics()
    for result, seconds in (("injected", 0.004), ("injected", 0.006), ("refused", 0.001)):
        metrics.admitted(result, seconds)
    got = scrape(metrics)
    assert got[("o1_operator_webhook_admissions_total", (("result", "injected"),))] == 2
    assert got[("o1_operator_webhook_admissions_total", (("result", "refused"),))] == 1
    assert got[("o1_operator_webhook_admission_seconds_count", ())] == 3
