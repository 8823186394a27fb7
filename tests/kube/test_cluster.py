"""End to end on a real node, through the user's path: ``helm install`` the chart (the operator runs
as its Deployment, the webhook is served through its Service), Redis and the emulator as pods
behind Services, an O1Pool and its Secret applied with kubectl, and an app Deployment annotated
``o1pool.io/inject`` whose pods call the pool with the openai SDK (``o1pool load``) through their
injected sidecars. The emulator's own counters are the referee.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from o1sidecar.limits.keys import PoolKeys
from tests.kube.fixtures import Cluster
from tests.kube.images import APP_REFERENCE, CACHE_REFERENCE, REDIS_REFERENCE
from tests.kube.workloads import (
    REDIS_PORT,
    app_deployment,
    chart_values,
    dump,
    emulator,
    emulator_stats,
    pool,
    redis,
)
from tests.polling import clear_of_the_hour_boundary, eventually
from tests.recorded_demand import record_weeks

pytestmark = pytest.mark.timeout(900)

CHART = Path(__file__).resolve().parents[2] / "helm" / "o1pool"
RELEASE = "o1pool"
SYSTEM_NAMESPACE = "o1pool-system"
NAMESPACE = "e2e"
POOL = "e2e"
MODEL = "o1-mini"
# The emulator's embedded default account acct-a and its key; the pool's limits are the account's.
ACCOUNT = "acct-a"
EMULATOR_KEY = "sk-emu-acct-a-key-1"
RPM = 100
EDITED_RPM = 60  # kubectl edit lowers the pool's limit to this
RETURN_RPM = 50  # and a patch made while the operator is gone to this
ROTATED_KEY = "sk-emu-acct-a-key-2"  # the emulator's second key of acct-a ...
ROTATED_KEY_NAME = "a2"  # ... and its name in the emulator's stats
METRICS_PORT = 9090  # the injected sidecar's metrics port (the pool's injection.metricsPort default)
POD_READY_TIMEOUT = 120.0


def workloads(namespace: str) -> str:
    """Redis and the emulator (its embedded default config) behind Services, the pool and its Secret."""
    accounts = {ACCOUNT: {MODEL: {"rpm": RPM, "tpm": 800000, "concurrency": 10}}}
    docs = [
        *redis(),
        *emulator(latency_scale=0.02),
        *pool(POOL, namespace, accounts, {ACCOUNT: EMULATOR_KEY}),
    ]
    return dump(docs)


def app(replicas: int, rate: float) -> str:
    """The app: ``o1pool load`` at ``rate`` requests per second per pod, annotated for injection."""
    return dump([app_deployment(POOL, replicas, ["--rate", str(rate), "--window-seconds", "5"])])


@dataclass
class Installed:
    cluster: Cluster
    namespace: str

    def pods(self, selector: str) -> list[dict[str, Any]]:
        out = self.cluster.kubectl("get", "pods", "-n", self.namespace, "-l", selector, "-o", "json").stdout
        return list(json.loads(out)["items"])

    def emulator_stats(self) -> dict[str, Any]:
        return emulator_stats(self.cluster, self.namespace)

    def model_stats(self) -> dict[str, Any]:
        return dict(self.emulator_stats()["accounts"][ACCOUNT]["models"][MODEL])

    def app_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.pods("app=app") if not p["metadata"].get("deletionTimestamp")]

    def sidecar_samples(self, pod: dict[str, Any], metric: str) -> list[tuple[dict[str, str], float]]:
        """The samples of ``metric`` a pod's sidecar exports (its metrics port, on the pod's IP)."""
        text = self.cluster.http_get(f"http://{pod['status']['podIP']}:{METRICS_PORT}/metrics").decode()
        return [
            (sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == metric
        ]

    def every_sidecar(self, metric: str, labels: dict[str, str], holds: Callable[[float], bool]) -> bool:
        """Whether ``holds`` is true of ``metric{labels}`` in every running app pod's sidecar."""
        pods = self.app_pods()
        return bool(pods) and all(
            any(
                holds(value)
                for found, value in self.sidecar_samples(pod, metric)
                if labels.items() <= found.items()
            )
            for pod in pods
        )

    def restarts(self) -> dict[str, int]:
        """Container restarts of the app pods, by pod/container (a reload must not restart anything)."""
        return {
            f"{pod['metadata']['name']}/{status['name']}": status["restartCount"]
            for pod in self.app_pods()
            for status in [
                *pod["status"].get("initContainerStatuses", []),
                *pod["status"]["containerStatuses"],
            ]
        }

    def app_outcomes(self, since: str) -> list[list[Any]]:
        """Every call the app pods reported (``[priority, status, wait, latency, model]``) since ``since``
        (an RFC 3339 time), from their logs: one JSON line per window."""
        outcomes: list[list[Any]] = []
        for pod in self.app_pods():
            log = self.cluster.kubectl(
                "logs", pod["metadata"]["name"], "-n", self.namespace, "-c", "app", f"--since-time={since}"
            ).stdout
            for line in log.splitlines():
                if line.startswith("{"):
                    outcomes += json.loads(line)["outcomes"]
        return outcomes

    def diagnostics(self) -> str:
        """Pods, recent events and the tail of every container's log, for a failed run's report."""
        parts = [
            self.cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout,
            self.cluster.kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False).stdout[
                -6000:
            ],
        ]
        for namespace in (self.namespace, SYSTEM_NAMESPACE):
            for pod in self.cluster.kubectl(
                "get", "pods", "-n", namespace, "-o", "name", check=False
            ).stdout.split():
                logs = self.cluster.kubectl(
                    "logs", pod, "-n", namespace, "--all-containers", "--prefix", "--tail=40", check=False
                )
                parts.append(logs.stdout + logs.stderr)
        return "\n".join(parts)

    def admitted(self) -> int:
        return int(self.model_stats()["admitted"])

    def keeps_serving(self, calls: int, what: str) -> None:
        """Wait until the emulator admitted ``calls`` more of the app's calls."""
        start = self.admitted()
        eventually(lambda: self.admitted() >= start + calls, what, 90)


