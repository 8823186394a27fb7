"""The chart and the operator on a real kube-apiserver + etcd + kube-controller-manager.

The chart is installed with helm; the operator runs locally as the chart's ServiceAccount (a token
kubeconfig), so every call it makes goes through the chart's RBAC.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from o1operator import cli as operator_cli
from o1operator.render import render
from o1operator.sidecars import USAGE_MINUTES, get_sidecar_probe
from o1sidecar.config import Account, SidecarConfig
from o1sidecar.demand import DemandCounts, DemandRecorder
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.outage_sync import SharedOutages
from o1sidecar.outages import ModelOutages, ModelState
from o1sidecar.quarantine import SharedQuarantine
from o1sidecar.spend import SpendLedger, SpendRecorder
from o1sidecar.upstream import AccountRoute, UpstreamKey
from tests.conftest import RedisServer
from tests.kube.fixtures import Kube
from tests.kube.pki import generate_pki
from tests.kube.testground import free_port
from tests.operator.conftest import REPO, b64, fake_secrets, load_example, secret_values
from tests.polling import clear_of_the_hour_boundary
from tests.recorded_demand import record_weeks, weekly_tokens

pytestmark = pytest.mark.kube

CHART = REPO / "helm" / "o1pool"
RELEASE = "o1pool"
SERVICE_ACCOUNT = "o1pool"  # the chart's fullname for release "o1pool"
BASIC = REPO / "examples" / "o1pool-basic.yaml"
MULTI = REPO / "examples" / "o1pool-multi-account.yaml"
GATEWAY = REPO / "examples" / "o1pool-gateway.yaml"
WAIT = 30.0
CLIENTS = [
    {
        "name": "web",
        "match": {"namespaces": ["team-a"], "workloads": ["Deployment/web"], "serviceAccounts": ["web"]},
        "maxPriority": 5,
        "limits": {"rpm": 60, "tpm": 200000},
        "budgets": {"dailyUsd": 10.5, "monthlyUsd": 200, "dailyTokens": 1000000, "monthlyTokens": 20000000},
        "onBudget": "downgrade",
    },
    {
        "name": "batch",
        "match": {"namespaces": ["team-b"]},
        "budgets": {"monthlyUsd": 50},
        "onBudget": "refuse",
    },
    {"name": "everyone-else", "match": {}},
]
GC_WAIT = 90.0
VIRTUAL_KEY = {"name": "main", "secretRef": {"name": "partner-key", "key": "key"}}


@dataclass
class Chart:
    namespace: str
    sa_kubeconfig: Path


@pytest.fixture(scope="module")
def chart(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chart]:
    """The chart installed by helm into its own namespace (cluster-wide RBAC, the default)."""
    namespace = f"o1pool-system-{secrets.token_hex(3)}"
    # No in-cluster webhook: no pod runs here to serve it (test_webhook_injects_the_sidecar points a copy
    # of the chart's webhook configuration at a local operator instead).
    installed = kube.helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        "--wait=false",
        "--set",
        "webhook.enabled=false",
    )
    notes = installed.stdout
    assert "kubectl get o1pools" in notes, notes
    # The pool the NOTES show is one this API server takes (the CRD's schema and CEL rules).
    inline_pool = textwrap.dedent(notes.split("<<'EOF'\n", 1)[1].split("  EOF\n", 1)[0])
    kube.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-",
        input=inline_pool.replace("<namespace>", namespace),
    )  # fmt: skip
    kubeconfig = kube.service_account_kubeconfig(
        namespace, SERVICE_ACCOUNT, path=tmp_path_factory.mktemp("sa") / "operator.kubeconfig"
    )
    yield Chart(namespace=namespace, sa_kubeconfig=kubeconfig)
    kube.helm("uninstall", RELEASE, "--namespace", namespace, check=False)
    kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@dataclass
class Operator:
    proc: subprocess.Popen[bytes]
    log: Path
    liveness_port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_operator(kube: Kube, kubeconfig: Path, namespace: str, log: Path, *extra: str) -> Operator:
    """``o1pool operator --namespace NS`` with ``kubeconfig`` (a ServiceAccount's), at debug level."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "o1pool.cli",
        "operator",
        "--namespace",
        namespace,
        "--kubeconfig",
        str(kubeconfig),
        "--verbose",
        f"--liveness=http://127.0.0.1:{port}/healthz",
        *extra,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=kube.env(kubeconfig), cwd=REPO
        )
    return Operator(proc=proc, log=log, liveness_port=port)


def stop_operator(running: Operator) -> None:
    running.proc.terminate()
    try:
        running.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        running.proc.wait()
    forbidden = [line for line in running.output().splitlines() if "forbidden" in line.lower()]
    assert not forbidden, "operator hit RBAC denials:\n" + "\n".join(forbidden[:5])


@pytest.fixture
def operator(kube: Kube, chart: Chart, kube_namespace: str, tmp_path: Path) -> Iterator[Operator]:
    running = start_operator(kube, chart.sa_kubeconfig, kube_namespace, tmp_path / "operator.log")
    yield running
    stop_operator(running)


@pytest.fixture
def api(kube: Kube) -> Iterator[client.ApiClient]:
    with kube.api_client() as api_client:
        yield api_client


