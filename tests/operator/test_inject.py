"""Sidecar injection JSONPatch (pure), with golden files of the injected pods (regenerate: make golden)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from o1operator.inject import (
    SIDECAR_NAME,
    get_injection_patch,
    get_sidecar_container,
    refusal,
    workload_of,
)
from o1operator.render import KEY_MOUNT
from tests.operator.conftest import REPO, assert_golden, load_example

PODS = sorted((Path(__file__).parent / "pods").glob("*.yaml"))
POOLS = {
    "basic": REPO / "examples" / "o1pool-basic.yaml",
    "research": REPO / "examples" / "o1pool-multi-account.yaml",
}
IMAGE = "ghcr.io/o1pool/o1pool-sidecar:0.1.0"
HASH = "0123456789abcdef" * 4


def apply_patch(doc: Any, patch: list[dict[str, Any]]) -> Any:
    """RFC 6902 ``add`` (the only op the injector emits)."""
    doc = copy.deepcopy(doc)
    for op in patch:
        assert op["op"] == "add", op
        *parents, last = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
        target = doc
        for token in parents:
            target = target[int(token)] if isinstance(target, list) else target[token]
        if isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), op["value"])
        else:
            target[last] = op["value"]
    return doc


def inject(pod: dict[str, Any]) -> dict[str, Any]:
    pool = load_example(POOLS[pod["metadata"]["annotations"]["o1pool.io/inject"]])
    return apply_patch(pod, get_injection_patch(pod, pool, HASH, IMAGE))


@pytest.mark.parametrize("path", PODS, ids=lambda p: p.stem)
def test_golden_injected_pod(path: Path) -> None:
    pod = yaml.safe_load(path.read_text())
    injected = inject(pod)
    assert_golden(f"injected-{path.stem}.yaml", yaml.safe_dump(injected, sort_keys=False))
    assert get_injection_patch(injected, load_example(POOLS["basic"]), HASH, IMAGE) == [], "not idempotent"


def test_injection_wires_sidecar_volumes_env_and_hash() -> None:
    pod = yaml.safe_load((Path(__file__).parent / "pods" / "app-with-init-and-env.yaml").read_text())
    injected = inject(pod)
    spec = injected["spec"]
    sidecar = spec["initContainers"][0]
    assert (sidecar["name"], sidecar["restartPolicy"]) == (SIDECAR_NAME, "Always")
    assert spec["initContainers"][1]["name"] == "migrate"
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts[str(KEY_MOUNT)]]["secret"]["secretName"] == "research-o1pool-keys"
    assert volumes[mounts["/etc/o1pool/config"]]["configMap"]["name"] == "research-o1pool-config"
    assert "data" in volumes
    env = {c["name"]: {e["name"]: e["value"] for e in c.get("env", [])} for c in spec["containers"]}
    assert env["agent"]["OPENAI_BASE_URL"] == "http://127.0.0.1:8080/v1"
    assert env["custom-client"]["OPENAI_BASE_URL"] == "http://proxy.internal/v1"
    assert injected["metadata"]["annotations"]["o1pool.io/config-hash"] == HASH
    assert injected["metadata"]["annotations"]["team"] == "research"
    assert sidecar["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}
    names = [e["name"] for e in sidecar["env"]]
    assert names == ["O1POOL_NAMESPACE", "O1POOL_POD", "O1POOL_SERVICE_ACCOUNT", "O1POOL_WORKLOAD"], (
        "the sidecar's environment names the pod only: keys reach it as files"
    )


def test_the_sidecars_metrics_get_scrape_annotations_unless_the_pod_has_its_own() -> None:
    pod = yaml.safe_load((Path(__file__).parent / "pods" / "app-plain.yaml").read_text())
    pool = load_example(POOLS["basic"])
    pool["spec"]["injection"] = {**(pool["spec"].get("injection") or {}), "metricsPort": 9191}
    annotations = apply_patch(pod, get_injection_patch(pod, pool, HASH, IMAGE))["metadata"]["annotations"]
    scrape = {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")}
    assert scrape == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9191",
        "prometheus.io/path": "/metrics",
    }
    own = {"prometheus.io/scrape": "true", "prometheus.io/port": "8000"}  # the app's own metrics
    pod["metadata"]["annotations"] |= own
    annotations = apply_patch(pod, get_injection_patch(pod, pool, None, IMAGE))["metadata"]["annotations"]
    assert {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")} == own


def test_a_pod_is_refused_with_a_reason_for_a_bad_name_a_missing_or_an_unrendered_pool() -> None:
    rendered = {"status": {"configHash": "abc"}}
    assert refusal("basic", "team", rendered) is None
    assert "'' is not a resource name" in (refusal("", "team", None) or "")
    assert "'Basic!' is not a resource name" in (refusal("Basic!", "team", None) or "")
    assert "no O1Pool 'basic' in namespace team" in (refusal("basic", "team", None) or "")
    broken = {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "NoUsableKeys",
                    "message": "no account has a usable key",
                }
            ]
        }
    }
    why = refusal("basic", "team", broken) or ""
    assert "has not been rendered yet (NoUsableKeys: no account has a usable key)" in why
    assert "kubectl describe o1pool basic -n team" in why


def test_the_injected_sidecar_is_ready_checked_and_runs_under_the_restricted_profile() -> None:
    pool = yaml.safe_load((REPO / "examples" / "o1pool-basic.yaml").read_text())
    sidecar = get_sidecar_container(pool, "o1pool-sidecar:dev", "ServiceAccount/default")
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9090}
    assert sidecar["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_pools_log_level_reaches_the_sidecars_command_line() -> None:
    pool = yaml.safe_load((REPO / "examples" / "o1pool-basic.yaml").read_text())
    assert "--log-level" not in get_sidecar_container(pool, "o1pool-sidecar:dev", "Job/x")["args"]
    pool["spec"]["injection"] = {"logLevel": "DEBUG"}
    args = get_sidecar_container(pool, "o1pool-sidecar:dev", "Job/x")["args"]
    assert args[-2:] == ["--log-level", "DEBUG"]
    # The sidecar's own parser takes exactly these levels.
    from o1sidecar.cli import build_parser

    crd = yaml.safe_load((REPO / "crds" / "o1pool.io_o1pools.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    levels = spec["injection"]["properties"]["logLevel"]["enum"]
    for level in levels:
        assert build_parser().parse_args(["--config", "c.yaml", "--log-level", level]).log_level == level


def owned_pod(kind: str, name: str, labels: dict[str, str] | None = None, controller: bool = True) -> dict:
    owner = {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u-1", "controller": controller}
    return {"metadata": {"labels": labels or {}, "ownerReferences": [owner]}, "spec": {}}


@pytest.mark.parametrize(
    ("pod", "workload"),
    [
        (owned_pod("ReplicaSet", "web-7d9c8b6f5", {"pod-template-hash": "7d9c8b6f5"}), "Deployment/web"),
        (
            owned_pod("ReplicaSet", "api-v2-5b8f9c7d4", {"pod-template-hash": "5b8f9c7d4"}),
            "Deployment/api-v2",
        ),
        # A ReplicaSet of its own (no hash label, or a name the hash does not end): itself.
        (owned_pod("ReplicaSet", "frontend"), "ReplicaSet/frontend"),
        (owned_pod("ReplicaSet", "frontend", {"pod-template-hash": "abc12"}), "ReplicaSet/frontend"),
        (owned_pod("ReplicaSet", "abc12", {"pod-template-hash": "abc12"}), "ReplicaSet/abc12"),
        (owned_pod("StatefulSet", "db"), "StatefulSet/db"),
        (owned_pod("DaemonSet", "node-agent"), "DaemonSet/node-agent"),
        (owned_pod("Job", "nightly-29012345"), "Job/nightly-29012345"),
        (owned_pod("Rollout", "canary"), "Rollout/canary"),  # anything else: as it is
        # An owner that is not the controller does not count: the service account speaks for the pod.
        (owned_pod("StatefulSet", "db", controller=False), "ServiceAccount/default"),
        ({"metadata": {"name": "bare"}, "spec": {"serviceAccountName": "batch"}}, "ServiceAccount/batch"),
        ({"metadata": {"name": "bare"}, "spec": {}}, "ServiceAccount/default"),
        ({}, "ServiceAccount/default"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_workload_of_names_the_pods_controller(pod: dict[str, Any], workload: str) -> None:
    assert workload_of(pod) == workload


def test_the_controller_is_the_owner_marked_controller() -> None:
    pod = owned_pod("ConfigMap", "not-me", controller=False)
    pod["metadata"]["ownerReferences"].append(
        {"apiVersion": "batch/v1", "kind": "Job", "name": "import", "uid": "u-2", "controller": True}
    )
    assert workload_of(pod) == "Job/import"


def test_the_sidecar_is_told_its_pod_by_the_downward_api_and_its_workload_at_admission() -> None:
    """The pod's name may not exist yet at admission (generateName): name, namespace and service account
    come from the downward API; the workload is worked out from the owner the pod is created with."""
    pod = yaml.safe_load((Path(__file__).parent / "pods" / "app-from-deployment.yaml").read_text())
    assert "name" not in pod["metadata"]
    injected = inject(pod)
    [sidecar] = injected["spec"]["initContainers"]
    env = {e["name"]: e for e in sidecar["env"]}
    field_paths = {
        name: e["valueFrom"]["fieldRef"]["fieldPath"] for name, e in env.items() if "valueFrom" in e
    }
    assert field_paths == {
        "O1POOL_NAMESPACE": "metadata.namespace",
        "O1POOL_POD": "metadata.name",
        "O1POOL_SERVICE_ACCOUNT": "spec.serviceAccountName",
    }
    assert env["O1POOL_WORKLOAD"] == {"name": "O1POOL_WORKLOAD", "value": "Deployment/web"}
    [app] = injected["spec"]["containers"]
    assert not any(e["name"].startswith("O1POOL_") for e in app["env"]), "only the sidecar is told"
    plain = inject(yaml.safe_load((Path(__file__).parent / "pods" / "app-plain.yaml").read_text()))
    [sidecar] = plain["spec"]["initContainers"]
    assert {"name": "O1POOL_WORKLOAD", "value": "ServiceAccount/default"} in sidecar["env"]
