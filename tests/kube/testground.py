"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

Started the way controller-runtime's envtest starts it (free ports, serving cert for 127.0.0.1,
client-cert admin in ``system:masters``, service-account keys, RBAC), plus the controller manager
so that ownerReference garbage collection, namespace deletion and default ServiceAccounts really
happen. All state lives in one temp dir that ``stop()`` removes.

Run ``python -m tests.kube.testground`` (or ``bash hack/kube-testground.sh up``) to keep one up
by hand.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.kube.kubeconfig import write_cert_kubeconfig
from tests.kube.pki import SERVICE_CLUSTER_IP_RANGE, ControlPlanePki, generate_pki

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "kube-testground.sh"
BUILD_COMMAND = "bash hack/kube-testground.sh build"
BINARY_NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Controllers that make the API behave like a cluster's for objects (no pods ever run here).
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "horizontal-pod-autoscaler-controller",  # raises a Deployment to an HPA's minReplicas (autoscale.py)
)
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
START_TIMEOUT = 90.0


class ControlPlaneNotBuilt(RuntimeError):
    """The control-plane binaries are missing; the message says how to build them."""


class ControlPlaneStartError(RuntimeError):
    """A control-plane process failed to start; the message carries its log tail."""


WORKDIR_PREFIX = "o1pool-kube-"  # a control plane's temporary directory


@dataclass(frozen=True)
class Binaries:
    """Paths of the built control-plane binaries."""

    bin_dir: Path
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    helm: Path

    def node_binary(self, name: str) -> Path:
        """A node component's binary (kubelet, kube-scheduler, kube-proxy, coredns, pause), which the
        same build makes."""
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            raise ControlPlaneNotBuilt(f"{path} is missing; run `{BUILD_COMMAND}` first")
        return path