def wait_for(
    what: str, probe: Callable[[], Any], operator: Operator | None = None, timeout: float = WAIT
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if operator is not None and operator.proc.poll() is not None:
            pytest.fail(
                f"operator exited ({operator.proc.returncode}) waiting for {what}:\n"
                + operator.output()[-3000:]
            )
        if time.monotonic() > deadline:
            tail = operator.output()[-3000:] if operator else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(0.2)


def get_pool(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(
        "o1pool.io", "v1alpha1", namespace, "o1pools", name
    )


def condition(pool: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in pool.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def create_secrets(api: client.ApiClient, namespace: str, data: dict[str, dict[str, str]]) -> None:
    core = client.CoreV1Api(api)
    for name, values in data.items():
        core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "data": values})


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def read_optional(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_chart_lints_and_its_manifests_pass_server_side_dry_run(kube: Kube, kube_namespace: str) -> None:
    lint = kube.helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in lint.stdout
    server = json.loads(kube.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    value_sets = [([], "clusterrole"), (["--set", f"watchNamespaces[0]={kube_namespace}"], "role")]
    value_sets += [
        (["-f", str(path)], "clusterrole") for path in sorted((CHART / "ci").glob("*-values.yaml"))
    ]
    assert len(value_sets) > 2, "helm/o1pool/ci/kind-values.yaml (used by docs/operator.md) is checked here"
    for values, rbac in value_sets:
        rendered = kube.helm(
            "template", "dry", str(CHART), "--namespace", kube_namespace, "--kube-version", server, *values
        ).stdout
        result = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
        kinds = {line.split("/")[0] for line in result.stdout.splitlines()}
        [deployment] = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"][0] == "operator"
        operator_cli.parser().parse_args(container["args"][1:])  # the chart passes only flags the CLI has
        expected = {
            "serviceaccount",
            "deployment.apps",
            f"{rbac}.rbac.authorization.k8s.io",
            "service",
            "mutatingwebhookconfiguration.admissionregistration.k8s.io",
        }
        assert expected <= kinds, result.stdout


def test_chart_gateway_network_policy_passes_server_side_dry_run(kube: Kube, kube_namespace: str) -> None:
    """gateway.networkPolicy: one NetworkPolicy per namespace of pools with gateways, the API port (by
    name) only from the listed peers, the metrics port from metricsFrom; refused without namespaces."""
    values = {
        "gateway": {
            "networkPolicy": {
                "enabled": True,
                "namespaces": [kube_namespace],
                "from": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "batch"}}},
                    {"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.1.0/24"]}},
                ],
                "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
            }
        }
    }
    rendered = kube.helm(
        "template", "dry", str(CHART), "--namespace", kube_namespace, "-f", "-", input=yaml.safe_dump(values)
    ).stdout
    [policy] = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "NetworkPolicy"]
    kube.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(policy))
    assert policy["metadata"]["namespace"] == kube_namespace
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "o1pool",
        "app.kubernetes.io/component": "gateway",
        "app.kubernetes.io/managed-by": "o1pool-operator",
    }
    api_rule, metrics_rule = policy["spec"]["ingress"]
    assert api_rule["from"] == values["gateway"]["networkPolicy"]["from"]
    assert {p["port"] for p in api_rule["ports"]} == {"https", "http"}
    assert metrics_rule["ports"] == [{"protocol": "TCP", "port": "o1pool-metrics"}]
    closed = kube.helm(
        "template", "dry", str(CHART), "--set", "gateway.networkPolicy.enabled=true",
        "--set", f"watchNamespaces[0]={kube_namespace}",
    ).stdout  # fmt: skip
    [policy] = [d for d in yaml.safe_load_all(closed) if d and d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": "o1pool-metrics"}]}]
    refused = kube.helm(
        "template", "dry", str(CHART), "--set", "gateway.networkPolicy.enabled=true", check=False
    )
    assert (
        refused.returncode != 0
        and "set gateway.networkPolicy.namespaces, or watchNamespaces" in refused.stderr
    )


def test_chart_rbac_is_least_privilege(kube: Kube, chart: Chart, kube_namespace: str) -> None:
    def can(verb: str, resource: str) -> bool:
        kind, _, sub = resource.partition("/")  # ("TYPE/NAME" would name an object to can-i)
        args = ["auth", "can-i", verb, kind, "-n", kube_namespace] + ([f"--subresource={sub}"] if sub else [])
        result = kube.kubectl(*args, kubeconfig=chart.sa_kubeconfig, check=False)
        return result.stdout.strip() == "yes"

    allowed = [
        ("patch", "o1pools.o1pool.io"),
        ("patch", "o1pools.o1pool.io/status"),
        ("watch", "secrets"),
        ("create", "configmaps"),
        ("patch", "configmaps"),
        ("delete", "configmaps"),  # a pool's gateway config, once its gateway is off
        ("create", "events"),
        ("get", "deployments.apps"),  # autoscaling targets
        ("patch", "deployments.apps/scale"),
        ("patch", "horizontalpodautoscalers.autoscaling"),
        ("list", "pods"),  # a target's pods' start-up
        ("patch", "deployments.apps"),  # a pool's cache service (and deleted when turned off)
        ("delete", "deployments.apps"),
        ("create", "services"),
        ("delete", "services"),
        ("patch", "networkpolicies.networking.k8s.io"),
    ]
    denied = [
        ("delete", "secrets"),
        ("update", "o1pools.o1pool.io"),
        ("delete", "o1pools.o1pool.io"),
        ("get", "configmaps"),
        ("update", "o1pools.o1pool.io/status"),
        ("get", "pods"),
        ("update", "deployments.apps"),  # server-side apply only
        ("get", "services"),
        ("patch", "statefulsets.apps"),  # only the scale subresource
        ("delete", "horizontalpodautoscalers.autoscaling"),
        ("list", "customresourcedefinitions"),
        ("list", "namespaces"),
    ]
    assert [a for a in allowed if not can(*a)] == []
    assert [d for d in denied if can(*d)] == []


def test_the_built_in_view_and_edit_roles_cover_o1pools(
    kube: Kube, chart: Chart, kube_namespace: str
) -> None:
    """The chart's aggregated ClusterRoles: a user bound to `view` reads O1Pools, one bound to `edit`
    manages them; neither writes their status (the operator's)."""
    ns = kube_namespace

    def can(role: str, verb: str, resource: str, *extra: str) -> bool:
        user = f"system:serviceaccount:{ns}:{role}-user"
        result = kube.kubectl("auth", "can-i", verb, resource, *extra, "-n", ns, "--as", user, check=False)
        return result.stdout.strip() == "yes"

    for role in ("view", "edit"):
        kube.kubectl(
            "create",
            "rolebinding",
            f"{role}-user",
            f"--clusterrole={role}",
            f"--serviceaccount={ns}:{role}-user",
            "-n",
            ns,
        )

    def aggregated() -> bool:
        return can("view", "list", "o1pools.o1pool.io") and can("edit", "patch", "o1pools.o1pool.io")

    wait_for("the aggregation controller", aggregated)
    assert not can("view", "patch", "o1pools.o1pool.io")
    assert not can("edit", "patch", "o1pools.o1pool.io", "--subresource=status")
    assert can("edit", "delete", "o1pools.o1pool.io")


def test_crd_explains_fields_and_cel_rejects_invalid_pools(
    kube: Kube, chart: Chart, kube_namespace: str
) -> None:
    explain = kube.kubectl("explain", "o1pools.spec.accounts.keys.secretKeyRef").stdout
    assert "The Secret (in the pool's namespace) and data key holding the API key" in explain

    base = yaml.safe_load(BASIC.read_text())

    def rejected(mutate: Callable[[dict[str, Any]], None]) -> str:
        pool = json.loads(json.dumps(base))
        mutate(pool["spec"])
        result = kube.kubectl(
            "apply", "-n", kube_namespace, "-f", "-", input=yaml.safe_dump(pool), check=False
        )
        assert result.returncode != 0, f"accepted: {pool['spec']}"
        return result.stderr

    account = base["spec"]["accounts"][0]
    cases: list[tuple[Callable[[dict[str, Any]], None], str]] = [
        (lambda s: s["accounts"][0].update(kind="azure"), "azure accounts need apiVersion"),
        (lambda s: s["accounts"].append(account), "account names must be unique"),
        (
            lambda s: s.update(fallback={"chains": {"o1": ["o1-mini", "o1"]}}),
            "must not contain its own model",
        ),
        (lambda s: s.update(queue={"defaultDeadlineSeconds": 900}), "maxDeadlineSeconds must be at least"),
        (lambda s: s.update(redis={"url": "redis://:hunter2@redis:6379"}), "must not contain a password"),
        (lambda s: s["accounts"][0].update(tier=7), "should be less than or equal to 5"),
        (lambda s: s["accounts"][0].pop("tier"), "set a tier or list the account's models"),
        (lambda s: s.update(autoscaling={"mode": "scale"}), "need at least one target"),
        (
            lambda s: s.update(autoscaling={"mode": "scale", "targets": [{"name": "app"}]}),
            "tokensPerReplicaPerMinute: Required value",
        ),
        (
            lambda s: s.update(forecasting={"mediumTokensPerHour": 10, "highTokensPerHour": 5}),
            "highTokensPerHour must be above mediumTokensPerHour",
        ),
        (lambda s: s.update(tracing={"sampleRatio": 0.5}), "sampleRatio applies to exported traces"),
        (lambda s: s.update(tracing={"otlpEndpoint": "otel:4318"}), "spec.tracing.otlpEndpoint"),
        (
            lambda s: s.update(audit={"content": True}),
            "audit.sampleRatio/content/maskPatterns apply to audit lines: set audit.enabled: true",
        ),
        (
            lambda s: s.update(audit={"enabled": False, "sampleRatio": 0.5}),
            "apply to audit lines: set audit.enabled: true, or remove them",
        ),
        (
            lambda s: s.update(audit={"enabled": True, "maskPatterns": ["ACME-[0-9]+"]}),
            "audit.maskPatterns apply to logged content: set audit.content: true",
        ),
        (lambda s: s.update(audit={"enabled": True, "sampleRatio": 2}), "should be less than or equal to 1"),
        (lambda s: s.update(prices={"o1": {"input": 15}}), "spec.prices.o1.output: Required value"),
        (lambda s: s.update(prices={"o1": {"input": -1, "output": 60}}), "spec.prices.o1.input"),
        (
            lambda s: s.update(clients=[{"name": "web", "onBudget": "downgrade"}]),
            "clients[].onBudget applies once a budget is spent: give the client budgets, or remove onBudget",
        ),
        (
            lambda s: s.update(clients=[{"name": "web", "budgets": {}, "onBudget": "downgrade"}]),
            "spec.clients[0]: Invalid value: clients[].onBudget applies once a budget is spent",
        ),
        (
            lambda s: (
                s.pop("redis"),
                s.update(
                    clients=[
                        {"name": "a", "match": {}},
                        {"name": "b", "match": {}, "budgets": {"dailyTokens": 9}},
                    ]
                ),
            ),
            "clients with budgets need spec.redis: budgets are counted across the pool's sidecars in Redis",
        ),
        (
            lambda s: s.update(clients=[{"name": "web", "match": {}, "limits": {}}]),
            "spec.clients[0].limits: Invalid value: a client's limits need rpm, tpm or both: give one, or "
            "remove limits",
        ),
        (
            lambda s: s.update(clients=[{"name": "web", "match": {}, "limits": {"rpm": 0}}]),
            "spec.clients[0].limits.rpm",
        ),
        (
            lambda s: s.update(clients=[{"name": "web", "match": {}, "limits": {"rpm": 60, "tpm": 0}}]),
            "spec.clients[0].limits.tpm",
        ),
        (
            lambda s: (
                s.pop("redis"),
                s.update(
                    clients=[{"name": "a", "match": {}}, {"name": "b", "match": {}, "limits": {"tpm": 9}}]
                ),
            ),
            "clients with limits need spec.redis: a client's limits are counted across the pool's sidecars "
            "in Redis; set spec.redis.url (or urlSecretRef), or remove the limits",
        ),
        (
            lambda s: s.update(clients=[{"name": "web", "match": {}}, {"name": "web", "match": {}}]),
            "spec.clients[1]: Duplicate value",
        ),
        (
            lambda s: s.update(clients=[{"name": "web"}]),
            "is no pod's (no match) and no caller's (no virtualKeys)",
        ),
        (
            lambda s: s.update(clients=[{"name": "web", "budgets": {"dailyUsd": 0}}]),
            "spec.clients[0].budgets.dailyUsd",
        ),
        (
            lambda s: s.update(clients=[{"name": "web", "maxPriority": 10}]),
            "should be less than or equal to 9",
        ),
        (lambda s: s.update(clients=[{"name": "web", "weight": 0}]), "spec.clients[0].weight"),
        (
            lambda s: s.update(clients=[{"name": "web", "match": {"workloads": ["web"]}}]),
            "spec.clients[0].match.workloads[0]",
        ),
        (lambda s: s.update(clients=[{"name": "Web"}]), "spec.clients[0].name"),
        (
            lambda s: s.update(clients=[{"name": "partner", "virtualKeys": [VIRTUAL_KEY]}]),
            "clients[].virtualKeys are checked only by the pool's gateway: set spec.gateway.enabled: true, "
            "or remove the virtualKeys",
        ),
        (
            lambda s: s.update(
                clients=[{"name": "partner", "virtualKeys": [VIRTUAL_KEY]}], gateway={"enabled": False}
            ),
            "clients[].virtualKeys are checked only by the pool's gateway",
        ),
        (
            lambda s: s.update(clients=[{"name": "web", "match": {}}], gateway={"enabled": True}),
            "a gateway answers only callers with a client's virtual key: give a client virtualKeys",
        ),
        (
            lambda s: s.update(gateway={"enabled": True}),
            "a gateway answers only callers with a client's virtual key: give a client virtualKeys",
        ),
        (
            lambda s: (
                s.pop("redis"),
                s.update(
                    clients=[{"name": "partner", "virtualKeys": [VIRTUAL_KEY]}], gateway={"enabled": True}
                ),
            ),
            "a gateway needs spec.redis: it shares limits, queue, cache and spend with the sidecars through "
            "Redis",
        ),
        (
            lambda s: s.update(clients=[{"name": "partner", "virtualKeys": [VIRTUAL_KEY, VIRTUAL_KEY]}]),
            "spec.clients[0].virtualKeys[1]: Duplicate value",
        ),
        (
            lambda s: s.update(clients=[{"name": "partner", "virtualKeys": [{"name": "main"}]}]),
            "spec.clients[0].virtualKeys[0].secretRef: Required value",
        ),
        (lambda s: s.update(clients=[{"name": "partner", "virtualKeys": []}]), "spec.clients[0].virtualKeys"),
        (
            lambda s: s.update(
                clients=[{"name": "p", "virtualKeys": [{**VIRTUAL_KEY, "name": f"k{i}"} for i in range(65)]}]
            ),
            "must have at most 64 items",
        ),
        (
            lambda s: s.update(gateway={"enabled": True, "replicas": 21}),
            "spec.gateway.replicas: Invalid value: 21: spec.gateway.replicas in body should be less than or "
            "equal to 20",
        ),
        (lambda s: s.update(gateway={"replicas": 0}), "spec.gateway.replicas"),
        (
            lambda s: s.update(gateway={"port": 9090}),
            "gateway.port must not be 9090, the gateway's metrics port",
        ),
        (lambda s: s.update(gateway={"port": 80}), "spec.gateway.port"),
        (lambda s: s.update(gateway={"serviceType": "ExternalName"}), "spec.gateway.serviceType"),
        (lambda s: s.update(gateway={"tlsSecretName": "Not_A_Name"}), "spec.gateway.tlsSecretName"),
    ]
    for mutate, message in cases:
        assert message in rejected(mutate)
    # A pool with a gateway needs a name that makes <pool>-gateway a DNS label.
    long_name = yaml.safe_load(GATEWAY.read_text())
    long_name["metadata"]["name"] = "g" * 56
    refused = kube.kubectl(
        "apply", "-n", kube_namespace, "-f", "-", input=yaml.safe_dump(long_name), check=False
    )
    assert refused.returncode != 0 and "use a pool name of at most 55 characters" in refused.stderr
    long_name["metadata"]["name"] = "g" * 55
    kube.kubectl(
        "apply", "--dry-run=server", "-n", kube_namespace, "-f", "-", input=yaml.safe_dump(long_name)
    )
    for example in (BASIC, MULTI, GATEWAY):
        kube.kubectl("apply", "--dry-run=server", "-n", kube_namespace, "-f", str(example))
    audited = json.loads(json.dumps(base))
    audited["spec"] |= {
        "audit": {"enabled": True, "sampleRatio": 0.5, "content": True, "maskPatterns": ["ACME-[0-9]+"]},
        "prices": {
            "o1": {"input": 15, "cachedInput": 7.5, "output": 60},
            "o1-mini": {"input": 1, "output": 4},
        },
    }
    kube.kubectl("apply", "--dry-run=server", "-n", kube_namespace, "-f", "-", input=yaml.safe_dump(audited))
    with_clients = json.loads(json.dumps(base))
    with_clients["spec"]["clients"] = CLIENTS
    kube.kubectl(
        "apply", "--dry-run=server", "-n", kube_namespace, "-f", "-", input=yaml.safe_dump(with_clients)
    )
    del with_clients["spec"]["redis"]  # clients without budgets or limits need no Redis
    with_clients["spec"]["clients"] = [
        {"name": "web", "match": {"namespaces": ["team-a"]}, "maxPriority": 3},
        {"name": "rest", "match": {}},
    ]
    kube.kubectl(
        "apply", "--dry-run=server", "-n", kube_namespace, "-f", "-", input=yaml.safe_dump(with_clients)
    )


def test_pool_lifecycle_render_rotate_remove_update_delete(
    kube: Kube, operator: Operator, api: client.ApiClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    core = client.CoreV1Api(api)
    spec = yaml.safe_load(MULTI.read_text())["spec"]
    data = fake_secrets(spec)
    create_secrets(api, ns, data)
    kube.kubectl("apply", "-n", ns, "-f", str(MULTI))

    def ready_with(predicate: Callable[[dict[str, Any]], bool]) -> Callable[[], dict[str, Any] | None]:
        def probe() -> dict[str, Any] | None:
            pool = get_pool(api, ns, "research")
            return pool if predicate(pool) else None

        return probe

    pool = wait_for(
        "pool Ready", ready_with(lambda p: condition(p, "Ready").get("status") == "True"), operator
    )
    status = pool["status"]
    assert status["observedGeneration"] == 1
    assert (status["keysReady"], status["keysTotal"], status["accountsReady"]) == (4, 4, 3)
    by_type = {c["type"]: c["status"] for c in status["conditions"]}
    assert by_type.pop("RedisReachable") in ("Unknown", "False")  # redis.example: not read yet, or cannot be
    assert by_type == {
        "Ready": "True",
        "KeysReady": "True",
        "ConfigRendered": "True",
        "ModelsAvailable": "Unknown",  # its Redis cannot be read
        "Forecasting": "Unknown",
    }
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])

    config_map = core.read_namespaced_config_map("research-o1pool-config", ns)
    config = SidecarConfig.from_dict(yaml.safe_load(config_map.data["config.yaml"]))
    assert [a.name for a in config.accounts] == ["org-main", "team-b", "azure-east"]
    assert config_map.metadata.annotations["o1pool.io/config-hash"] == status["configHash"]
    [owner] = config_map.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("O1Pool", "research", pool["metadata"]["uid"])
    key_secret = core.read_namespaced_secret("research-o1pool-keys", ns)
    assert sorted(key_secret.data) == [
        "azure-east.key1",
        "config-hash-salt",  # the HMAC key of the config hash, generated once per pool
        "org-main.primary",
        "org-main.secondary",
        "redis-password",
        "team-b.main",
    ]
    assert key_secret.data["org-main.primary"] == data["openai-keys"]["primary"]
    assert key_secret.metadata.owner_references[0].uid == pool["metadata"]["uid"]

    # spec.cache.persistent: the pool's cache service, owned by the pool, and the sidecars pointed at it;
    # with spec.cache.semantic it runs the semantic layer, in the cache image.
    apps, networking = client.AppsV1Api(api), client.NetworkingV1Api(api)
    assert status["cacheService"] == "research-o1pool-cache"
    deployment = apps.read_namespaced_deployment("research-o1pool-cache", ns)
    assert deployment.metadata.owner_references[0].uid == pool["metadata"]["uid"]
    assert deployment.spec.template.spec.containers[0].image == operator_cli.DEFAULT_CACHE_IMAGE
    assert "--semantic" in deployment.spec.template.spec.containers[0].args
    assert core.read_namespaced_service("research-o1pool-cache", ns).spec.ports[0].port == 8470
    assert networking.read_namespaced_network_policy("research-o1pool-cache", ns).spec.policy_types == [
        "Ingress"
    ]
    assert config.cache.service is not None
    assert config.cache.service.url == f"http://research-o1pool-cache.{ns}.svc:8470"
    assert config.cache.service.semantic is not None
    assert config.cache.service.semantic.requests == "deterministic"

    # Rotating a key re-renders: new hash, new Secret data, same config.
    first_hash = status["configHash"]
    rotated = b64("sk-fake-rotated-5ecret")
    core.patch_namespaced_secret("openai-keys", ns, {"data": {"primary": rotated}})
    pool = wait_for(
        "hash change after rotation",
        ready_with(lambda p: p["status"].get("configHash") not in (None, first_hash)),
        operator,
    )
    assert core.read_namespaced_secret("research-o1pool-keys", ns).data["org-main.primary"] == rotated
    cm = core.read_namespaced_config_map("research-o1pool-config", ns)
    assert cm.data["config.yaml"] == config_map.data["config.yaml"]
    assert cm.metadata.annotations["o1pool.io/config-hash"] == pool["status"]["configHash"]

    # A referenced Secret disappears: KeysReady False naming it, the pool keeps serving the rest.
    core.delete_namespaced_secret("azure-openai", ns)
    pool = wait_for(
        "KeysReady False", ready_with(lambda p: condition(p, "KeysReady").get("status") == "False"), operator
    )
    keys = condition(pool, "KeysReady")
    assert keys["reason"] == "SecretNotFound" and "'azure-openai'" in keys["message"]
    assert (condition(pool, "Ready")["status"], condition(pool, "Ready")["reason"]) == (
        "True",
        "DegradedKeys",
    )
    assert (pool["status"]["keysReady"], pool["status"]["accountsReady"]) == (3, 2)
    assert "azure-east.key1" not in core.read_namespaced_secret("research-o1pool-keys", ns).data
    config = SidecarConfig.from_dict(
        yaml.safe_load(core.read_namespaced_config_map("research-o1pool-config", ns).data["config.yaml"])
    )
    assert [a.name for a in config.accounts] == ["org-main", "team-b"]

    # A spec change: observedGeneration follows, the config changes.
    kube.kubectl(
        "patch",
        "o1pool",
        "research",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"queue": {"defaultPriority": 3}}}),
    )
    pool = wait_for(
        "observedGeneration 2", ready_with(lambda p: p["status"].get("observedGeneration") == 2), operator
    )
    assert all(
        c["observedGeneration"] == 2 for c in pool["status"]["conditions"] if c["type"] != "Forecasting"
    )
    config = SidecarConfig.from_dict(
        yaml.safe_load(core.read_namespaced_config_map("research-o1pool-config", ns).data["config.yaml"])
    )
    assert config.queue.default_priority == 3

    # The semantic layer lives in the cache service: the API server refuses to turn off the service
    # alone, with a message saying what to do.
    patch = {"spec": {"cache": {"persistent": {"enabled": False}}}}
    refused = kube.kubectl(
        "patch", "o1pool", "research", "-n", ns, "--type=merge", "-p", json.dumps(patch), check=False
    )
    assert refused.returncode != 0 and "turn cache.persistent on too, or cache.semantic off" in refused.stderr
    # Turning the persistent cache off removes the cache service and points the sidecars away from it.
    patch = {"spec": {"cache": {"persistent": {"enabled": False}, "semantic": {"enabled": False}}}}
    kube.kubectl("patch", "o1pool", "research", "-n", ns, "--type=merge", "-p", json.dumps(patch))
    pool = wait_for("cache service gone", ready_with(lambda p: "cacheService" not in p["status"]), operator)
    assert read_optional(lambda: apps.read_namespaced_deployment("research-o1pool-cache", ns)) is None
    assert read_optional(lambda: core.read_namespaced_service("research-o1pool-cache", ns)) is None
    assert (
        read_optional(lambda: networking.read_namespaced_network_policy("research-o1pool-cache", ns)) is None
    )
    config = SidecarConfig.from_dict(
        yaml.safe_load(core.read_namespaced_config_map("research-o1pool-config", ns).data["config.yaml"])
    )
    assert config.cache.service is None

    # Nothing secret in the ConfigMap, the status, the events or the operator's (debug) log.
    values = [*secret_values(data), rotated, base64.b64decode(rotated).decode()]
    events = core.list_namespaced_event(ns).items
    assert any(e.reason == "SecretNotFound" and "azure-openai" in e.message for e in events)
    visible = {
        "configmap": json.dumps(core.read_namespaced_config_map("research-o1pool-config", ns).data),
        "status": json.dumps(pool["status"]),
        "annotations": json.dumps(pool["metadata"].get("annotations", {})),
        "events": json.dumps([(e.reason, e.message) for e in events]),
        "operator log": operator.output(),
    }
    leaks = [(where, v[:12]) for where, text in visible.items() for v in values if v in text]
    assert leaks == []

    # Deleting the pool: the garbage collector removes what it owns. It learns about a new CRD on its
    # 30 s discovery resync, so a CRD installed moments ago can take up to ~40 s here.
    kube.kubectl("delete", "o1pool", "research", "-n", ns, "--wait=true", "--timeout=30s")
    wait_for(
        "garbage collection",
        lambda: (
            read_optional(lambda: core.read_namespaced_config_map("research-o1pool-config", ns)) is None
            and read_optional(lambda: core.read_namespaced_secret("research-o1pool-keys", ns)) is None
        ),
        timeout=GC_WAIT,
    )


