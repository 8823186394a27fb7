"""Pytest fixtures for tests against the real control plane built by hack/kube-testground.sh.

``kube`` (session) starts etcd + kube-apiserver + kube-controller-manager once and yields a
:class:`Kube` handle; ``kube_namespace`` (function) is a fresh namespace, deleted afterwards.
``cluster`` (session) is a second control plane with a real node (tests/kube/node.py) where pods
run, the project's images imported (tests/kube/images.py). Without the binaries (or, for the node,
root and its Debian packages) the fixtures skip saying how to get them, except in CI (CI=true),
where they fail: there the build step must have run.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.kube.images import build_images, default_out_dir
from tests.kube.kubeconfig import write_token_kubeconfig
from tests.kube.node import Node, NodeUnavailable, check_host
from tests.kube.testground import (
    Binaries,
    ControlPlane,
    ControlPlaneNotBuilt,
    clean_env,
    find_binaries,
)

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
COMMAND_TIMEOUT = 120.0


class KubeCommandError(RuntimeError):
    """kubectl or helm exited non-zero; carries the command line and its output."""

    def __init__(self, argv: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        self.argv = list(argv)
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr
        super().__init__(
            f"`{' '.join(self.argv)}` exited with {result.returncode}:\n{result.stderr or result.stdout}"
        )


@dataclass
class Kube:
    """A running control plane and the tools to talk to it as admin or as a ServiceAccount."""

    plane: ControlPlane
    binaries: Binaries
    helm_home: Path

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (client certificate in ``system:masters``)."""
        assert self.plane.admin_kubeconfig is not None
        return self.plane.admin_kubeconfig

    @property
    def server(self) -> str:
        return self.plane.server

    @property
    def bin_dir(self) -> Path:
        return self.binaries.bin_dir

    @property
    def kubectl_path(self) -> Path:
        return self.binaries.kubectl

    @property
    def helm_path(self) -> Path:
        return self.binaries.helm

    @property
    def ca_cert(self) -> Path:
        assert self.plane.pki is not None
        return self.plane.pki.ca.cert

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """Environment for a subprocess (e.g. the operator): KUBECONFIG set, kubectl/helm on PATH,
        helm's state in a private dir, no proxy variables."""
        return clean_env(
            {
                "KUBECONFIG": str(kubeconfig or self.kubeconfig),
                "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                "HELM_CACHE_HOME": str(self.helm_home / "cache"),
                "HELM_CONFIG_HOME": str(self.helm_home / "config"),
                "HELM_DATA_HOME": str(self.helm_home / "data"),
            }
        )

    def _run(
        self,
        argv: list[str],
        input: str | None,
        kubeconfig: Path | None,
        check: bool,
        timeout: float,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env={**self.env(kubeconfig), **(extra_env or {})},
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubeCommandError(argv, result)
        return result

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        kubeconfig: Path | None = None,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (as admin unless ``kubeconfig`` is given; ``extra_env`` e.g. ``KUBE_EDITOR``);
        raises KubeCommandError if it fails and ``check`` is true."""
        return self._run([str(self.kubectl_path), *args], input, kubeconfig, check, timeout, extra_env)

    def helm(
        self,
        *args: str,
        input: str | None = None,
        kubeconfig: Path | None = None,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this control plane, like :meth:`kubectl`."""
        return self._run([str(self.helm_path), *args], input, kubeconfig, check, timeout)

    def api_client(self, kubeconfig: Path | None = None) -> client.ApiClient:
        """A new kubernetes-client ApiClient (admin unless ``kubeconfig`` is given); close it after use."""
        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def service_account_kubeconfig(
        self, namespace: str, name: str, expiration_seconds: int = 3600, path: Path | None = None
    ) -> Path:
        """A kubeconfig authenticating as ServiceAccount ``namespace/name`` with a token from the
        TokenRequest API, so that RBAC applies to whatever uses it. The ServiceAccount must exist."""
        with self.api_client() as api:
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
            )
            token = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request)
        target = path or self.plane.workdir / "service-accounts" / f"{namespace}.{name}.kubeconfig"
        return write_token_kubeconfig(
            target,
            self.server,
            self.ca_cert,
            f"system:serviceaccount:{namespace}:{name}",
            token.status.token,
        )

    def wait_for_service_account(self, namespace: str, name: str = "default", timeout: float = 30.0) -> None:
        """Wait until the serviceaccount controller has created ``name`` in ``namespace``."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.kubectl("get", "serviceaccount", name, "-n", namespace, "-o", "name", check=False)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"ServiceAccount {namespace}/{name} did not appear within {timeout}s")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    """The session's real control plane (started on first use, torn down at session end)."""
    try:
        binaries = find_binaries()
    except ControlPlaneNotBuilt as missing:
        if IN_CI:
            pytest.fail(str(missing))
        pytest.skip(str(missing))
    plane = ControlPlane(binaries=binaries, keep_workdir=bool(os.environ.get("O1POOL_KUBE_KEEP")))
    plane.start()
    try:
        with tempfile.TemporaryDirectory(prefix="o1pool-helm-") as helm_home:
            yield Kube(plane=plane, binaries=binaries, helm_home=Path(helm_home))
    finally:
        plane.stop()


@dataclass
class Cluster(Kube):
    """A control plane with one real node: pods run, Services resolve by name."""

    node: Node

    def service_ip(self, namespace: str, name: str) -> str:
        return self.kubectl(
            "get", "service", name, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
        ).stdout

    def http_get(self, url: str, timeout: float = 10.0) -> bytes:
        """GET from a pod or ClusterIP address: the node is this host, so both are routed from here
        (directly: no proxy variables apply)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=timeout) as response:
            return bytes(response.read())


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The session's one-node cluster with the project's images (built offline, cached)."""
    try:
        binaries = find_binaries()
        binaries.node_binary("kubelet")
        check_host()
    except (ControlPlaneNotBuilt, NodeUnavailable) as missing:
        if IN_CI:
            pytest.fail(str(missing))
        pytest.skip(str(missing))
    archives = build_images(default_out_dir())
    node = Node(
        binaries=binaries,
        images=list(archives.values()),
        keep_workdir=bool(os.environ.get("O1POOL_KUBE_KEEP")),
    )
    node.start()
    try:
        with tempfile.TemporaryDirectory(prefix="o1pool-helm-") as helm_home:
            yield Cluster(plane=node.plane, binaries=binaries, helm_home=Path(helm_home), node=node)
    finally:
        node.stop()


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{slug}-{secrets.token_hex(3)}"


@pytest.fixture
def kube_namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, with its ``default`` ServiceAccount; deleted after."""
    name = _namespace_name(request.node.name)
    kube.kubectl("create", "namespace", name)
    kube.wait_for_service_account(name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")
