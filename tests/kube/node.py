"""A real one-node Kubernetes cluster on this machine: a :class:`~tests.kube.testground.ControlPlane`
serving on the node's IP, and the node: containerd + runc + CNI, kubelet, kube-scheduler,
kube-proxy and CoreDNS. Pods really run: images come from OCI archives imported into containerd (no
registry), pod IPs come from a bridge, ClusterIP Services work through kube-proxy (nftables) and
resolve by name through CoreDNS.

It needs root and changes the host while it runs, all of it undone by :meth:`Node.stop` (and by
:func:`clean_host`, which also clears what a crashed run left): an address on ``lo``, the bridge,
``ip_forward``, kube-proxy's nftables tables, the kubelet's and CNI's fixed directories
(``/var/lib/kubelet``, ``/var/lib/cni``, ``/var/log/pods``, ``/var/log/containers``, ``/etc/cni``,
``/run/netns``) and the ``kubepods`` cgroups. Facts and settings: ../shared/OFFLINE.md, "A real
node"; docs/kube-testground.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.kube.images import PAUSE_REFERENCE
from tests.kube.kubeconfig import write_cert_kubeconfig
from tests.kube.pki import NodePki, generate_node_pki
from tests.kube.testground import (
    WORKDIR_PREFIX,
    Binaries,
    ControlPlane,
    ControlPlaneStartError,
    ManagedProcess,
    clean_env,
    free_port,
    http_ok,
    start_process,
    wait_until_ready,
)

NODE_NAME = "o1pool-node"
# The kubelet refuses a loopback node IP and this host cannot create a dummy interface; a /32 on
# ``lo`` works and is reachable from pods through the bridge's gateway.
NODE_IP = "10.254.0.1"
POD_SUBNET = "10.244.0.0/24"
BRIDGE = "o1pool0"
CNI_NETWORK = "o1pool"
CONTAINERD_NAMESPACE = "k8s.io"
HOST_PACKAGES = {
    "containerd": "containerd",
    "runc": "runc",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
}
# Paths the kubelet, containerd and the CNI plugins use whatever their flags say.
FIXED_DIRS = (
    Path("/var/lib/kubelet"),
    Path("/var/lib/cni"),
    Path("/var/log/pods"),
    Path("/var/log/containers"),
    Path("/etc/cni"),
)
NODE_READY_TIMEOUT = 120.0
DRAIN_TIMEOUT = 60.0
COREDNS_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}]
"""


class NodeUnavailable(RuntimeError):
    """This machine cannot run a node (not root, or a host package missing); says what to do."""


def check_host() -> None:
    """Raise NodeUnavailable naming what is missing (root, Debian packages) and how to get it."""
    if os.geteuid() != 0:
        raise NodeUnavailable("a real node needs root (it runs containerd and the kubelet)")
    missing = sorted(
        {
            package
            for tool, package in HOST_PACKAGES.items()
            if not (shutil.which(tool) or Path(tool).exists())
        }
    )
    if missing:
        raise NodeUnavailable(
            f"missing Debian packages for the node: {', '.join(missing)}; run `make sysdeps` "
            f"(apt-get install {' '.join(missing)})"
        )


def _run(argv: list[str], check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, input=input, capture_output=True, text=True, env=clean_env(), check=False)
    if check and result.returncode != 0:
        raise ControlPlaneStartError(
            f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr.strip()}"
        )
    return result