def test_missing_secret_then_created(
    kube: Kube, operator: Operator, api: client.ApiClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    kube.kubectl("apply", "-n", ns, "-f", str(BASIC))
    pool = wait_for(
        "Ready False",
        lambda: (p := get_pool(api, ns, "basic")) and condition(p, "Ready").get("status") == "False" and p,
        operator,
    )
    ready, keys = condition(pool, "Ready"), condition(pool, "KeysReady")
    assert ready["reason"] == "NoUsableKeys" and "'openai-keys'" in ready["message"]
    assert (keys["status"], keys["reason"]) == ("False", "SecretNotFound")
    assert condition(pool, "ConfigRendered")["status"] == "False"
    assert kube.kubectl("get", "configmap", "basic-o1pool-config", "-n", ns, check=False).returncode != 0

    create_secrets(api, ns, fake_secrets(pool["spec"]))
    pool = wait_for(
        "Ready True after the Secret appears",
        lambda: (p := get_pool(api, ns, "basic")) and condition(p, "Ready").get("status") == "True" and p,
        operator,
    )
    assert condition(pool, "KeysReady")["status"] == "True"
    user_secret = client.CoreV1Api(api).read_namespaced_secret("openai-keys", ns).metadata
    assert not user_secret.annotations and not user_secret.finalizers, (
        "the operator must not touch user Secrets"
    )
    assert all(f.manager != "o1pool-operator" for f in user_secret.managed_fields or [])
    printed = kube.kubectl("get", "o1pools", "-n", ns).stdout
    header, row = printed.splitlines()[:2]
    assert header.split()[:4] == ["NAME", "READY", "REASON", "ACCOUNTS"]
    assert row.split()[:4] == ["basic", "True", "Serving", "1"]
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.liveness_port}/healthz", timeout=5) as probe:
        assert probe.status == 200


