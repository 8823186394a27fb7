"""Smoke tests: the test ground is a real cluster API (GC, namespace deletion, RBAC, helm)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.kube import testground
from tests.kube.fixtures import Kube
from tests.kube.testground import BUILD_COMMAND, BUILD_SCRIPT, ControlPlaneNotBuilt, find_binaries
from tests.kube.testground import free_port as real_free_port
from tests.polling import eventually


def pinned_versions() -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "versions"], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def configmap_exists(kube: Kube, namespace: str, name: str) -> bool:
    result = kube.kubectl("get", "configmap", name, "-n", namespace, "-o", "name", check=False)
    if result.returncode != 0 and "NotFound" not in result.stderr:
        raise AssertionError(result.stderr)
    return result.returncode == 0


def test_missing_binaries_name_the_build_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("O1POOL_KUBE_BIN", str(tmp_path))
    (tmp_path / "etcd").write_text("#!/bin/sh\n")
    (tmp_path / "etcd").chmod(0o755)
    with pytest.raises(ControlPlaneNotBuilt) as missing:
        find_binaries()
    message = str(missing.value)
    assert BUILD_COMMAND in message
    assert "kube-apiserver" in message and "etcd," not in message


@pytest.mark.kube
def test_apiserver_is_ready_and_reports_the_pinned_version(kube: Kube) -> None:
    assert kube.kubectl("get", "--raw", "/readyz").stdout == "ok"
    version = json.loads(kube.kubectl("version", "-o", "json").stdout)
    expected = pinned_versions()["kubernetes"]
    assert version["serverVersion"]["gitVersion"] == expected
    assert version["clientVersion"]["gitVersion"] == expected
    assert kube.server.startswith("https://127.0.0.1:")


@pytest.mark.kube
def test_garbage_collector_deletes_dependents_of_a_deleted_owner(kube: Kube, kube_namespace: str) -> None:
    with kube.api_client() as api:
        core = client.CoreV1Api(api)
        owner = core.create_namespaced_config_map(
            kube_namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
        )
        reference = client.V1OwnerReference(
            api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
        )
        core.create_namespaced_config_map(
            kube_namespace,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[reference])),
        )
        core.create_namespaced_config_map(
            kube_namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bystander"))
        )
    assert configmap_exists(kube, kube_namespace, "dependent")

    kube.kubectl("delete", "configmap", "owner", "-n", kube_namespace, "--cascade=background")

    eventually(
        lambda: not configmap_exists(kube, kube_namespace, "dependent"),
        "garbage collection of the dependent ConfigMap",
    )
    assert configmap_exists(kube, kube_namespace, "bystander")


@pytest.mark.kube
def test_namespace_deletion_removes_its_contents(kube: Kube) -> None:
    kube.kubectl("create", "namespace", "smoke-ns-deletion")
    kube.kubectl("create", "configmap", "content", "-n", "smoke-ns-deletion")
    kube.kubectl("delete", "namespace", "smoke-ns-deletion", "--wait=false")

    def namespace_gone() -> bool:
        result = kube.kubectl("get", "namespace", "smoke-ns-deletion", check=False)
        return result.returncode != 0 and "NotFound" in result.stderr

    eventually(namespace_gone, "deletion of namespace smoke-ns-deletion")


@pytest.mark.kube
def test_rbac_denies_a_service_account_until_a_role_is_bound(kube: Kube, kube_namespace: str) -> None:
    ns = kube_namespace
    kube.kubectl("create", "serviceaccount", "reader", "-n", ns)
    kubeconfig = kube.service_account_kubeconfig(ns, "reader")

    denied = kube.kubectl("get", "configmaps", "-n", ns, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert f'"system:serviceaccount:{ns}:reader" cannot list resource "configmaps"' in denied.stderr
    with kube.api_client(kubeconfig) as api, pytest.raises(ApiException) as forbidden:
        client.CoreV1Api(api).list_namespaced_config_map(ns)
    assert forbidden.value.status == 403

    kube.kubectl("create", "role", "configmap-reader", "-n", ns, "--verb=get,list", "--resource=configmaps")
    kube.kubectl(
        "create",
        "rolebinding",
        "reader",
        "-n",
        ns,
        "--role=configmap-reader",
        f"--serviceaccount={ns}:reader",
    )

    def can_list() -> bool:
        return kube.kubectl("get", "configmaps", "-n", ns, kubeconfig=kubeconfig, check=False).returncode == 0

    eventually(can_list, "RBAC granting list on configmaps", timeout_s=30)
    with kube.api_client(kubeconfig) as api:
        names = [cm.metadata.name for cm in client.CoreV1Api(api).list_namespaced_config_map(ns).items]
    assert "kube-root-ca.crt" in names
    still_denied = kube.kubectl("create", "configmap", "x", "-n", ns, kubeconfig=kubeconfig, check=False)
    assert still_denied.returncode != 0 and "forbidden" in still_denied.stderr


@pytest.mark.kube
def test_builtin_view_cluster_role_is_aggregated(kube: Kube) -> None:
    def view_has_rules() -> bool:
        role = json.loads(kube.kubectl("get", "clusterrole", "view", "-o", "json").stdout)
        return bool(role.get("rules"))

    eventually(view_has_rules, "aggregation of rules into ClusterRole view", timeout_s=30)


@pytest.mark.kube
def test_helm_runs_against_the_api_server(kube: Kube, kube_namespace: str) -> None:
    version = kube.helm("version", "--short").stdout.strip()
    assert version.startswith(pinned_versions()["helm"])
    assert json.loads(kube.helm("list", "-n", kube_namespace, "-o", "json").stdout) == []


@pytest.mark.kube
def test_helm_installs_a_chart_that_requires_the_server_version(
    kube: Kube, kube_namespace: str, tmp_path: Path
) -> None:
    minor = pinned_versions()["kubernetes"].split(".")[1]
    chart = tmp_path / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: smoke\nversion: 0.1.0\nkubeVersion: '>=1.{minor}.0-0'\n"
    )
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: smoke\n"
        "data:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    kube.helm("install", "smoke", str(chart), "-n", kube_namespace)
    data = json.loads(kube.kubectl("get", "configmap", "smoke", "-n", kube_namespace, "-o", "json").stdout)
    assert data["data"]["kube"] == pinned_versions()["kubernetes"]
    kube.helm("uninstall", "smoke", "-n", kube_namespace)
    assert not configmap_exists(kube, kube_namespace, "smoke")


@pytest.mark.kube
def test_start_picks_new_ports_when_one_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(testground, "free_port", lambda: next(ports, None) or real_free_port())
        plane = testground.ControlPlane(binaries=find_binaries())
        plane.start()
        try:
            assert plane.etcd_port != taken
            assert (plane.workdir / "etcd.log").read_text().count("address already in use") >= 1
        finally:
            plane.stop()
    assert not plane.workdir.exists()
