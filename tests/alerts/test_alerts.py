"""The chart's alerts (helm/o1pool/files/alerts.yaml) with a real promtool, built from the Prometheus Go
module by hack/promtool.sh: each alert fires and stays quiet as tests/alerts/alerts.test.yaml says;
the chart renders them (and the sidecars' PodMonitor) only when asked and the cluster serves the
kinds, and promtool accepts what it renders; every metric and label the alerts read is in a real
sidecar's scrape."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from prometheus_client import generate_latest

from o1operator.cacheservice import COMPONENT
from o1operator.metrics import OperatorMetrics
from tests.alerts.promql import TARGET_LABELS, exposed, names_and_labels
from tests.conftest import RedisServer, missing
from tests.kube.testground import ControlPlaneNotBuilt, find_binaries
from tests.sidecar.conftest import SidecarFactory

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "o1pool"
ALERTS = CHART / "files" / "alerts.yaml"
PROMTOOL_TESTS = Path(__file__).parent / "alerts.test.yaml"
MONITORS = ("PodMonitor", "ServiceMonitor", "PrometheusRule")
MONITORING_KINDS = tuple(f"monitoring.coreos.com/v1/{kind}" for kind in MONITORS)


@pytest.fixture(scope="module")
def promtool() -> Path:
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "promtool.sh"), "path"], capture_output=True, text=True
    )
    if result.returncode != 0:
        missing("promtool is not built; build it once with: bash hack/promtool.sh build")
    return Path(result.stdout.strip())


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return find_binaries().helm
    except ControlPlaneNotBuilt as exc:
        missing(str(exc))


def helm_template(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(helm), "template", "o1pool", str(CHART), "-n", "o1pool-system", *args]
    return subprocess.run(command, capture_output=True, text=True)


def rendered(helm: Path, *args: str) -> list[dict[str, Any]]:
    result = helm_template(helm, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_every_alert_fires_and_stays_quiet_as_its_promtool_tests_say(promtool: Path) -> None:
    result = subprocess.run(
        [str(promtool), "test", "rules", PROMTOOL_TESTS.name],
        cwd=PROMTOOL_TESTS.parent,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Each alert has a case where it fires, and one where it does not: an evaluation expecting nothing,
    # or series of a pool that its firing evaluations leave out (promtool wants the exact set).
    tests = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    for rule in alert_rules():
        name = rule["alert"]
        cases = [(t, c) for t in tests for c in t["alert_rule_test"] if c["alertname"] == name]
        firing = [c for _, c in cases if c["exp_alerts"]]
        assert firing, f"{name} is never tested firing"
        fired_pools = {a["exp_labels"].get("pool") for c in firing for a in c["exp_alerts"]}
        input_pools = {
            pool
            for t, _ in cases
            for s in t["input_series"]
            for pool in re.findall(r'pool="([^"]+)"', s["series"])
        }
        quiet = any(not c["exp_alerts"] for _, c in cases) or bool(input_pools - fired_pools)
        assert quiet, f"{name} is never tested not firing"


def test_the_chart_renders_the_monitors_only_when_asked_and_its_rules_pass_promtool(
    promtool: Path, helm: Path, tmp_path: Path
) -> None:
    kinds = [arg for kind in MONITORING_KINDS for arg in ("--api-versions", kind)]
    default = rendered(helm, *kinds)
    assert not {d["kind"] for d in default} & set(MONITORS)  # off by default
    [service] = [d for d in default if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics")]
    switches = [f"monitoring.{kind[0].lower()}{kind[1:]}.enabled=true" for kind in MONITORS]
    on = [arg for switch in switches for arg in ("--set", switch)]
    for value, kind in zip(switches, MONITORS, strict=True):
        refused = helm_template(helm, "--set", value)  # asked for, but the cluster has no Prometheus Operator
        assert refused.returncode != 0 and f"needs the {kind} CRD" in refused.stderr, refused.stderr
    labels = ("--set", "monitoring.podMonitor.labels.release=kps", "--set", "watchNamespaces={team-a,team-b}")
    docs = {(d["kind"], d["metadata"]["name"]): d for d in rendered(helm, *kinds, *on, *labels)}
    monitor = docs["PodMonitor", "o1pool-sidecars"]
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert monitor["spec"]["selector"] == {
        "matchExpressions": [{"key": "o1pool.io/pool", "operator": "Exists"}]
    }
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "o1pool-metrics"  # the port the webhook gives the injected sidecar
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_o1pool_io_pool"],
        "targetLabel": "pool",
    } in endpoint["relabelings"]
    cache = docs["PodMonitor", "o1pool-cache-services"]  # what the operator labels a pool's cache service
    assert cache["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/component": COMPONENT}
    assert cache["spec"]["selector"]["matchExpressions"] == monitor["spec"]["selector"]["matchExpressions"]
    [endpoint] = cache["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["relabelings"] == monitor_relabelings(monitor)
    operator = docs["ServiceMonitor", "o1pool-operator"]  # the operator's metrics Service, pools' labels kept
    assert operator["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = operator["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["honorLabels"]) == ("metrics", True)
    # (O1PoolOperatorDown reads up{job="o1pool-operator"}, whatever the release is called)
    assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": "o1pool-operator"}]
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "metrics"
    [rule] = [d for (kind, _), d in docs.items() if kind == "PrometheusRule"]
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())  # the file, whole
    alone = rendered(helm, *kinds, "--set", "monitoring.prometheusRule.enabled=true")  # no ServiceMonitor
    [without] = [d for d in alone if d["kind"] == "PrometheusRule"]
    names = [r["alert"] for group in without["spec"]["groups"] for r in group["rules"]]
    assert names == [r["alert"] for r in alert_rules() if r["alert"] != "O1PoolOperatorDown"]
    rules_file = tmp_path / "rendered.yaml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run(
        [str(promtool), "check", "rules", str(rules_file)], capture_output=True, text=True
    )
    assert result.returncode == 0 and f"SUCCESS: {len(alert_rules())} rules found" in result.stdout, (
        result.stdout + result.stderr
    )


def monitor_relabelings(monitor: dict[str, Any]) -> list[dict[str, Any]]:
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    return list(endpoint["relabelings"])


async def test_every_metric_and_label_the_alerts_read_is_in_a_real_scrape(
    make_sidecar: SidecarFactory, redis_server: RedisServer
) -> None:
    """The sidecars' series from a real sidecar's /metrics (its pod a client with budgets: a client with
    no match is every workload); the operator's from its metrics' registry after a reconciliation and an
    admission (its process serves the same registry over HTTP: tests/operator/test_operator_kube.py
    checks that)."""
    import aiohttp

    handle = await make_sidecar(
        redis={"url": redis_server.url},
        cache={"enabled": True, "l1_entries": 0},
        clients=[{"name": "all", "match": {}, "budgets": {"daily_usd": 100}}],
    )
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    for _ in range(2):  # an answer, then the same from L2
        await client.chat.completions.create(model="o1", messages=[{"role": "user", "content": "Hello?"}])
    async with aiohttp.ClientSession() as session, session.get(handle.metrics_url) as resp:
        sidecar = exposed(await resp.text())
    operator_metrics = OperatorMetrics()
    status = {"conditions": [{"type": "Ready", "status": "True", "reason": "Serving"}], "keys": "1/1"}
    operator_metrics.reconcile("team-a", "main", lambda: status)
    operator_metrics.admitted("injected", 0.01)
    operator = exposed(generate_latest(operator_metrics.registry).decode())
    problems = []
    for rule in alert_rules():
        metrics, labels = names_and_labels(rule["expr"])
        names, samples = operator if all(m.startswith("o1_operator_") for m in metrics) else sidecar
        for metric in sorted(metrics - names):
            problems.append(f"{rule['alert']}: {metric} is not exported")
        seen = set().union(*(samples.get(m, set()) for m in metrics)) | TARGET_LABELS
        for label in sorted(labels - seen):
            problems.append(f"{rule['alert']}: no series of {sorted(metrics)} has the label {label}")
        if labels - TARGET_LABELS:  # (the label check above saw series of these families)
            assert any(samples.get(m) for m in metrics), f"{rule['alert']}: {sorted(metrics)} had no samples"
    assert not problems, problems