def test_a_gateway_gets_its_deployment_service_and_config_map_and_turning_it_off_removes_them(
    kube: Kube, operator: Operator, api: client.ApiClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    pool = yaml.safe_load(GATEWAY.read_text())
    data = fake_secrets(pool["spec"])
    partner = data.pop("partner-key")  # (created later: first the gateway runs without it)
    create_secrets(api, ns, data)
    kube.kubectl("apply", "-n", ns, "-f", str(GATEWAY))

    def gateway_condition(reason: str) -> Callable[[], dict[str, Any] | None]:
        def probe() -> dict[str, Any] | None:
            found = get_pool(api, ns, "shared")
            return found if condition(found, "GatewayRendered").get("reason") == reason else None

        return probe

    found = wait_for("the gateway without partner-key", gateway_condition("DegradedVirtualKeys"), operator)
    ready = condition(found, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "DegradedVirtualKeys")
    assert "Secret 'partner-key' not found (client partner, virtual key current)" in ready["message"]
    assert found["status"]["gateway"] == "shared-gateway"
    uid = found["metadata"]["uid"]

    deployment = apps.read_namespaced_deployment("shared-gateway", ns)
    service = core.read_namespaced_service("shared-gateway", ns)
    config_map = core.read_namespaced_config_map("shared-gateway-config", ns)
    for made in (deployment, service, config_map):
        [owner] = made.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid, owner.controller) == ("O1Pool", "shared", uid, True)
    assert deployment.spec.replicas == 2
    template = deployment.spec.template
    [container] = template.spec.containers
    assert container.image == operator_cli.DEFAULT_SIDECAR_IMAGE
    assert container.readiness_probe.http_get.path == "/readyz"
    [projected] = [v.projected for v in template.spec.volumes if v.name == "virtual-keys"]
    assert [s.secret.name for s in projected.sources] == ["batch-key"]  # never a Secret that is not there
    [tls] = [v.secret for v in template.spec.volumes if v.name == "tls"]
    assert tls.secret_name == "shared-gateway-tls"
    assert [(p.name, p.port, p.target_port) for p in service.spec.ports] == [("https", 8443, "https")]
    assert service.spec.type == "ClusterIP"
    assert service.spec.selector == {"app.kubernetes.io/component": "gateway", "o1pool.io/pool": "shared"}
    config = SidecarConfig.from_dict(yaml.safe_load(config_map.data["config.yaml"]))
    assert config.gateway.enabled and (config.listen.host, config.listen.port) == ("0.0.0.0", 8443)
    assert {c.name: [str(k.file) for k in c.virtual_keys] for c in config.clients} == {
        "batch": ["/etc/o1pool/virtual-keys/batch.main"],  # (partner's Secret is missing: no caller yet)
    }
    # The sidecars' own config names no virtual key and is no gateway's.
    sidecars = SidecarConfig.from_dict(
        yaml.safe_load(core.read_namespaced_config_map("shared-o1pool-config", ns).data["config.yaml"])
    )
    assert not sidecars.gateway.enabled and not any(c.virtual_keys for c in sidecars.clients)
    assert sidecars.listen.host == "127.0.0.1"

    # The missing Secret appears: the gateway is rendered with it, and its pods roll (a new hash).
    first_hash = template.metadata.annotations["o1pool.io/config-hash"]
    create_secrets(api, ns, {"partner-key": partner})
    wait_for("the gateway with every virtual key", gateway_condition("Rendered"), operator)

    def template_hash() -> str:
        made = apps.read_namespaced_deployment("shared-gateway", ns)
        return str(made.spec.template.metadata.annotations["o1pool.io/config-hash"])

    second_hash = wait_for("a new pod template", lambda: (h := template_hash()) != first_hash and h, operator)
    deployment = apps.read_namespaced_deployment("shared-gateway", ns)
    [projected] = [v.projected for v in deployment.spec.template.spec.volumes if v.name == "virtual-keys"]
    assert [s.secret.name for s in projected.sources] == ["batch-key", "partner-key"]
    # A rotated virtual key rolls the gateway too (it reads its keys at start).
    rotated = b64("sha256:" + "ab" * 32)
    core.patch_namespaced_secret("batch-key", ns, {"data": {"key": rotated}})
    wait_for("the pod template after a rotation", lambda: template_hash() not in (first_hash, second_hash))

    # Nothing secret in the ConfigMaps, the Deployment, the status, the events or the operator's log.
    values = [*secret_values({**data, "partner-key": partner}), rotated, base64.b64decode(rotated).decode()]
    events = core.list_namespaced_event(ns).items
    assert any(e.reason == "DegradedVirtualKeys" and "partner-key" in e.message for e in events)
    visible = {
        "gateway configmap": json.dumps(core.read_namespaced_config_map("shared-gateway-config", ns).data),
        "configmap": json.dumps(core.read_namespaced_config_map("shared-o1pool-config", ns).data),
        "deployment": json.dumps(
            api.sanitize_for_serialization(apps.read_namespaced_deployment("shared-gateway", ns))
        ),
        "status": json.dumps(get_pool(api, ns, "shared")["status"]),
        "events": json.dumps([(e.reason, e.message) for e in events]),
        "operator log": operator.output(),
    }
    leaks = [(where, v[:12]) for where, text in visible.items() for v in values if v in text]
    assert leaks == []

    # Turned off (virtual keys go with it: the API server requires both): the three objects go.
    pool["spec"]["gateway"]["enabled"] = False
    pool["spec"]["clients"] = [c for c in pool["spec"]["clients"] if "match" in c]  # (gateway-only ones go)
    for entry in pool["spec"]["clients"]:
        del entry["virtualKeys"]
    kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(pool))

    def gone() -> bool:
        status = get_pool(api, ns, "shared").get("status", {})
        return (
            "gateway" not in status
            and not condition(get_pool(api, ns, "shared"), "GatewayRendered")
            and read_optional(lambda: apps.read_namespaced_deployment("shared-gateway", ns)) is None
            and read_optional(lambda: core.read_namespaced_service("shared-gateway", ns)) is None
            and read_optional(lambda: core.read_namespaced_config_map("shared-gateway-config", ns)) is None
        )

    wait_for("the gateway removed", gone, operator)
    assert condition(get_pool(api, ns, "shared"), "Ready")["reason"] == "Serving"
    after = yaml.safe_load(core.read_namespaced_config_map("shared-o1pool-config", ns).data["config.yaml"])
    assert SidecarConfig.from_dict(after) == sidecars  # the sidecars' config never changed