def find_binaries() -> Binaries:
    """The binaries from ``$O1POOL_KUBE_BIN`` or the build script's cache dir.

    Raises ControlPlaneNotBuilt (naming the missing files and the build command) if any is absent.
    """
    override = os.environ.get("O1POOL_KUBE_BIN")
    if override:
        bin_dir = Path(override)
    else:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "versions"], capture_output=True, text=True, check=True
        )
        bin_line = next(line for line in result.stdout.splitlines() if line.startswith("bin "))
        bin_dir = Path(bin_line.removeprefix("bin "))
    missing = [name for name in BINARY_NAMES if not os.access(bin_dir / name, os.X_OK)]
    if missing:
        raise ControlPlaneNotBuilt(
            f"Kubernetes test-ground binaries missing in {bin_dir}: {', '.join(missing)}; "
            f"run `{BUILD_COMMAND}` first (cold build: see docs/kube-testground.md)"
        )
    return Binaries(
        bin_dir=bin_dir,
        etcd=bin_dir / "etcd",
        kube_apiserver=bin_dir / "kube-apiserver",
        kube_controller_manager=bin_dir / "kube-controller-manager",
        kubectl=bin_dir / "kubectl",
        helm=bin_dir / "helm",
    )


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without proxy variables (loopback traffic must never be proxied)."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in PROXY_VARIABLES}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.pop("KUBECONFIG", None)
    if extra:
        env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Children get SIGKILL if the test process dies, so no control plane outlives a crashed run."""
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class ManagedProcess:
    """A child process with its log file; killed with its parent (the test run)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def log_tail(self, lines: int = 30) -> str:
        self.log_file.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        self.log_file.close()


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager in ``workdir`` (a fresh temp dir by default).

    With ``node_ip`` set, the control plane is one a node can join (tests/kube/node.py): the
    apiserver serves on that address (pods reach it through the ``kubernetes`` Service), authorizes
    kubelets with the Node authorizer and runs every default controller under its own
    ServiceAccount. Without it, it serves on 127.0.0.1 and runs only the controllers objects need.
    """

    binaries: Binaries
    node_ip: str | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX)))
    keep_workdir: bool = False
    etcd_port: int = 0
    apiserver_port: int = 0
    pki: ControlPlanePki | None = None
    admin_kubeconfig: Path | None = None
    _processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.node_ip or "127.0.0.1"

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.apiserver_port}"

    def start(self) -> None:
        """Start every process and return once the API is ready and controllers are running."""
        try:
            self.pki = generate_pki(self.workdir / "pki", (self.node_ip,) if self.node_ip else ())
            self.admin_kubeconfig = self.workdir / "admin.kubeconfig"
            self._retry_on_port_clash(self._start_etcd)
            self._retry_on_port_clash(self._start_apiserver)
            self._start_controller_manager()
            self._wait_for_default_service_account()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the processes (newest first) and remove the workdir unless asked to keep it."""
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _retry_on_port_clash(self, start: Callable[[], None], attempts: int = 3) -> None:
        """Run ``start`` again with new ports if another process took a port we picked in between."""
        for attempt in range(1, attempts + 1):
            try:
                start()
                return
            except ControlPlaneStartError as error:
                if attempt == attempts or "address already in use" not in str(error):
                    raise
                self._processes.pop().stop()

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        process = start_process(name, argv, self.workdir)
        self._processes.append(process)
        return process

    def _start_etcd(self) -> None:
        self.etcd_port = free_port()
        peer_port = free_port()
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        process = self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=testground",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=testground={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        wait_until_ready(process, "etcd /health", lambda: http_ok(f"{client_url}/health"))

    def _start_apiserver(self) -> None:
        assert self.pki is not None and self.admin_kubeconfig is not None
        self.apiserver_port = free_port()
        pki = self.pki
        if self.node_ip:
            mode_flags = [
                "--authorization-mode=Node,RBAC",
                f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
                f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
                f"--kubelet-certificate-authority={pki.ca.cert}",
                # kubectl logs/exec: reach the kubelet at its IP (the node's name resolves nowhere).
                "--kubelet-preferred-address-types=InternalIP",
            ]
        else:
            mode_flags = [
                "--authorization-mode=RBAC",
                # The endpoint reconciler would publish 127.0.0.1 for the kubernetes Service, which
                # Endpoints validation rejects (loopback) every 10 s; nothing here needs that Service.
                "--endpoint-reconciler-type=none",
            ]
        process = self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.apiserver_serving.cert}",
                f"--tls-private-key-file={pki.apiserver_serving.key}",
                f"--client-ca-file={pki.ca.cert}",
                f"--service-account-key-file={pki.service_account_public_key}",
                f"--service-account-signing-key-file={pki.service_account_private_key}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                *mode_flags,
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        write_cert_kubeconfig(
            self.admin_kubeconfig,
            self.server,
            pki.ca.cert,
            "admin",
            pki.admin_client.cert,
            pki.admin_client.key,
        )
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        context.load_cert_chain(str(pki.admin_client.cert), str(pki.admin_client.key))
        wait_until_ready(process, "/readyz", lambda: http_ok(f"{self.server}/readyz", context))

    def _start_controller_manager(self) -> None:
        assert self.pki is not None
        pki = self.pki
        kubeconfig = write_cert_kubeconfig(
            self.workdir / "controller-manager.kubeconfig",
            self.server,
            pki.ca.cert,
            "system:kube-controller-manager",
            pki.controller_manager_client.cert,
            pki.controller_manager_client.key,
        )
        self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={kubeconfig}",
                "--secure-port=0",
                "--leader-elect=false",
                "--horizontal-pod-autoscaler-sync-period=2s",
                # With a node: every default controller (Deployments, ReplicaSets, EndpointSlices,
                # node lifecycle...), each under its own ServiceAccount (with one shared identity
                # the node keeps its not-ready taint: see ../shared/OFFLINE.md).
                f"--controllers={'*' if self.node_ip else ','.join(CONTROLLERS)}",
                f"--use-service-account-credentials={'true' if self.node_ip else 'false'}",
                f"--service-account-private-key-file={pki.service_account_private_key}",
                f"--root-ca-file={pki.ca.cert}",
                "--v=1",
            ],
        )

    def _wait_for_default_service_account(self) -> None:
        """The serviceaccount controller creating ``default/default`` shows the controllers run."""
        assert self.admin_kubeconfig is not None
        process = self._processes[-1]
        kubectl = [
            str(self.binaries.kubectl),
            f"--kubeconfig={self.admin_kubeconfig}",
            "get",
            "serviceaccount",
            "default",
            "--namespace=default",
            "-o",
            "name",
        ]

        def exists() -> bool:
            result = subprocess.run(kubectl, capture_output=True, env=clean_env(), check=False)
            return result.returncode == 0

        wait_until_ready(process, "default ServiceAccount", exists)


def start_process(name: str, argv: list[str], workdir: Path) -> ManagedProcess:
    """Start ``argv`` in ``workdir`` with its output in ``workdir/NAME.log`` and a clean environment."""
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("ab")
    popen = subprocess.Popen(
        argv,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
        cwd=workdir,
        preexec_fn=_die_with_parent,
    )
    return ManagedProcess(name=name, popen=popen, log_path=log_path, log_file=log_file)


def wait_until_ready(
    process: ManagedProcess, what: str, ready: Callable[[], bool], timeout: float = START_TIMEOUT
) -> None:
    """Return once ``ready()``; raise ControlPlaneStartError with the log tail if the process exits
    first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise ControlPlaneStartError(
                f"{process.name} exited with code {process.popen.returncode} before {what}; "
                f"log tail ({process.log_path}):\n{process.log_tail()}"
            )
        if ready():
            return
        time.sleep(0.2)
    raise ControlPlaneStartError(
        f"{process.name}: no {what} within {timeout:.0f}s; log tail ({process.log_path}):\n"
        f"{process.log_tail()}"
    )


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    """Keep a control plane up until interrupted and print how to use it."""
    try:
        binaries = find_binaries()
    except ControlPlaneNotBuilt as error:
        print(error, file=sys.stderr)
        return 1
    plane = ControlPlane(binaries=binaries, keep_workdir=bool(os.environ.get("O1POOL_KUBE_KEEP")))
    plane.start()
    print(f"control plane ready at {plane.server} (data in {plane.workdir})")
    print(f"export KUBECONFIG={plane.admin_kubeconfig}")
    print(f"export PATH={binaries.bin_dir}:$PATH")
    print("Ctrl-C stops it and removes the data.", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