def running_and_ready(pods: list[dict[str, Any]], count: int) -> bool:
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return len(live) == count and all(
        p["status"].get("phase") == "Running"
        and all(c.get("ready") for c in p["status"].get("containerStatuses", []))
        for p in live
    )


def pool_ready(cluster: Cluster, namespace: str) -> bool:
    ready = cluster.kubectl(
        "get",
        "o1pool",
        POOL,
        "-n",
        namespace,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
    ).stdout
    return ready == "True"


@pytest.fixture(scope="module")
def installed(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Installed]:
    """The chart installed with the offline images; Redis, the emulator and the pool applied."""
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.wait_for_service_account(NAMESPACE)
    cluster.helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        SYSTEM_NAMESPACE,
        "--create-namespace",
        "--values",
        "-",
        "--wait",
        "--timeout",
        "180s",
        input=yaml.safe_dump(chart_values()),
        timeout=240,
    )
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=workloads(NAMESPACE))
    installed = Installed(cluster, NAMESPACE)
    eventually(
        lambda: running_and_ready(installed.pods("app in (redis,emulator)"), 2),
        "Redis and the emulator Running and ready",
        POD_READY_TIMEOUT,
    )
    eventually(lambda: pool_ready(cluster, NAMESPACE), "the pool Ready", 60)
    failed_before = request.session.testsfailed
    yield installed
    if request.session.testsfailed > failed_before:
        # What the cluster looked like, past pytest's capture (the node is gone once the session ends).
        print(f"\n--- cluster state after a failed test ---\n{installed.diagnostics()}", file=sys.__stderr__)
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def test_injected_sidecars_serve_app_pods_and_hold_the_pools_limit_while_the_app_scales(
    installed: Installed,
) -> None:
    cluster = installed.cluster
    ns = installed.namespace
    operator = cluster.kubectl(
        "get", "deployment", RELEASE, "-n", SYSTEM_NAMESPACE, "-o", "jsonpath={.status.readyReplicas}"
    ).stdout
    assert operator == "1", "the operator runs as the chart's Deployment"

    # 3 pods x 1 rps = 180 RPM offered against the account's 100: the sidecars must share the limit.
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=app(3, 1.0))
    eventually(
        lambda: running_and_ready(installed.pods("app=app"), 3), "3 app pods Running", POD_READY_TIMEOUT
    )
    for pod in installed.pods("app=app"):
        [sidecar] = pod["spec"]["initContainers"]
        assert sidecar["name"] == "o1pool-sidecar" and sidecar["restartPolicy"] == "Always"
        assert {"name": "O1POOL_WORKLOAD", "value": "Deployment/app"} in sidecar["env"]
        [sidecar_status] = pod["status"]["initContainerStatuses"]
        [app_status] = pod["status"]["containerStatuses"]
        assert sidecar_status["ready"] and sidecar_status["started"]
        # Native sidecar: the kubelet starts the app only once the sidecar is started (and ready).
        assert sidecar_status["state"]["running"]["startedAt"] <= app_status["state"]["running"]["startedAt"]
        [app_container] = pod["spec"]["containers"]
        assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:8080/v1"} in app_container["env"]

    started = time.monotonic()
    eventually(lambda: installed.admitted() >= 20, "calls from the app pods reaching the emulator", 90)
    cluster.kubectl("scale", "deployment", "app", "-n", ns, "--replicas=6")
    eventually(
        lambda: running_and_ready(installed.pods("app=app"), 6), "6 app pods Running", POD_READY_TIMEOUT
    )
    admitted_at_six = installed.admitted()
    eventually(lambda: installed.admitted() >= admitted_at_six + 20, "the 6 pods' calls admitted", 90)
    cluster.kubectl("scale", "deployment", "app", "-n", ns, "--replicas=2")
    eventually(lambda: running_and_ready(installed.pods("app=app"), 2), "2 app pods left", POD_READY_TIMEOUT)
    admitted_at_two = installed.admitted()
    eventually(lambda: installed.admitted() >= admitted_at_two + 10, "the 2 pods' calls admitted", 90)
    elapsed_min = (time.monotonic() - started) / 60

    stats = installed.model_stats()
    # The referee: the upstream never refused, no 60 s window held more than the account's limit.
    assert stats["rejected_total"] == 0, stats
    assert not any(stats["exceeded"].values()), stats
    assert stats["window_60s"]["max_requests"] <= RPM, stats
    assert stats["admitted"] <= RPM * (elapsed_min + 1), stats