def test_namespaced_install_needs_no_cluster_wide_rights(
    kube: Kube, chart: Chart, api: client.ApiClient, kube_namespace: str, tmp_path: Path
) -> None:
    """watchNamespaces=[NS]: a Role in NS only; the operator still serves NS (the CRD came with ``chart``)."""
    ns, release = kube_namespace, "scoped"
    kube.helm(
        "install",
        release,
        str(CHART),
        "--namespace",
        chart.namespace,
        "--wait=false",
        "--set",
        "webhook.enabled=false",
        "--set",
        f"watchNamespaces[0]={ns}",
        "--skip-crds",
    )
    try:
        kubeconfig = kube.service_account_kubeconfig(
            chart.namespace, f"{release}-o1pool", path=tmp_path / "scoped.kubeconfig"
        )
        other = kube.kubectl(
            "auth", "can-i", "list", "secrets", "-n", chart.namespace, kubeconfig=kubeconfig, check=False
        )
        assert other.stdout.strip() == "no"
        running = start_operator(kube, kubeconfig, ns, tmp_path / "operator.log")
        try:
            pool = yaml.safe_load(BASIC.read_text())
            create_secrets(api, ns, fake_secrets(pool["spec"]))
            kube.kubectl("apply", "-n", ns, "-f", str(BASIC))
            wait_for(
                "pool Ready",
                lambda: condition(get_pool(api, ns, "basic"), "Ready").get("status") == "True",
                running,
            )
        finally:
            stop_operator(running)
    finally:
        kube.helm("uninstall", release, "--namespace", chart.namespace, check=False)


def test_webhook_injects_the_sidecar(
    kube: Kube, chart: Chart, api: client.ApiClient, kube_namespace: str, tmp_path: Path
) -> None:
    ns = kube_namespace
    pki = generate_pki(tmp_path / "pki")  # its serving certificate is valid for 127.0.0.1
    port, metrics_port = free_port(), free_port()
    running = start_operator(
        kube,
        chart.sa_kubeconfig,
        ns,
        tmp_path / "operator.log",
        f"--metrics-port={metrics_port}",
        f"--webhook-port={port}",
        f"--webhook-cert={pki.apiserver_serving.cert}",
        f"--webhook-key={pki.apiserver_serving.key}",
        "--sidecar-image=registry.example/o1pool-sidecar:test",
    )
    webhook_name = f"o1pool-test-{ns}"
    try:
        pool = yaml.safe_load(BASIC.read_text())
        create_secrets(api, ns, fake_secrets(pool["spec"]))
        kube.kubectl("apply", "-n", ns, "-f", str(BASIC))
        pool = wait_for(
            "pool Ready",
            lambda: (p := get_pool(api, ns, "basic")) and condition(p, "Ready").get("status") == "True" and p,
            running,
        )

        # The chart's own webhook configuration, pointed at the local operator and this namespace.
        rendered = kube.helm(
            "template", RELEASE, str(CHART), "--namespace", chart.namespace, "--kube-version", "1.36.0"
        ).stdout
        [config] = [
            d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "MutatingWebhookConfiguration"
        ]
        config["metadata"]["name"] = webhook_name
        [hook] = config["webhooks"]
        hook["clientConfig"] = {
            "url": f"https://127.0.0.1:{port}/inject-sidecar",
            "caBundle": base64.b64encode(pki.ca.cert.read_bytes()).decode(),
        }
        hook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": ns}}
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(config))
        wait_for("webhook server", lambda: port_open(port), running)

        def pod(name: str, annotations: dict[str, str]) -> str:
            return yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name, "annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
                }
            )

        # The webhook configuration may take a moment to reach the API server's admission chain.
        def injected() -> dict[str, Any] | None:
            kube.kubectl("apply", "-n", ns, "-f", "-", input=pod("agent", {"o1pool.io/inject": "basic"}))
            obj = client.CoreV1Api(api).read_namespaced_pod("agent", ns).to_dict()
            if obj["spec"].get("init_containers"):
                return obj
            kube.kubectl("delete", "pod", "agent", "-n", ns, "--wait=false")
            return None

        obj = wait_for("an injected pod", injected, running)
        [sidecar] = obj["spec"]["init_containers"]
        assert (sidecar["name"], sidecar["image"]) == (
            "o1pool-sidecar",
            "registry.example/o1pool-sidecar:test",
        )
        assert sidecar["restart_policy"] == "Always"
        # Who it serves: a bare pod has no controller, so its service account (the API server's default).
        identity = {e["name"]: e for e in sidecar["env"]}
        assert identity["O1POOL_WORKLOAD"]["value"] == "ServiceAccount/default"
        assert identity["O1POOL_POD"]["value_from"]["field_ref"]["field_path"] == "metadata.name"
        assert identity["O1POOL_NAMESPACE"]["value_from"]["field_ref"]["field_path"] == "metadata.namespace"
        [app] = obj["spec"]["containers"]
        assert {e["name"]: e["value"] for e in app["env"]} == {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"}
        volumes = {v["name"]: v for v in obj["spec"]["volumes"]}
        assert volumes["o1pool-keys"]["secret"]["secret_name"] == "basic-o1pool-keys"
        assert obj["metadata"]["annotations"]["o1pool.io/config-hash"] == pool["status"]["configHash"]

        kube.kubectl("apply", "-n", ns, "-f", "-", input=pod("plain", {}))
        plain = client.CoreV1Api(api).read_namespaced_pod("plain", ns).to_dict()
        assert not plain["spec"].get("init_containers") and not plain["spec"]["containers"][0].get("env")

        missing = kube.kubectl(
            "apply", "-n", ns, "-f", "-", input=pod("lost", {"o1pool.io/inject": "nope"}), check=False
        )
        assert missing.returncode != 0 and "no O1Pool 'nope'" in missing.stderr

        # What the operator did, in its own metrics: the pool's reconciliations, facts and admissions.
        def operator_metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }

        scraped = operator_metrics()
        assert scraped[("o1_operator_webhook_admissions_total", (("result", "injected"),))] == 1
        assert scraped[("o1_operator_webhook_admissions_total", (("result", "refused"),))] == 1
        assert scraped[("o1_operator_reconciles_total", (("result", "rendered"),))] >= 1
        basic = (("namespace", ns), ("pool", "basic"))
        reason = condition(pool, "Ready")["reason"]
        ready = (
            "o1_operator_pool_condition",
            (*basic, ("reason", reason), ("status", "True"), ("type", "Ready")),
        )
        assert scraped[ready] == 1
        usable, referenced = map(int, pool["status"]["keys"].split("/"))
        assert scraped[("o1_operator_pool_keys", (*basic, ("state", "ready")))] == usable
        assert scraped[("o1_operator_pool_keys", (*basic, ("state", "referenced")))] == referenced
        kube.kubectl("delete", "o1pool", "basic", "-n", ns)
        wait_for(
            "the deleted pool's series gone",
            lambda: not [k for k in operator_metrics() if ("pool", "basic") in k[1]],
            running,
        )
    finally:
        kube.kubectl(
            "delete", "mutatingwebhookconfiguration", webhook_name, "--ignore-not-found", check=False
        )
        stop_operator(running)