@dataclass
class Node:
    """A control plane and one node; ``images`` are OCI archives imported into containerd before
    the kubelet starts."""

    binaries: Binaries
    images: list[Path] = field(default_factory=list)
    keep_workdir: bool = False
    plane: ControlPlane = field(init=False)
    pki: NodePki | None = None
    _processes: list[ManagedProcess] = field(default_factory=list)
    _ip_forward: str = "0"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per bring-up stage

    def __post_init__(self) -> None:
        self.plane = ControlPlane(binaries=self.binaries, node_ip=NODE_IP, keep_workdir=self.keep_workdir)

    @property
    def workdir(self) -> Path:
        return self.plane.workdir / "node"

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd.sock"

    def start(self) -> None:
        """Bring the control plane and the node up; return once the node is Ready and schedulable."""
        check_host()
        clean_host()
        started = time.monotonic()
        try:
            self._configure_host()
            self.plane.start()
            self.timings["control plane"] = time.monotonic() - started
            assert self.plane.pki is not None
            self.pki = generate_node_pki(self.workdir / "pki", self.plane.pki.ca, NODE_NAME, NODE_IP)
            self._write_cni_config()
            self._start_containerd()
            mark = time.monotonic()
            self.import_images(self.images)
            self.timings["image import"] = time.monotonic() - mark
            mark = time.monotonic()
            self._start_kubelet()
            self._start_scheduler()
            self._start_proxy()
            self._start_coredns()
            self._wait_for_ready_node()
            self.timings["node Ready"] = time.monotonic() - mark
            self.timings["total"] = time.monotonic() - started
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every pod, the node's components and the control plane; undo every change to the host."""
        self._drain()
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        # containerd's shims outlive it, and its sandboxes' shm mounts outlive the shims.
        _kill_shims(self.workdir)
        _unmount_under([self.workdir])
        self.plane.stop()
        clean_host()
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self._ip_forward)

    def import_images(self, archives: list[Path]) -> None:
        """Import OCI archives into containerd's Kubernetes namespace, unpacked for its snapshotter
        (so a pod's first start does not pay for it)."""
        for archive in archives:
            _run(self._ctr("images", "import", str(archive)))

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this node's containerd, in the Kubernetes namespace."""
        return _run(self._ctr(*args), check=False)

    def log_path(self, component: str) -> Path:
        return self.workdir / f"{component}.log"

    def _ctr(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.containerd_socket), "--namespace", CONTAINERD_NAMESPACE, *args]

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        process = start_process(name, argv, self.workdir)
        self._processes.append(process)
        return process

    def _kubeconfig(self, name: str, user: str, cert: Path, key: Path) -> Path:
        assert self.plane.pki is not None
        return write_cert_kubeconfig(
            self.workdir / f"{name}.kubeconfig", self.plane.server, self.plane.pki.ca.cert, user, cert, key
        )

    def _configure_host(self) -> None:
        self._ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        _run(["ip", "address", "add", f"{NODE_IP}/32", "dev", "lo"])
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        # Replies of a pod reached through a Service on the same bridge must pass conntrack.
        Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1")

    def _write_cni_config(self) -> None:
        cni_dir = self.workdir / "cni"
        cni_dir.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (cni_dir / "10-o1pool.conflist").write_text(json.dumps(conflist, indent=2))

    def _start_containerd(self) -> None:
        cni_dir = self.workdir / "cni"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{self.workdir / "containerd" / "root"}"
state = "{self.workdir / "containerd" / "state"}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
]
[grpc]
  address = "{self.containerd_socket}"