def _now() -> str:
    """Now, a second early, as RFC 3339 (for ``kubectl logs --since-time``; the node is this host)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))


def effective_limits(installed: Installed) -> dict[str, list[float]]:
    """Each app pod's sidecar's effective RPM limits now (for a failure's message)."""
    return {
        pod["metadata"]["name"]: [
            value
            for labels, value in installed.sidecar_samples(pod, "o1_api_effective_limit")
            if labels.get("type") == "requests"
        ]
        for pod in installed.app_pods()
    }


def effective_rpm(installed: Installed, rpm: int) -> bool:
    """Every sidecar limits at ``rpm`` as configured: at most it, and within 5% of it. (After an
    upstream 429, as around the Redis restart of an earlier test, the adaptive limits hold the account
    a little below its configured limit until calls succeed again: docs/limits.md. 5% keeps the pool's
    limits of these tests, 60 and 50, apart.)"""
    return installed.every_sidecar(
        "o1_api_effective_limit",
        {"model": MODEL, "type": "requests"},
        lambda value: 0.95 * rpm <= value <= rpm,
    )


def test_kubectl_edit_of_the_pools_limits_reaches_running_sidecars_without_a_restart(
    installed: Installed,
) -> None:
    cluster = installed.cluster
    assert effective_rpm(installed, RPM)
    before = installed.restarts()
    cluster.kubectl(
        "edit",
        "o1pool",
        POOL,
        "-n",
        installed.namespace,
        extra_env={"KUBE_EDITOR": f"sed -i -e 's/rpm: {RPM}$/rpm: {EDITED_RPM}/'"},
    )
    # The operator renders the ConfigMap, the kubelet updates the mounted file, the sidecar reloads.
    eventually(
        lambda: effective_rpm(installed, EDITED_RPM), f"every sidecar limiting at {EDITED_RPM} RPM", 120
    )
    assert installed.restarts() == before
    installed.keeps_serving(10, "the app served after the reload")


def test_a_rotated_key_reaches_running_sidecars_without_a_restart(installed: Installed) -> None:
    cluster = installed.cluster
    before = installed.restarts()
    rotated = cluster.kubectl(
        "create",
        "secret",
        "generic",
        f"{POOL}-keys",
        f"--from-literal={ACCOUNT}={ROTATED_KEY}",
        "--dry-run=client",
        "-o",
        "yaml",
    ).stdout
    cluster.kubectl("apply", "-n", installed.namespace, "-f", "-", input=rotated)
    eventually(
        lambda: installed.every_sidecar(
            "o1_api_key_renewals_total", {"key": f"{ACCOUNT}/k1"}, lambda n: n >= 1
        ),
        "every sidecar reading the rotated key",
        120,
    )

    # The emulator sees the new key: its calls are counted under the key's name there (a2).
    def new_key_calls() -> int:
        return int(installed.emulator_stats()["accounts"][ACCOUNT]["keys"][ROTATED_KEY_NAME]["admitted"])

    start = new_key_calls()
    eventually(lambda: new_key_calls() >= start + 10, "calls made with the rotated key", 90)
    assert installed.restarts() == before


def test_redis_killed_and_restarted_the_sidecars_share_again_and_no_call_is_lost(
    installed: Installed,
) -> None:
    cluster = installed.cluster
    since = _now()
    cluster.kubectl("delete", "pod", "-n", installed.namespace, "-l", "app=redis", "--wait=false")
    installed.keeps_serving(10, "the app served while Redis restarts")
    eventually(lambda: running_and_ready(installed.pods("app=redis"), 1), "a new Redis pod Running", 60)
    eventually(
        lambda: installed.every_sidecar("o1_api_limiter_mode", {"mode": "shared"}, lambda on: on == 1),
        "every sidecar back on the shared limiter",
        120,
    )
    installed.keeps_serving(10, "the app served with the new Redis")
    # Every call got an answer: a completion or the queue's 429 with retry-after (the app offers more
    # than the pool's limit), never a connection error or a 5xx.
    outcomes = installed.app_outcomes(since)
    assert outcomes
    assert {status for _, status, *_ in outcomes} <= {200, 429}, outcomes
    assert installed.model_stats()["rejected_total"] == 0


def test_the_data_plane_serves_while_the_operator_is_gone_and_the_operator_converges_on_return(
    installed: Installed,
) -> None:
    cluster = installed.cluster
    ns = installed.namespace
    cluster.kubectl("scale", "deployment", RELEASE, "-n", SYSTEM_NAMESPACE, "--replicas=0")
    cluster.kubectl(
        "delete",
        "pod",
        "-n",
        SYSTEM_NAMESPACE,
        "-l",
        "app.kubernetes.io/name=o1pool",
        "--wait=true",
        "--timeout=60s",
    )
    assert not cluster.kubectl("get", "pods", "-n", SYSTEM_NAMESPACE, "-o", "name").stdout.strip()
    # A change made while no operator runs is picked up when it comes back.
    cluster.kubectl(
        "patch",
        "o1pool",
        POOL,
        "-n",
        ns,
        "--type=json",
        "-p",
        json.dumps([{"op": "replace", "path": f"/spec/accounts/0/models/{MODEL}/rpm", "value": RETURN_RPM}]),
    )
    try:
        installed.keeps_serving(10, "the app served with no operator running")
        # The sidecars keep the config they have (a limit just after the Redis restart of the test
        # before may still be settling: the last config is what it settles on).
        try:
            eventually(lambda: effective_rpm(installed, EDITED_RPM), "", 60)
        except pytest.fail.Exception:
            pytest.fail(f"not every sidecar still limits at {EDITED_RPM} RPM: {effective_limits(installed)}")
    finally:  # the operator back, whatever happened (the tests after this one need it)
        cluster.kubectl("scale", "deployment", RELEASE, "-n", SYSTEM_NAMESPACE, "--replicas=1")
        cluster.kubectl(
            "rollout", "status", "deployment", RELEASE, "-n", SYSTEM_NAMESPACE, "--timeout=120s", timeout=150
        )
    eventually(
        lambda: effective_rpm(installed, RETURN_RPM), f"every sidecar limiting at {RETURN_RPM} RPM", 120
    )
    assert installed.model_stats()["rejected_total"] == 0


ASK = """
import json, sys, urllib.request
body = json.dumps({"model": "o1-mini", "messages": [{"role": "user", "content": sys.argv[1]}]}).encode()
url = "http://127.0.0.1:8080/v1/chat/completions"
headers = {"content-type": "application/json", **json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")}
request = urllib.request.Request(url, body, headers)
with urllib.request.urlopen(request, timeout=60) as answer:
    text = json.load(answer)["choices"][0]["message"]["content"]
    print(json.dumps([answer.headers["x-o1pool-cache"], text]))
"""


def ask_through(
    installed: Installed, pod: str, question: str, headers: dict[str, str] | None = None
) -> tuple[str, str]:
    """``question`` asked through the sidecar of the asker ``pod``: (``x-o1pool-cache``, the answer)."""
    command = ("python3", "-c", ASK, question, json.dumps(headers or {}))
    where = (pod, "-n", installed.namespace, "-c", "asker")
    out = installed.cluster.kubectl("exec", *where, "--", *command).stdout
    layer, text = json.loads(out)
    return layer, text


def asker(name: str, app: str = "asker") -> dict[str, Any]:
    """A pod of the pool that only waits: the test asks through its sidecar with ``kubectl exec``."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}, "annotations": {"o1pool.io/inject": POOL}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "asker",
                    "image": APP_REFERENCE,
                    "command": ["python3", "-c", "import time; time.sleep(1e6)"],
                }
            ],
        },
    }


def test_a_persistent_cache_runs_as_the_pools_cache_service_and_answers_after_redis_is_flushed(
    installed: Installed,
) -> None:
    cluster, ns = installed.cluster, installed.namespace
    # A lookup's budget of 2 s, not the default 30 ms: a fresh sidecar's first L3 lookup resolves the
    # service's name and connects, which on the shared CI host can take longer than 30 ms (CI once got a
    # miss where this test asks for an L3 hit). This test checks that the layer answers, not how fast.
    persistent = {"spec": {"cache": {"persistent": {"enabled": True, "lookupBudgetMilliseconds": 2000}}}}
    cluster.kubectl("patch", "o1pool", POOL, "-n", ns, "--type=merge", "-p", json.dumps(persistent))
    service = f"{POOL}-o1pool-cache"
    eventually(
        lambda: running_and_ready(installed.pods("app.kubernetes.io/component=cache-service"), 1),
        "the pool's cache service Running and ready",
        POD_READY_TIMEOUT,
    )
    status = cluster.kubectl("get", "o1pool", POOL, "-n", ns, "-o", "jsonpath={.status.cacheService}").stdout
    assert status == service
    # Pods made now mount the config that names it (and the webhook labels them as the pool's).
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=dump([asker("asker-1"), asker("asker-2")]))
    eventually(
        lambda: running_and_ready(installed.pods("app=asker"), 2), "2 asker pods Running", POD_READY_TIMEOUT
    )
    assert all(p["metadata"]["labels"]["o1pool.io/pool"] == POOL for p in installed.pods("app=asker"))

    def ask(pod: str, question: str) -> tuple[str, str]:
        return ask_through(installed, pod, question)

    layer, text = ask("asker-1", "What does a persistent cache keep?")
    assert layer == "miss"
    eventually(
        lambda: (
            json.loads(cluster.http_get(f"http://{cluster.service_ip(ns, service)}:8471/healthz"))["entries"]
            >= 1
        ),
        "the answer written to the cache service",
        30,
    )
    Redis(host=cluster.service_ip(ns, "redis"), port=REDIS_PORT).flushall()  # L2 gone; asker-2 has no L1
    assert ask("asker-2", "What does a persistent cache keep?") == ("l3", text)
    [pod] = installed.pods("app.kubernetes.io/component=cache-service")
    scrape = cluster.http_get(f"http://{pod['status']['podIP']}:8471/metrics").decode()
    assert 'o1_cache_service_requests_total{op="get",result="hit"} 1.0' in scrape

    # Off again: the cache service goes. A sidecar still pointed at it (until its config reloads)
    # finds it gone: a miss, and the model answers.
    off = {"spec": {"cache": {"persistent": {"enabled": False}}}}
    cluster.kubectl("patch", "o1pool", POOL, "-n", ns, "--type=merge", "-p", json.dumps(off))
    eventually(
        lambda: service not in cluster.kubectl("get", "deployment,service", "-n", ns, "-o", "name").stdout,
        "the operator deleting the cache service's Deployment and Service",
        60,
    )
    eventually(
        lambda: not installed.pods("app.kubernetes.io/component=cache-service"),
        "the cache service's pod gone (garbage collection, then its graceful stop)",
        120,
    )
    layer, text = ask("asker-1", "And with the cache service gone?")
    assert layer == "miss" and text
    cluster.kubectl("delete", "pod", "-n", ns, "-l", "app=asker", "--wait=false")


def test_the_semantic_cache_runs_in_the_cache_image_and_answers_a_question_asked_in_other_words(
    installed: Installed,
) -> None:
    cluster, ns = installed.cluster, installed.namespace
    # Budgets a loaded CI machine cannot overrun: this checks the layer's answer, not its speed.
    # Small requests: the node is shared with the other tests' pods (the budgets are what matters).
    resources = {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}}
    persistent = {"enabled": True, "lookupBudgetMilliseconds": 2000, "resources": resources}
    semantic = {"enabled": True, "lookupBudgetMilliseconds": 5000}
    on = {"spec": {"cache": {"persistent": persistent, "semantic": semantic}}}
    cluster.kubectl("patch", "o1pool", POOL, "-n", ns, "--type=merge", "-p", json.dumps(on))
    eventually(
        lambda: running_and_ready(installed.pods("app.kubernetes.io/component=cache-service"), 1),
        "the pool's cache service Running and ready (the model loaded)",
        POD_READY_TIMEOUT,
    )
    [pod] = installed.pods("app.kubernetes.io/component=cache-service")
    [container] = pod["spec"]["containers"]
    assert container["image"] == CACHE_REFERENCE and "--semantic" in container["args"]
    # Pods of their own names: the last test's askers may still be terminating.
    askers = [asker("semantic-1", app="semantic-asker"), asker("semantic-2", app="semantic-asker")]
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=dump(askers))
    eventually(
        lambda: running_and_ready(installed.pods("app=semantic-asker"), 2),
        "2 asker pods Running",
        POD_READY_TIMEOUT,
    )
    health = f"http://{pod['status']['podIP']}:8471/healthz"

    def ask(pod: str, question: str) -> tuple[str, str]:
        return ask_through(installed, pod, question, {"x-o1pool-cache-semantic": "on"})

    layer, text = ask("semantic-1", "How do I rotate an API key?")
    assert layer == "miss"
    eventually(
        lambda: json.loads(cluster.http_get(health))["questions"] >= 1,
        "the question indexed by the service",
        30,
    )
    # Another pod (no L1 of its own), other words, the same setting: the answer already given.
    assert ask("semantic-2", "How can I rotate an API key?") == ("semantic", text)
    # A question that differs in a name is not the same question, however near its wording.
    assert ask("semantic-2", "How do I rotate an Azure key?")[0] == "miss"
    scrape = cluster.http_get(f"http://{pod['status']['podIP']}:8471/metrics").decode()
    assert 'o1_cache_service_requests_total{op="semantic_get",result="hit"} 1.0' in scrape
    cluster.kubectl("delete", "pod", "-n", ns, "-l", "app=semantic-asker", "--wait=false")
    off = {"spec": {"cache": {"persistent": {"enabled": False}, "semantic": {"enabled": False}}}}
    cluster.kubectl("patch", "o1pool", POOL, "-n", ns, "--type=merge", "-p", json.dumps(off))
    eventually(
        lambda: not installed.pods("app.kubernetes.io/component=cache-service"),
        "the cache service's pod gone",
        180,
    )


def floor_workload() -> str:
    """A small Deployment (Redis's image: quick to start, a TCP readiness probe) with an HPA, not
    injected: the pool's autoscaling target."""
    container = {
        "name": "floor",
        "image": REDIS_REFERENCE,
        "readinessProbe": {"tcpSocket": {"port": REDIS_PORT}, "periodSeconds": 1},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "floor"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "floor"}},
            "template": {"metadata": {"labels": {"app": "floor"}}, "spec": {"containers": [container]}},
        },
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "floor"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "floor"},
            "minReplicas": 1,
            "maxReplicas": 6,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                }
            ],
        },
    }
    return dump([deployment, hpa])