@pytest.fixture
def observing_operator(kube: Kube, chart: Chart, kube_namespace: str, tmp_path: Path) -> Iterator[Operator]:
    """The operator, reading each pool's Redis every 0.3 s (live sidecars, refused keys, outages)."""
    running = start_operator(
        kube, chart.sa_kubeconfig, kube_namespace, tmp_path / "operator.log", "--sidecar-count-interval=0.3"
    )
    yield running
    stop_operator(running)


def apply_basic_pool_on(
    kube: Kube, api: client.ApiClient, ns: str, redis_url: str
) -> dict[str, dict[str, str]]:
    """examples/o1pool-basic.yaml with its Redis at ``redis_url`` (key prefix ``t``) and fake keys;
    returns the Secrets' data."""
    pool = yaml.safe_load(BASIC.read_text())
    pool["spec"]["redis"] = {"url": redis_url, "keyPrefix": "t"}
    data = fake_secrets(pool["spec"])
    create_secrets(api, ns, data)
    kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(pool))
    return data


def test_live_sidecars_are_counted_from_redis_heartbeats(
    kube: Kube,
    observing_operator: Operator,
    api: client.ApiClient,
    kube_namespace: str,
    redis_server: RedisServer,
) -> None:
    ns, running = kube_namespace, observing_operator
    apply_basic_pool_on(kube, api, ns, redis_server.url)

    heartbeats = f"{{t:{ns}/basic}}:sidecars"  # as the sidecars write it (o1sidecar.limits.keys)
    redis = Redis.from_url(redis_server.url)

    def live_after_beats(live: list[str], count: int) -> Callable[[], bool]:
        """Heartbeats (on Redis time) from ``live`` and one long-dead sidecar, then check the count."""

        def probe() -> bool:
            seconds, micros = redis.time()
            now = seconds + micros / 1e6
            redis.zadd(heartbeats, {**dict.fromkeys(live, now), "gone": now - 60})
            return get_pool(api, ns, "basic").get("status", {}).get("liveSidecars") == count

        return probe

    try:
        wait_for("liveSidecars 2", live_after_beats(["sidecar-a", "sidecar-b"], 2), running)
        wait_for("liveSidecars 3", live_after_beats(["sidecar-a", "sidecar-b", "sidecar-c"], 3), running)
    finally:
        redis.close()
    row = kube.kubectl("get", "o1pool", "basic", "-n", ns, "--no-headers").stdout.split()
    assert row[:5] == ["basic", "True", "Serving", "1", "3"]

    # What the sidecars record of their upstream calls (demand.py) becomes the -o wide columns.
    pool = load_example(BASIC, ns)
    pool["spec"]["redis"] = {"url": redis_server.url, "keyPrefix": "t"}
    probe = get_sidecar_probe(render(pool, fake_secrets(pool["spec"])))
    assert probe is not None
    rpm = dict(probe.rpm)["o1"]
    asyncio.run(record_calls(redis_server.url, PoolKeys("t", ns, "basic"), ((1, 30, 2), (2, 20, 1))))
    expected = f"{50 / USAGE_MINUTES / rpm:.0%}"
    # (recorded 1 and 2 minutes back: both stay in the 5-minute window for 3 minutes)

    def wide() -> bool:
        return get_pool(api, ns, "basic").get("status", {}).get("usage", {}).get("upstream429s") == 3

    wait_for("status.usage", wide, running)
    header, row = kube.kubectl("get", "o1pool", "basic", "-n", ns, "-o", "wide").stdout.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]  # (a column may be empty: LOAD)
    columns = {
        header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)
    }
    assert (columns["RPM USE"], columns["429S 5M"], columns["SIDECARS"]) == (expected, "3", "3")


async def record_calls(url: str, keys: PoolKeys, minutes: tuple[tuple[int, int, int], ...]) -> None:
    """Upstream calls and 429s of requests that arrived ``ago`` minutes back, as a sidecar records them."""
    client = AsyncRedis.from_url(url, decode_responses=True)
    seconds, _ = await client.time()
    counts = DemandCounts()
    for ago, calls, rate_limited in minutes:
        arrived = (seconds // 60 - ago) * 60 + 1
        counts.called("o1", calls, rate_limited, arrived)
    await DemandRecorder(client, keys, counts, ["o1"]).flush()
    await client.aclose()


def test_clients_spend_reaches_the_status_and_the_operators_metrics(
    kube: Kube,
    chart: Chart,
    api: client.ApiClient,
    kube_namespace: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """What the sidecars' own ledger records of each client (spend.py) becomes status.spend (kept by the
    CRD's status schema) and o1_operator_client_spend_usd; a client taken out of the spec leaves both."""
    ns, metrics_port = kube_namespace, free_port()
    running = start_operator(
        kube,
        chart.sa_kubeconfig,
        ns,
        tmp_path / "operator.log",
        "--sidecar-count-interval=0.3",
        f"--metrics-port={metrics_port}",
    )
    try:
        pool = yaml.safe_load(BASIC.read_text())
        pool["spec"] |= {"redis": {"url": redis_server.url, "keyPrefix": "t"}, "clients": CLIENTS}
        create_secrets(api, ns, fake_secrets(pool["spec"]))
        clear_of_the_hour_boundary(60)  # (and so of the day's)
        asyncio.run(
            record_spend(
                redis_server.url,
                PoolKeys("t", ns, "basic"),
                [("web", 0.02466, 1052), ("web", 1.5, 300), ("batch", 0.00012345, 12)],
            )
        )
        kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(pool))

        def spend() -> list[dict[str, Any]] | None:
            listed = get_pool(api, ns, "basic").get("status", {}).get("spend")
            return listed if listed and listed[0]["todayTokens"] else None

        assert wait_for("status.spend", spend, running) == [
            {
                "client": "web",
                "todayUsd": 1.5247,
                "monthUsd": 1.5247,
                "todayTokens": 1352,
                "monthTokens": 1352,
            },
            {"client": "batch", "todayUsd": 0.0001, "monthUsd": 0.0001, "todayTokens": 12, "monthTokens": 12},
            {"client": "everyone-else", "todayUsd": 0, "monthUsd": 0, "todayTokens": 0, "monthTokens": 0},
        ]

        def spend_series() -> dict[tuple[str, str], float]:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            return {
                (s.labels["client"], s.labels["period"]): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "o1_operator_client_spend_usd" and s.labels["pool"] == "basic"
            }

        series = spend_series()
        assert series[("web", "day")] == series[("web", "month")] == 1.52466
        assert series[("batch", "month")] == 0.000123 and series[("everyone-else", "day")] == 0

        pool["spec"]["clients"] = CLIENTS[:1]
        kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(pool))
        wait_for(
            "status.spend without batch",
            lambda: [e["client"] for e in get_pool(api, ns, "basic")["status"].get("spend") or []] == ["web"],
            running,
        )
        wait_for("batch's series gone", lambda: {client for client, _ in spend_series()} == {"web"}, running)
        del pool["spec"]["clients"]
        kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(pool))
        wait_for("status.spend gone", lambda: "spend" not in get_pool(api, ns, "basic")["status"], running)
        wait_for("the spend series gone", lambda: spend_series() == {}, running)
    finally:
        stop_operator(running)


async def record_spend(url: str, keys: PoolKeys, spent: list[tuple[str, float, int]]) -> None:
    """Each (client, dollars, tokens) spent now, as a sidecar's ledger and recorder write it."""
    client = AsyncRedis.from_url(url, decode_responses=True)
    ledger = SpendLedger()
    for name, usd, tokens in spent:
        ledger.add(name, usd, tokens)
    await SpendRecorder(client, keys, ledger, sorted({name for name, _, _ in spent})).flush()
    await client.aclose()