[{cri}]
  sandbox_image = "{PAUSE_REFERENCE}"
  # Without it every sandbox fails: runc cannot lower oom_score_adj here (../shared/OFFLINE.md).
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_dir}"
"""
        path = self.workdir / "containerd.toml"
        path.write_text(config)
        process = self._spawn("containerd", ["containerd", "--config", str(path)])
        wait_until_ready(
            process, "containerd's socket", lambda: _run(self._ctr("version"), check=False).returncode == 0
        )

    def _start_kubelet(self) -> None:
        assert self.pki is not None and self.plane.pki is not None
        kubeconfig = self._kubeconfig(
            "kubelet", f"system:node:{NODE_NAME}", self.pki.kubelet_client.cert, self.pki.kubelet_client.key
        )
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.plane.pki.ca.cert)},
            },
            "authorization": {"mode": "Webhook"},
            "address": NODE_IP,
            "port": free_port(),
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "readOnlyPort": 0,
            "tlsCertFile": str(self.pki.kubelet_serving.cert),
            "tlsPrivateKeyFile": str(self.pki.kubelet_serving.key),
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            # This host is cgroup v1 (1.36 only warns with this set) and may have swap.
            "failCgroupV1": False,
            "failSwapOn": False,
            "clusterDNS": [NODE_IP],
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            # Never evict or garbage-collect what the tests imported: there is no registry to pull from.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "serializeImagePulls": False,
            "syncFrequency": "10s",
            "fileCheckFrequency": "5s",
            "nodeStatusReportFrequency": "10s",
        }
        config_path = self.workdir / "kubelet.yaml"
        config_path.write_text(yaml.safe_dump(config))
        process = self._spawn(
            "kubelet",
            [
                str(self.binaries.node_binary("kubelet")),
                f"--config={config_path}",
                f"--kubeconfig={kubeconfig}",
                f"--node-ip={NODE_IP}",
                f"--hostname-override={NODE_NAME}",
                "--v=1",
            ],
        )
        healthz = f"http://127.0.0.1:{config['healthzPort']}/healthz"
        wait_until_ready(process, "kubelet /healthz", lambda: http_ok(healthz))

    def _start_scheduler(self) -> None:
        assert self.pki is not None
        kubeconfig = self._kubeconfig(
            "scheduler",
            "system:kube-scheduler",
            self.pki.scheduler_client.cert,
            self.pki.scheduler_client.key,
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.binaries.node_binary("kube-scheduler")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--v=1",
            ],
        )

    def _start_proxy(self) -> None:
        assert self.pki is not None
        kubeconfig = self._kubeconfig(
            "kube-proxy", "system:kube-proxy", self.pki.proxy_client.cert, self.pki.proxy_client.key
        )
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "nftables",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_IP,
            "clusterCIDR": POD_SUBNET,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # 0: leave the host's conntrack settings alone (no CAP_SYS_RESOURCE here).
            "conntrack": {"maxPerCore": 0, "min": 0},
        }
        config_path = self.workdir / "kube-proxy.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self._spawn(
            "kube-proxy",
            [str(self.binaries.node_binary("kube-proxy")), f"--config={config_path}", "--v=1"],
        )

    def _start_coredns(self) -> None:
        assert self.pki is not None and self.plane.admin_kubeconfig is not None
        self._kubectl("apply", "-f", "-", input=COREDNS_RBAC)
        kubeconfig = self._kubeconfig(
            "coredns", "system:coredns", self.pki.coredns_client.cert, self.pki.coredns_client.key
        )
        health_port = free_port()
        corefile = f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{health_port}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""
        path = self.workdir / "Corefile"
        path.write_text(corefile)
        process = self._spawn("coredns", [str(self.binaries.node_binary("coredns")), "-conf", str(path)])
        wait_until_ready(
            process, "CoreDNS /health", lambda: http_ok(f"http://127.0.0.1:{health_port}/health")
        )

    def _wait_for_ready_node(self) -> None:
        assert self.plane.admin_kubeconfig is not None

        def ready() -> bool:
            result = self._kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
            if result.returncode != 0:
                return False
            node = json.loads(result.stdout)
            conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            taints = node["spec"].get("taints", [])
            return conditions.get("Ready") == "True" and not taints

        kubelet = next(p for p in self._processes if p.name == "kubelet")
        wait_until_ready(kubelet, "a Ready node without taints", ready, NODE_READY_TIMEOUT)

    def _drain(self) -> None:
        """Let the kubelet stop every pod (CNI releases their addresses), then kill what is left.
        The scheduler stops first, so the pods controllers create in place of deleted ones stay
        Pending."""
        for process in self._processes:
            if process.name == "kube-scheduler":
                process.stop()
        kubelet = next((p for p in self._processes if p.name == "kubelet"), None)
        if kubelet is not None and kubelet.popen.poll() is None and self.plane.admin_kubeconfig is not None:
            self._kubectl(
                "delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false", check=False
            )
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while time.monotonic() < deadline and self._running_tasks():
                time.sleep(0.5)
        if self.containerd_socket.exists():
            for task in self._running_tasks():
                self.ctr("tasks", "kill", "--signal", "SIGKILL", task)
            for task in self._running_tasks():
                self.ctr("tasks", "delete", "--force", task)

    def _kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """kubectl as the control plane's admin."""
        assert self.plane.admin_kubeconfig is not None
        kubectl = [str(self.binaries.kubectl), f"--kubeconfig={self.plane.admin_kubeconfig}"]
        return _run([*kubectl, *args], check=check, input=input)

    def _running_tasks(self) -> list[str]:
        if not self.containerd_socket.exists():
            return []
        result = self.ctr("tasks", "list", "--quiet")
        return result.stdout.split() if result.returncode == 0 else []


