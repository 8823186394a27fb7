"""``make cluster-demo``: ``make demo``'s burst, from real pods on a real node.

It builds the images (cached), brings a one-node cluster up on this machine (tests/kube/node.py),
``helm install``s the chart, runs Redis and the emulator (the demo's two accounts) as pods behind
Services, applies an O1Pool, and runs the app as a Job of two pods annotated ``o1pool.io/inject``:
each sends half of the demo's mixed-priority burst with the openai SDK through its injected
sidecar. It prints the same summary table as ``make demo``, then tears everything down.

Needs Linux, root, the Debian packages of ``make sysdeps`` and ``bash hack/kube-testground.sh build``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from o1pool.demo import MODEL, PRIORITY_MIX, DemoSettings, emulator_config, summary
from o1pool.loadgen import Outcome, Planned
from tests.kube.fixtures import Cluster
from tests.kube.images import REPO_ROOT, build_images, default_out_dir
from tests.kube.node import Node, NodeUnavailable, check_host
from tests.kube.testground import Binaries, ControlPlaneNotBuilt, find_binaries
from tests.kube.workloads import app_job, chart_values, dump, emulator, emulator_stats, pool, redis

NAMESPACE = "demo"
POOL = "demo"
RELEASE = "o1pool"
SYSTEM_NAMESPACE = "o1pool-system"
APP_PODS = 2  # as make demo's two sidecars


def _step(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:5.1f}s] {message}", flush=True)


def _wait(cluster: Cluster, *args: str, timeout_s: int) -> None:
    cluster.kubectl("wait", *args, f"--timeout={timeout_s}s", timeout=timeout_s + 30)


def _wait_for_job(cluster: Cluster, timeout_s: float) -> None:
    """Until every pod of the Job ``app`` ended (succeeded or failed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = json.loads(cluster.kubectl("get", "job", "app", "-n", NAMESPACE, "-o", "json").stdout)[
            "status"
        ]
        if status.get("succeeded", 0) + status.get("failed", 0) >= APP_PODS:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the app's Job did not finish within {timeout_s:.0f}s: {status}")
        time.sleep(1)


def app_reports(cluster: Cluster) -> list[dict[str, Any]]:
    """The one window report each app pod printed."""
    pods = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", "app=app", "-o", "name").stdout.split()
    reports = []
    for pod in pods:
        log = cluster.kubectl("logs", pod, "-n", NAMESPACE, "-c", "app").stdout
        reports += [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return reports


def outcomes_of(reports: list[dict[str, Any]]) -> list[Outcome]:
    return [
        Outcome(Planned(at_s=0.0, priority=priority, index=i), status, latency_s=latency, queue_wait_s=wait)
        for report in reports
        for i, (priority, status, wait, latency, _model) in enumerate(report["outcomes"])
    ]


def run(s: DemoSettings, binaries: Binaries) -> int:
    started = time.monotonic()
    archives = build_images(default_out_dir())
    _step(f"images ready ({', '.join(sorted(archives))})", started)
    node = Node(binaries=binaries, images=list(archives.values()))
    node.start()
    stages = ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in node.timings.items())
    _step(f"node Ready at {node.plane.server} ({stages})", started)
    try:
        with tempfile.TemporaryDirectory(prefix="o1pool-helm-") as helm_home:
            cluster = Cluster(plane=node.plane, binaries=binaries, helm_home=Path(helm_home), node=node)
            cluster.helm(
                "install", RELEASE, str(REPO_ROOT / "helm" / "o1pool"), "-n", SYSTEM_NAMESPACE,
                "--create-namespace", "--values", "-", "--wait", "--timeout", "180s",
                input=yaml.safe_dump(chart_values()), timeout=240,
            )  # fmt: skip
            _step("chart installed: the operator runs, its webhook is served", started)
            cluster.kubectl("create", "namespace", NAMESPACE)
            cluster.wait_for_service_account(NAMESPACE)
            config = emulator_config(s)
            limits = {MODEL: {"rpm": s.rpm, "tpm": 200_000, "concurrency": 10}}
            keys = {a["name"]: a["keys"][0]["key"] for a in config["accounts"]}
            docs = [
                *redis(),
                *emulator(s.latency_scale, config),
                *pool(POOL, NAMESPACE, dict.fromkeys(keys, limits), keys),
            ]
            cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=dump(docs))
            available = ["--for=condition=Available", "deployment/redis", "deployment/emulator"]
            _wait(cluster, "-n", NAMESPACE, *available, timeout_s=120)
            _wait(cluster, "-n", NAMESPACE, "--for=condition=Ready", f"o1pool/{POOL}", timeout_s=60)
            _step("Redis, the emulator (two accounts) and the O1Pool ready", started)

            per_pod = s.requests // APP_PODS
            mix = ",".join(f"{p}:{w}" for p, w in PRIORITY_MIX)
            load = ["--rate", str(per_pod / s.burst_s), "--window-seconds", str(s.burst_s), "--windows", "1"]
            cluster.kubectl(
                "apply", "-n", NAMESPACE, "-f", "-",
                input=dump([app_job(POOL, APP_PODS, [*load, "--priorities", mix, "--model", MODEL])]),
            )  # fmt: skip
            print(
                f"burst: {per_pod * APP_PODS} requests for {MODEL} over {s.burst_s:.0f}s "
                f"from {APP_PODS} pods "
                f"(priorities high/normal/low 20/50/30%) against two accounts x {s.rpm} RPM",
                flush=True,
            )
            _wait_for_job(cluster, timeout_s=300)
            reports = app_reports(cluster)
            _step(f"the app's pods finished ({len(reports)} reports)", started)
            outcomes = outcomes_of(reports)
            elapsed = max(report["elapsed_s"] for report in reports)
            print()
            print(summary(outcomes, emulator_stats(cluster, NAMESPACE), elapsed, s))
            return 0 if outcomes and all(o.status == 200 for o in outcomes) else 1
    finally:
        node.stop()
        _step("torn down: nothing left running, mounted or configured", started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make cluster-demo", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    try:
        check_host()
        binaries = find_binaries()
    except (NodeUnavailable, ControlPlaneNotBuilt) as missing:
        print(f"cluster-demo: {missing}", file=sys.stderr)
        return 2
    return run(DemoSettings(), binaries)


if __name__ == "__main__":
    sys.exit(main())