def test_refused_keys_and_model_outages_are_reported_and_a_rotation_lifts_a_key(
    kube: Kube,
    observing_operator: Operator,
    api: client.ApiClient,
    kube_namespace: str,
    redis_server: RedisServer,
) -> None:
    """A sidecar records a refusal in the pool's Redis (its own code, quarantine.py); the operator
    reports it in status.refusedKeys, KeysReady and an event, and drops it when the key's Secret
    value changes. A model outage a sidecar publishes (outage_sync.py) makes ModelsAvailable False."""
    ns, running = kube_namespace, observing_operator
    data = apply_basic_pool_on(kube, api, ns, redis_server.url)
    wait_for(
        "pool Ready",
        lambda: condition(get_pool(api, ns, "basic"), "Ready").get("status") == "True",
        running,
    )

    value = base64.b64decode(data["openai-keys"]["primary"]).decode()
    asyncio.run(refuse_key(redis_server.url, PoolKeys("t", ns, "basic"), "main", "primary", value))

    def refused() -> dict[str, Any] | None:
        status = get_pool(api, ns, "basic").get("status", {})
        keys = condition({"status": status}, "KeysReady")
        return status if keys.get("reason") == "KeysRefused" and status.get("refusedKeys") else None

    status = wait_for("KeysReady False: KeysRefused", refused, running)
    assert [(k["key"], k["refusals"]) for k in status["refusedKeys"]] == [("main/primary", 1)]
    assert (
        "key main/primary refused by the upstream since"
        in condition({"status": status}, "KeysReady")["message"]
    )
    assert condition({"status": status}, "Ready")["reason"] == "DegradedKeys"

    def event() -> bool:
        out = kube.kubectl(
            "get", "events", "-n", ns, "--field-selector", "involvedObject.name=basic", "-o", "json"
        )
        return any(
            e["reason"] == "KeysRefused" and "main/primary" in e["message"]
            for e in json.loads(out.stdout)["items"]
        )

    wait_for("a KeysRefused event", event, running)

    asyncio.run(model_down(redis_server.url, PoolKeys("t", ns, "basic"), "o1"))

    def models_down() -> dict[str, Any] | None:
        models = condition(get_pool(api, ns, "basic"), "ModelsAvailable")
        return models if models.get("reason") == "ModelsDown" else None

    models = wait_for("ModelsAvailable False: ModelsDown", models_down, running)
    assert models["status"] == "False" and "o1 failing on every account since" in models["message"]
    assert value not in kube.kubectl("get", "events", "-n", ns, "-o", "yaml").stdout

    client.CoreV1Api(api).patch_namespaced_secret(
        "openai-keys", ns, {"data": {"primary": b64("sk-fake-rotated-after-refusal")}}
    )

    def lifted() -> bool:
        status = get_pool(api, ns, "basic").get("status", {})
        return (
            condition({"status": status}, "KeysReady").get("status") == "True"
            and status.get("refusedKeys") == []
        )

    wait_for("the rotation lifts the quarantine", lifted, running)
    redis = Redis.from_url(redis_server.url)
    try:
        assert redis.hgetall(PoolKeys("t", ns, "basic").refused_keys()) == {}
    finally:
        redis.close()


async def model_down(url: str, keys: PoolKeys, model: str) -> None:
    """What a sidecar publishes when ``model`` fails on every account (outage_sync.py)."""
    outages = ModelOutages(3, 30.0)
    sync = SharedOutages(AsyncRedis.from_url(url, decode_responses=True), keys, outages, [model])
    try:
        now = outages.now()
        await sync.publish(model, ModelState("down", since=now, probe_at=now + 30), now)
    finally:
        await sync.close()


async def refuse_key(url: str, keys: PoolKeys, account: str, name: str, value: str) -> None:
    """What a sidecar does when the upstream refuses its key ``account/name`` holding ``value``."""
    spec = {
        "name": account,
        "base_url": "http://127.0.0.1:1",
        "tier": 5,
        "keys": [{"name": name, "env": "X"}],
    }
    route = AccountRoute(Account.model_validate(spec), [UpstreamKey(account, name, value)])
    shared = SharedQuarantine(AsyncRedis.from_url(url, decode_responses=True), keys, {account: route})
    try:
        await shared.refused(route, route.keys[0])
    finally:
        await shared.close()


def test_webhook_certificate_survives_helm_upgrade(
    kube: Kube, chart: Chart, api: client.ApiClient, kube_namespace: str
) -> None:
    """helm generates the webhook's CA and certificate on install and must reuse them on upgrade."""
    release, ns = "certs", chart.namespace
    scope = ["--set", f"watchNamespaces[0]={kube_namespace}", "--skip-crds"]
    kube.helm("install", release, str(CHART), "--namespace", ns, "--wait=false", *scope)
    try:

        def tls() -> tuple[str, str]:
            secret = client.CoreV1Api(api).read_namespaced_secret(f"{release}-o1pool-webhook-tls", ns)
            config = client.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(
                f"{ns}-{release}-o1pool"
            )
            assert secret.data["ca.crt"] == config.webhooks[0].client_config.ca_bundle
            return secret.data["ca.crt"], secret.data["tls.crt"]

        before = tls()
        kube.helm("upgrade", release, str(CHART), "--namespace", ns, "--wait=false", *scope)
        assert tls() == before
    finally:
        kube.helm("uninstall", release, "--namespace", ns, check=False)


def test_restarted_operator_catches_up_on_changes_made_while_down(
    kube: Kube, chart: Chart, api: client.ApiClient, kube_namespace: str, tmp_path: Path
) -> None:
    ns = kube_namespace
    spec = yaml.safe_load(BASIC.read_text())["spec"]
    create_secrets(api, ns, fake_secrets(spec))
    kube.kubectl("apply", "-n", ns, "-f", str(BASIC))
    first = start_operator(kube, chart.sa_kubeconfig, ns, tmp_path / "first.log")
    try:
        pool = wait_for(
            "first render",
            lambda: (p := get_pool(api, ns, "basic")).get("status", {}).get("configHash") and p,
            first,
        )
    finally:
        stop_operator(first)
    rotated = b64("sk-fake-rotated-while-down")
    client.CoreV1Api(api).patch_namespaced_secret("openai-keys", ns, {"data": {"primary": rotated}})
    second = start_operator(kube, chart.sa_kubeconfig, ns, tmp_path / "second.log")
    try:
        wait_for(
            "re-render on resume",
            lambda: get_pool(api, ns, "basic")["status"]["configHash"] != pool["status"]["configHash"],
            second,
        )
        keys = client.CoreV1Api(api).read_namespaced_secret("basic-o1pool-keys", ns)
        assert keys.data["main.primary"] == rotated
    finally:
        stop_operator(second)


def test_resync_restores_an_owned_config_map_deleted_by_hand(
    kube: Kube,
    chart: Chart,
    api: client.ApiClient,
    kube_namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("O1POOL_RESYNC_SECONDS", "2")
    running = start_operator(kube, chart.sa_kubeconfig, kube_namespace, tmp_path / "operator.log")
    try:
        ns = kube_namespace
        create_secrets(api, ns, fake_secrets(yaml.safe_load(BASIC.read_text())["spec"]))
        kube.kubectl("apply", "-n", ns, "-f", str(BASIC))
        core = client.CoreV1Api(api)

        def config_map() -> Any:
            return read_optional(lambda: core.read_namespaced_config_map("basic-o1pool-config", ns))

        first = wait_for("the ConfigMap", config_map, running)
        kube.kubectl("delete", "configmap", "basic-o1pool-config", "-n", ns)
        restored = wait_for(
            "the ConfigMap restored by the resync timer",
            lambda: (cm := config_map()) and cm.metadata.uid != first.metadata.uid and cm,
            running,
        )
        assert restored.data == first.data
    finally:
        stop_operator(running)


def test_pools_carry_no_finalizer_and_delete_with_the_operator_stopped(
    kube: Kube, chart: Chart, api: client.ApiClient, kube_namespace: str, tmp_path: Path
) -> None:
    """Nothing waits for the operator to delete a pool; the finalizer an earlier release's resync timer
    put on every pool is removed when the operator resumes it."""
    ns = kube_namespace
    create_secrets(api, ns, fake_secrets(yaml.safe_load(BASIC.read_text())["spec"]))
    kube.kubectl("apply", "-n", ns, "-f", str(BASIC))
    custom = client.CustomObjectsApi(api)
    custom.patch_namespaced_custom_object(
        "o1pool.io", "v1alpha1", ns, "o1pools", "basic", {"metadata": {"finalizers": ["o1pool.io/finalizer"]}}
    )  # as the previous release left it
    running = start_operator(
        kube, chart.sa_kubeconfig, ns, tmp_path / "operator.log", "--sidecar-count-interval=0.3"
    )
    try:
        wait_for(
            "the pool rendered",
            lambda: get_pool(api, ns, "basic").get("status", {}).get("configHash"),
            running,
        )
        wait_for(
            "the old finalizer removed",
            lambda: not get_pool(api, ns, "basic")["metadata"].get("finalizers"),
            running,
        )
    finally:
        stop_operator(running)
    kube.kubectl("delete", "o1pool", "basic", "-n", ns, "--timeout=10s")  # the operator is stopped
    gone = kube.kubectl("get", "o1pool", "basic", "-n", ns, "--ignore-not-found", "-o", "name")
    assert gone.stdout.strip() == ""


@pytest.fixture
def forecasting_operator(kube: Kube, chart: Chart, kube_namespace: str, tmp_path: Path) -> Iterator[Operator]:
    """The operator, reading each pool's recorded demand every 0.5 s."""
    log = tmp_path / "operator.log"
    running = start_operator(
        kube,
        chart.sa_kubeconfig,
        kube_namespace,
        log,
        "--sidecar-count-interval=0.5",
        "--forecast-interval=0.5",
    )
    yield running
    stop_operator(running)


def test_recorded_demand_becomes_the_pools_prediction(
    kube: Kube,
    forecasting_operator: Operator,
    api: client.ApiClient,
    kube_namespace: str,
    redis_server: RedisServer,
) -> None:
    """Too little recorded demand: the Forecasting condition says so and nothing is published; four
    weeks of it (written by the sidecars' own recorder): a prediction in the status, a printer column,
    Forecasting True."""
    ns, running = kube_namespace, forecasting_operator
    apply_basic_pool_on(kube, api, ns, redis_server.url)
    keys = PoolKeys("t", ns, "basic")
    models = ["o1", "o1-mini", "o1-preview"]  # what a tier-5 account serves
    this_hour = int(time.time() // 3600) * 3600
    start, weeks = this_hour - 28 * 86_400, 28 * 24  # four weeks up to the hour under way
    asyncio.run(record_weeks(redis_server.url, keys, models, range(weeks - 10, weeks), start))
    wait_for(
        "Forecasting InsufficientHistory",
        lambda: condition(get_pool(api, ns, "basic"), "Forecasting").get("reason") == "InsufficientHistory",
        running,
    )
    pool = get_pool(api, ns, "basic")
    assert "10 hours of demand recorded" in condition(pool, "Forecasting")["message"]
    assert condition(pool, "Forecasting")["status"] == "Unknown" and not pool["status"].get("prediction")
    redis = Redis.from_url(redis_server.url)
    assert redis.get(keys.prediction()) is None  # nothing for the sidecars either

    asyncio.run(record_weeks(redis_server.url, keys, models, range(weeks - 10), start))
    wait_for(
        "Forecasting True",
        lambda: condition(get_pool(api, ns, "basic"), "Forecasting").get("status") == "True",
        running,
    )
    prediction = get_pool(api, ns, "basic")["status"]["prediction"]
    assert prediction["tokensPerHour"] == pytest.approx(60 * weekly_tokens(weeks), rel=0.05)
    assert [m["model"] for m in prediction["models"]] == models
    assert [m["tokensPerHour"] for m in prediction["models"][1:]] == [0, 0]  # counted, never asked
    upper = prediction["upperTokensPerHour"]
    load = "high" if upper > 100_000 else "medium" if upper > 50_000 else "low"
    assert prediction["load"] == load
    sidecars_see = json.loads(redis.get(keys.prediction()) or "{}")  # what o1sidecar.prediction reads
    assert sidecars_see["load"] == load and sidecars_see["hour"] == prediction["hour"]
    assert 0 < redis.ttl(keys.prediction()) <= 7200
    redis.close()
    columns = kube.kubectl("get", "o1pool", "basic", "-n", ns, "-o", "wide").stdout
    assert "LOAD" in columns and load in columns.splitlines()[1]
    # The next day: weekday hours at 120,000 tokens (and more, upper): a high peak the brief gives 5
    # keys, and the pool has 1 - a condition and a warning event.
    assert len(prediction["nextHours"]) == 24 and prediction["peak"]["load"] == "high"
    peak = condition(get_pool(api, ns, "basic"), "PeakCovered")
    assert (peak["status"], peak["reason"]) == ("False", "PeakNeedsMoreKeys")
    assert "needs about 5 keys' worth of quota, pool has 1 usable" in peak["message"]
    out = kube.kubectl(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.name=basic", "-o", "json"
    )
    assert any(e["reason"] == "PeakNeedsMoreKeys" for e in json.loads(out.stdout)["items"])


def deployment_yaml(name: str) -> str:
    """A Deployment of one replica whose pods never need to run (no node here)."""
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: app, image: example.invalid/{name}:1}}]}}
---
"""


WORKLOADS = (
    deployment_yaml("web")
    + deployment_yaml("worker")
    + """
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 10
  metrics:
    - type: Resource
      resource: {name: cpu, target: {type: Utilization, averageUtilization: 80}}