def clean_host() -> None:
    """Undo everything a node changes on the host; safe to run when nothing is there."""
    _kill_pod_processes()
    leftovers = list(Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*/node"))  # of crashed runs
    for workdir in leftovers:
        _kill_shims(workdir)
    _unmount_under([Path("/var/lib/kubelet"), Path("/run/netns"), Path("/run/containerd"), *leftovers])
    for path in Path("/run/netns").glob("*") if Path("/run/netns").exists() else []:
        path.unlink(missing_ok=True)
    for directory in FIXED_DIRS:
        shutil.rmtree(directory, ignore_errors=True)
    _remove_cgroups("kubepods")
    _run(["ip", "link", "delete", BRIDGE], check=False)
    _run(["ip", "address", "delete", f"{NODE_IP}/32", "dev", "lo"], check=False)
    for family in ("ip", "ip6"):
        _run(["nft", "delete", "table", family, "kube-proxy"], check=False)
    _remove_cni_masquerade_rules()


def _remove_cni_masquerade_rules() -> None:
    """The bridge plugin's ipMasq rules (nat chains ``CNI-*`` jumped to from POSTROUTING) that a pod
    torn down without CNI DEL left behind; nothing else in the nat table is touched."""
    rules = _run(["iptables", "-t", "nat", "-S", "POSTROUTING"], check=False).stdout.splitlines()
    for rule in rules:
        if rule.startswith("-A POSTROUTING") and " -j CNI-" in rule:
            _run(["iptables", "-t", "nat", "-D", *shlex.split(rule)[1:]], check=False)
    chains = _run(["iptables", "-t", "nat", "-S"], check=False).stdout.splitlines()
    for chain in (line.split()[1] for line in chains if line.startswith("-N CNI-")):
        _run(["iptables", "-t", "nat", "-F", chain], check=False)
        _run(["iptables", "-t", "nat", "-X", chain], check=False)


def _kill_pod_processes() -> None:
    """SIGKILL every process in a ``kubepods`` cgroup (containers a crashed run left behind)."""
    pids: set[int] = set()
    for procs in Path("/sys/fs/cgroup").glob("*/kubepods/**/cgroup.procs"):
        try:
            pids.update(int(line) for line in procs.read_text().split())
        except OSError:
            continue
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kill_shims(workdir: Path) -> None:
    """SIGKILL the containerd shims serving the containerd whose socket is under ``workdir``."""
    prefix = f"{workdir}/".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv[0].endswith(b"containerd-shim-runc-v2") or b"-address" not in argv:
            continue
        address = argv[argv.index(b"-address") + 1] if argv.index(b"-address") + 1 < len(argv) else b""
        if address.startswith(prefix):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def _unmount_under(roots: list[Path]) -> None:
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    targets = [m for m in mounts if any(m == str(root) or m.startswith(f"{root}/") for root in roots)]
    for target in sorted(targets, key=len, reverse=True):
        _run(["umount", "--lazy", target], check=False)


def _remove_cgroups(name: str) -> None:
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / name
        if not top.is_dir():
            continue
        for directory in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            try:
                directory.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
        except OSError:
            pass