def test_a_predicted_peak_raises_the_replica_floor_and_its_pods_run_on_the_node(installed: Installed) -> None:
    """Four weeks of demand, written into the pool's Redis (a pod) by the sidecars' own recorder, predict
    a busy hour: the operator (the chart's Deployment) raises the target's HPA to the floor, the
    controller-manager scales the Deployment, and the floor's pods run on the node; the pool's status
    shows the floor and the start-up the operator measured from them."""
    clear_of_the_hour_boundary()
    cluster, ns = installed.cluster, installed.namespace
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=floor_workload())
    redis_ip = installed.pods("app=redis")[0]["status"]["podIP"]
    start = int(time.time() // 3600) * 3600 - 28 * 86_400
    # 1,000,000 tokens a minute for four weeks (the app pods' own calls are a few percent of it); at
    # 277,778 per replica, 80% used, that is 4.5 replicas: a floor of 5 with room for noise either way.
    keys = PoolKeys("o1pool", ns, POOL)
    asyncio.run(
        record_weeks(
            f"redis://{redis_ip}:{REDIS_PORT}/0", keys, [MODEL], range(28 * 24), start, lambda _: 1_000_000
        )
    )
    target = {"name": "floor", "tokensPerReplicaPerMinute": 277_778}
    autoscaling = {"mode": "scale", "maxReplicas": 6, "stabilizationSeconds": 0, "targets": [target]}
    patch = json.dumps({"spec": {"autoscaling": autoscaling}})
    cluster.kubectl("patch", "o1pool", POOL, "-n", ns, "--type=merge", "-p", patch)
    try:

        def hpa_min() -> int:
            out = cluster.kubectl(
                "get", "hpa", "floor", "-n", ns, "-o", "jsonpath={.spec.minReplicas}"
            ).stdout
            return int(out or 0)

        eventually(lambda: hpa_min() == 5, "the HPA's minReplicas raised to the floor", 90)
        eventually(
            lambda: running_and_ready(installed.pods("app=floor"), 5),
            "the floor's 5 pods Running and ready on the node",
            POD_READY_TIMEOUT,
        )

        def measured() -> dict[str, Any] | None:
            out = cluster.kubectl(
                "get", "o1pool", POOL, "-n", ns, "-o", "jsonpath={.status.autoscaling}"
            ).stdout
            rows = json.loads(out or "{}").get("targets") or [{}]
            return rows[0] if "startupSeconds" in rows[0] else None  # (there once a ready pod is measured)

        eventually(lambda: measured() is not None, "the pods' start-up measured by the operator", 60)
        row = measured()
        assert row is not None
        assert (row["via"], row["floor"], row["replicas"]) == ("HorizontalPodAutoscaler/floor", 5, 5)
        assert 0 <= row["startupSeconds"] < POD_READY_TIMEOUT
    finally:
        off = json.dumps({"spec": {"autoscaling": {"mode": "off"}}})
        cluster.kubectl("patch", "o1pool", POOL, "-n", ns, "--type=merge", "-p", off)
        cluster.kubectl("delete", "deployment,hpa", "floor", "-n", ns, "--wait=false", check=False)
        first_day = start // 86_400
        with Redis.from_url(
            f"redis://{redis_ip}:{REDIS_PORT}/0"
        ) as client:  # (the operator's reads stay light)
            client.delete(*(keys.demand(MODEL, day) for day in range(first_day, first_day + 30)))


def test_helm_upgrade_keeps_serving_and_helm_uninstall_leaves_pools_deletable(installed: Installed) -> None:
    cluster = installed.cluster
    ns = installed.namespace
    before = installed.restarts()
    cluster.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        SYSTEM_NAMESPACE,
        "--reuse-values",
        "--set",
        "verbose=true",
        "--wait",
        "--timeout",
        "180s",
        timeout=240,
    )
    args = cluster.kubectl(
        "get",
        "deployment",
        RELEASE,
        "-n",
        SYSTEM_NAMESPACE,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].args}",
    ).stdout
    assert "--verbose" in args, args
    eventually(lambda: pool_ready(cluster, ns), "the pool Ready under the upgraded operator", 60)
    installed.keeps_serving(10, "the app served after the upgrade")
    assert installed.restarts() == before

    cluster.helm("uninstall", RELEASE, "-n", SYSTEM_NAMESPACE, "--wait", "--timeout", "120s", timeout=180)
    assert not cluster.kubectl("get", "deployment", "-n", SYSTEM_NAMESPACE, "-o", "name").stdout.strip()
    webhooks = cluster.kubectl("get", "mutatingwebhookconfigurations", "-o", "name").stdout
    assert "o1pool" not in webhooks, webhooks
    installed.keeps_serving(10, "the app served with the chart uninstalled")
    # No finalizer: a pool is deleted at once with no operator to release it.
    assert not cluster.kubectl(
        "get", "o1pool", POOL, "-n", ns, "-o", "jsonpath={.metadata.finalizers}"
    ).stdout.strip()
    cluster.kubectl("delete", "o1pool", POOL, "-n", ns, "--timeout=30s")
    assert installed.model_stats()["rejected_total"] == 0