"""
)


def test_predicted_load_raises_the_replica_floor_of_the_pools_workloads(
    kube: Kube,
    forecasting_operator: Operator,
    api: client.ApiClient,
    kube_namespace: str,
    redis_server: RedisServer,
) -> None:
    """``scale``: ahead of a predicted busy hour the forecast floor becomes the HPA's minReplicas (and
    the controller-manager's HPA controller scales the Deployment to it) and the replicas of a
    Deployment without an HPA, with events and status.autoscaling; a lower floor brings the HPA down
    (never the other Deployment: the owner scales in); ``observe`` puts the HPA's own minReplicas back,
    changes nothing and says what it would do."""
    clear_of_the_hour_boundary()
    ns, running = kube_namespace, forecasting_operator
    apply_basic_pool_on(kube, api, ns, redis_server.url)
    kube.kubectl("apply", "-n", ns, "-f", "-", input=WORKLOADS)
    keys = PoolKeys("t", ns, "basic")
    now = time.time()
    this_hour = int(now // 3600) * 3600
    start = this_hour - 28 * 86_400
    # Four weeks in which the hour after this one (of the day) is busy: 1,000 tokens a minute (at 250 per
    # replica, 80% of it used: 5 replicas), every other hour 100 (1 replica).
    busy_next = lambda hour: 1000 if hour % 24 == 1 else 100  # noqa: E731
    asyncio.run(record_weeks(redis_server.url, keys, ["o1"], range(28 * 24), start, busy_next))
    targets = [
        {"name": "web", "tokensPerReplicaPerMinute": 250},
        {"name": "worker", "tokensPerReplicaPerMinute": 250},
    ]
    autoscaling = {"mode": "scale", "stabilizationSeconds": 0, "leadSeconds": 0, "targets": targets}

    def set_autoscaling() -> None:
        patch = json.dumps({"spec": {"autoscaling": autoscaling}})
        kube.kubectl("patch", "o1pool", "basic", "-n", ns, "--type=merge", "-p", patch)

    def report() -> dict[str, Any]:  # (the pool was just applied: the operator may not have a status yet)
        return dict((get_pool(api, ns, "basic").get("status") or {}).get("autoscaling") or {})

    def hour(at: float) -> str:
        return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:00:00Z")

    apps, hpas = client.AppsV1Api(api), client.AutoscalingV2Api(api)

    def replicas(name: str) -> int:
        return int(apps.read_namespaced_deployment(name, ns).spec.replicas)

    def hpa_min() -> int:
        return int(hpas.read_namespaced_horizontal_pod_autoscaler("web", ns).spec.min_replicas)

    set_autoscaling()
    wait_for(  # (a plan made before the forecast of the recorded weeks has no floor yet)
        "a plan with floors", lambda: all("floor" in t for t in report().get("targets") or [{}]), running
    )
    if now % 3600 < 55 * 60:  # (lead: a minute's start-up + the 0.5 s round; later it is the next hour)
        assert [(t["floor"], t["forHour"]) for t in report()["targets"]] == [(1, hour(now))] * 2
        assert hpa_min() == 1 and replicas("worker") == 1  # the quiet hour under way: nothing to raise
    autoscaling["leadSeconds"] = 3600  # the next hour's floor applies an hour (and a minute) ahead
    set_autoscaling()
    wait_for("the HPA raised to the floor", lambda: hpa_min() == 5, running)
    wait_for("the HPA controller scaling web to it", lambda: replicas("web") == 5, running)
    assert replicas("worker") == 5  # no HPA: its replicas, by the operator
    note = hpas.read_namespaced_horizontal_pod_autoscaler("web", ns).metadata.annotations[
        "o1pool.io/replica-floor"
    ]
    assert json.loads(note) == {"pool": "basic", "minReplicas": 1, "floor": 5}
    wait_for("status.autoscaling", lambda: report()["targets"][0].get("floor") == 5, running)
    assert [(t["via"], t["floor"], t["replicas"], t["forHour"]) for t in report()["targets"]] == [
        ("HorizontalPodAutoscaler/web", 5, 5, hour(now + 3600)),
        ("Deployment/worker", 5, 5, hour(now + 3600)),
    ]

    def events() -> list[tuple[str, str]]:
        out = kube.kubectl(
            "get", "events", "-n", ns, "--field-selector", "involvedObject.name=basic", "-o", "json"
        )
        return [(e["reason"], e["message"]) for e in json.loads(out.stdout)["items"]]

    raised = [m for r, m in events() if r == "FloorRaised"]
    assert f"set HorizontalPodAutoscaler/web minReplicas 1 -> 5 for {hour(now + 3600)}" in raised
    assert f"set Deployment/worker replicas 1 -> 5 for {hour(now + 3600)}" in raised

    # Each replica now keeps up with 4x as much: the floor is 2, and web's HPA comes down to it.
    for t in targets:
        t["tokensPerReplicaPerMinute"] = 1000
    set_autoscaling()
    wait_for("the HPA down to the lower floor", lambda: hpa_min() == 2, running)
    assert replicas("worker") == 5  # never lowered: the owner scales in

    # observe: the plan for 10 replicas is reported and told, nothing changes.
    for t in targets:
        t["tokensPerReplicaPerMinute"] = 125
    autoscaling["mode"] = "observe"
    set_autoscaling()
    wait_for(
        "an observe plan",
        lambda: any(r == "WouldFloorRaised" and "minReplicas 1 -> 10" in m for r, m in events()),
        running,
    )
    hpa = hpas.read_namespaced_horizontal_pod_autoscaler("web", ns)
    assert hpa.spec.min_replicas == 1 and "o1pool.io/replica-floor" not in (hpa.metadata.annotations or {})
    assert replicas("worker") == 5
    wait_for("the observe plan in the status", lambda: report().get("mode") == "observe", running)
    assert report()["targets"][0]["floor"] == 10
