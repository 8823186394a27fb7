"""A real Redis Cluster of redis-server processes on free loopback ports, for the cluster tests and the
scale benchmark (scalebench.py).

``LocalCluster(binary, cli, primaries=3, replicas=0).start()`` starts ``primaries * (1 + replicas)``
cluster-enabled redis-servers (no persistence, a temp dir each, a short node timeout so a failover
takes seconds), joins them with ``redis-cli --cluster create`` and waits until every node says
``cluster_state:ok``, knows every other node, and every replica is in sync with its primary. With
``tls`` (certificate, key, CA) the nodes listen on TLS only (clients, replication and the cluster bus);
with ``password`` they require it (and replicas use it). ``LocalCluster.find()`` builds one for the
``redis-server`` and ``redis-cli`` on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from o1pool.procs import EPHEMERAL, free_port, wait_for_port

NODE_TIMEOUT_MS = 1000  # how long a node may not answer before the others fail it over


@dataclass(frozen=True)
class Tls:
    cert: Path  # serving (server auth), for 127.0.0.1
    key: Path
    client_cert: Path  # client auth: the cluster bus checks the certificate of the node that connects
    client_key: Path
    ca: Path


@dataclass
class Node:
    port: int
    bus_port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    tls: Tls | None = None
    password: str | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        tls: dict[str, Any] = {} if self.tls is None else {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}
        return redis.Redis(
            port=self.port, password=self.password, socket_timeout=2, decode_responses=True, **tls
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class LocalCluster:
    binary: str
    cli: str
    primaries: int = 3
    replicas: int = 0  # per primary
    tls: Tls | None = None
    password: str | None = None
    nodes: list[Node] = field(default_factory=list)

    @classmethod
    def find(cls, primaries: int = 3, replicas: int = 0) -> LocalCluster | None:
        """A cluster (not started) of the ``redis-server`` and ``redis-cli`` on PATH, or ``None`` when
        either is not installed."""
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            return None
        return cls(binary, cli, primaries=primaries, replicas=replicas)

    @property
    def url(self) -> str:
        """A seed: the first node that is still up (any one node names the cluster)."""
        seed = next(n for n in self.nodes if n.alive())
        return f"{'redis' if self.tls is None else 'rediss'}://{seed.address}"

    def start(self) -> LocalCluster:
        try:
            for _ in range(self.primaries * (1 + self.replicas)):
                self.nodes.append(self._start_node())
            create = [self.cli, "--cluster", "create", *(n.address for n in self.nodes)]
            create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            if self.tls is not None:
                create += ["--tls", "--cacert", str(self.tls.ca)]
            if self.password is not None:
                create += ["--no-auth-warning", "-a", self.password]
            done = subprocess.run(create, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
            self.wait_ok()
        except BaseException:
            self.close()
            raise
        return self

    def _start_node(self) -> Node:
        why = ""
        for _ in range(6):  # a free port may be taken by someone else in between: try others
            workdir = Path(tempfile.mkdtemp(prefix="o1pool-cluster-"))
            node = Node(free_port(), free_port(), workdir, tls=self.tls, password=self.password)
            log = node.workdir / "redis.log"
            if self.tls is None:
                listen = ["--port", str(node.port)]
            else:
                listen = ["--port", "0", "--tls-port", str(node.port), "--tls-cluster", "yes"]
                listen += ["--tls-replication", "yes", "--tls-auth-clients", "no"]
                listen += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
                listen += ["--tls-client-cert-file", str(self.tls.client_cert)]
                listen += ["--tls-client-key-file", str(self.tls.client_key)]
                listen += ["--tls-ca-cert-file", str(self.tls.ca)]
            if self.password is not None:
                listen += ["--requirepass", self.password, "--masterauth", self.password]
            node.proc = subprocess.Popen(
                [
                    self.binary,
                    *listen,
                    *EPHEMERAL,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    str(node.bus_port),
                    "--cluster-config-file",
                    str(node.workdir / "nodes.conf"),
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    "--dir",
                    str(node.workdir),
                    "--logfile",
                    str(log),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_for_port(node.port, timeout_s=30, proc=node.proc)
                node.client().ping()  # (listening is not yet serving: TLS, the password)
                return node
            except (RuntimeError, redis.RedisError, OSError):
                pass
            why = log.read_text()[-2000:] if log.exists() else f"exit status {node.proc.poll()}, no log"
            self._stop(node)
            shutil.rmtree(node.workdir, ignore_errors=True)
        raise RuntimeError(f"could not start a cluster-enabled redis-server; the last one said:\n{why}")

    def wait_ok(self, timeout_s: float = 60.0) -> None:
        """Until every live node reports the cluster ok and knows every node, every slot is served by a
        live primary, and every live replica is in sync with its primary."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                last = self._not_ok()
            except redis.RedisError as exc:
                last = repr(exc)
            if not last:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not settle within {timeout_s:.0f}s: {last}")

    def _not_ok(self) -> str:
        live = [n for n in self.nodes if n.alive()]
        for node in live:
            info = node.client().cluster("INFO")
            if info.get("cluster_state") != "ok":
                return f"{node.address}: cluster_state {info.get('cluster_state')}"
            if int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                return f"{node.address}: knows {info.get('cluster_known_nodes')} nodes"
            replication = node.client().info("replication")
            if replication["role"] == "slave" and (
                replication.get("master_link_status") != "up" or replication.get("master_sync_in_progress")
            ):
                return f"{node.address}: replica not in sync"
        for port in {self.primary_of_slot(slot).port for slot in (0, 8191, 16383)}:
            if not self.node(port).alive():
                return f"a slot is still served by the stopped node on port {port}"
        return ""

    def primaries_now(self) -> list[Node]:
        """The live nodes that are primaries now."""
        return [n for n in self.nodes if n.alive() and n.client().info("replication")["role"] == "master"]

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def primary_of_slot(self, slot: int) -> Node:
        """The primary serving ``slot`` now, as a live node sees it."""
        seed = next(n for n in self.nodes if n.alive())
        for start, end, primary, *_ in seed.client().execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
            if start <= slot <= end:
                return self.node(int(primary[1]))
        raise LookupError(f"no node serves slot {slot}")

    def primary_of_key(self, key: str) -> Node:
        seed = next(n for n in self.nodes if n.alive())
        return self.primary_of_slot(int(seed.client().cluster("KEYSLOT", key)))

    def replicas_of(self, primary: Node) -> list[Node]:
        node_id = primary.client().cluster("MYID")
        return [
            n
            for n in self.nodes
            if n.alive()
            and n.client().info("replication").get("master_port") == primary.port
            and n.client().cluster("MYID") != node_id
        ]

    def kill(self, node: Node) -> None:
        """SIGKILL: the node vanishes mid-traffic, as a crashed pod does."""
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait(timeout=10)

    @staticmethod
    def _stop(node: Node) -> None:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.terminate()
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(timeout=10)

    def flush(self) -> None:
        for node in self.nodes:
            if node.alive() and node.client().info("replication")["role"] == "master":
                node.client().flushall()
                node.client().script_flush()

    def close(self) -> None:
        for node in self.nodes:
            self._stop(node)
            shutil.rmtree(node.workdir, ignore_errors=True)
        self.nodes.clear()
