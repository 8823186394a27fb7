"""``o1pool operator``: run the kopf operator that reconciles O1Pools, programmatically.

Runs standalone (no kopf peering) by default: the chart deploys one replica with a Recreate strategy,
and a restarted operator re-renders every pool from its resume handler. See docs/operator.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import kopf

DEFAULT_LIVENESS = "http://0.0.0.0:8081/healthz"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="o1pool operator",
        description="Reconcile O1Pool resources into sidecar config (ConfigMap) and keys (Secret).",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable); the default is the kubeconfig's namespace",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    p.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster)"
    )
    peering = p.add_mutually_exclusive_group()
    peering.add_argument(
        "--standalone",
        action="store_true",
        default=True,
        help="run without kopf peering (default; deploy a single replica)",
    )
    peering.add_argument(
        "--peering", metavar="NAME", help="use kopf peering object NAME (needs the KopfPeering CRDs)"
    )
    p.add_argument(
        "--liveness", default=None, metavar="URL", help=f"serve a liveness probe, e.g. {DEFAULT_LIVENESS}"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (never logs key values)")
    return p


def _default_namespace(kubeconfig: str | None) -> str:
    from kubernetes import config

    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    if not (kubeconfig or os.environ.get("KUBECONFIG")) and os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    try:
        _, context = config.list_kube_config_contexts(config_file=kubeconfig)
    except config.ConfigException:
        return "default"
    return str(context.get("context", {}).get("namespace") or "default")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # read by kopf's login and by our client alike

    import o1operator.handlers  # noqa: F401  (registers the handlers)
    from o1operator.kube import Kube, api_client

    kopf.configure(verbose=args.verbose)
    namespaces = [] if args.all_namespaces else args.namespace or [_default_namespace(args.kubeconfig)]
    try:
        kube = Kube(api_client(args.kubeconfig))
    except Exception as exc:  # config errors: say which file, not a traceback
        print(f"o1pool operator: cannot load Kubernetes credentials: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(
            kopf.operator(
                clusterwide=args.all_namespaces,
                namespaces=namespaces,
                standalone=args.peering is None,
                peering_name=args.peering,
                liveness_endpoint=args.liveness,
                memo=kopf.Memo(kube=kube),
            )
        )
    except KeyboardInterrupt:
        return 130
    return 0
