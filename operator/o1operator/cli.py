"""``o1pool operator``: run the kopf operator that reconciles O1Pools, programmatically.

Runs standalone (no kopf peering) by default: the chart deploys one replica with a Recreate strategy,
and a restarted operator re-renders every pool from its resume handler. See docs/operator.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import kopf

DEFAULT_LIVENESS = "http://0.0.0.0:8081/healthz"
SIDECAR_COUNT_INTERVAL_S = 15.0
FORECAST_INTERVAL_S = 300.0
DEFAULT_SIDECAR_IMAGE = "ghcr.io/o1pool/o1pool-sidecar:0.1.0"
DEFAULT_CACHE_IMAGE = "ghcr.io/o1pool/o1pool-cache:0.1.0"


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
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve the operator's Prometheus metrics on PORT (/metrics; off when not given)",
    )
    hook = p.add_argument_group("sidecar injection webhook (off unless --webhook-port is given)")
    hook.add_argument(
        "--webhook-port", type=int, metavar="PORT", help="serve the mutating webhook on PORT (TLS)"
    )
    hook.add_argument("--webhook-cert", metavar="FILE", help="TLS certificate of the webhook (PEM)")
    hook.add_argument("--webhook-key", metavar="FILE", help="TLS private key of the webhook (PEM)")
    p.add_argument(
        "--sidecar-image",
        default=os.environ.get("O1POOL_SIDECAR_IMAGE", DEFAULT_SIDECAR_IMAGE),
        help="image of injected sidecars and of pools' cache services without the semantic layer, when a "
        "pool sets none in spec.injection.image (default: $O1POOL_SIDECAR_IMAGE or %(default)s)",
    )
    p.add_argument(
        "--cache-image",
        default=os.environ.get("O1POOL_CACHE_IMAGE", DEFAULT_CACHE_IMAGE),
        help="image of pools' cache services with spec.cache.semantic: it carries the embedding model "
        "(default: $O1POOL_CACHE_IMAGE or %(default)s)",
    )
    p.add_argument(
        "--sidecar-count-interval",
        type=float,
        default=SIDECAR_COUNT_INTERVAL_S,
        metavar="SECONDS",
        help="how often status.liveSidecars is counted from Redis heartbeats (default %(default)s)",
    )
    p.add_argument(
        "--forecast-interval",
        type=float,
        default=FORECAST_INTERVAL_S,
        metavar="SECONDS",
        help="how often each pool's recorded demand is read and forecast (default %(default)s)",
    )
    p.add_argument(
        "--allowed-upstream-hosts",
        metavar="HOSTS",
        help="comma-separated host patterns an O1Pool account's baseURL may name (e.g. "
        "'api.openai.com,*.openai.azure.com'); a pool naming another host is not rendered "
        "(UpstreamNotAllowed). Default: any host",
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


async def run(
    count_interval_s: float, forecast_interval_s: float, memo: kopf.Memo, **operator_options: Any
) -> None:
    """kopf's operator, plus three operator-wide loops until kopf stops (on a signal): one reads live
    sidecars, refused keys and model outages from each pool's Redis, one assesses each pool's recorded
    demand every ``forecast_interval_s`` and sets the replica floors of its autoscaling targets
    (forecasting.py, autoscale.py), one re-renders every pool every
    ``resync_s`` (not kopf timers: a timer puts a finalizer on every pool)."""
    from o1operator.autoscale import Scaler
    from o1operator.forecasting import forecast_forever
    from o1operator.reconcile import reconcile_pool
    from o1operator.sidecars import observe_forever

    def reconcile_by_name(namespace: str, name: str) -> None:
        pool = memo.kube.get_pool(namespace, name)
        if pool is not None:
            redis = memo.observed.get((namespace, name))
            logger = logging.getLogger("o1operator.sidecars")
            post = memo.kube.post_event
            memo.metrics.reconcile(
                namespace,
                name,
                lambda: reconcile_pool(
                    memo.kube,
                    pool,
                    post,
                    logger,
                    memo.probes,
                    redis=redis,
                    allowed_hosts=memo.allowed_hosts,
                    forecast=memo.forecasts.get((namespace, name)),
                    images=memo.images,
                ),
            )

    loops = [
        asyncio.create_task(
            observe_forever(
                memo.kube,
                memo.probes,
                memo.observed,
                count_interval_s,
                reconcile_by_name,
                memo.metrics.counted,
                memo.metrics.spent,
            )
        ),
        asyncio.create_task(resync_forever(memo.kube, memo.namespaces, memo.resync_s, reconcile_by_name)),
        asyncio.create_task(
            forecast_forever(
                memo.probes,
                memo.forecasts,
                forecast_interval_s,
                reconcile_by_name,
                scaler=Scaler(memo.kube, forecast_interval_s),
            )
        ),
    ]
    try:
        await kopf.operator(memo=memo, **operator_options)
    finally:
        for loop in loops:
            loop.cancel()


async def resync_forever(
    kube: Any, namespaces: list[str], interval_s: float, reconcile: Callable[[str, str], None]
) -> None:
    """Every ``interval_s``: re-render every pool of ``namespaces`` (all when empty). Repairs edits to
    the owned ConfigMap and Secret, and catches up on a Secret change whose event handler failed
    (kopf does not retry event handlers)."""
    log = logging.getLogger("o1operator.resync")
    while True:
        await asyncio.sleep(interval_s)
        try:
            pools = await asyncio.to_thread(kube.list_pools, namespaces)
        except Exception as exc:  # an API hiccup: try again next period
            log.warning("cannot list O1Pools to re-render them: %s", exc)
            continue
        for namespace, name in pools:
            try:
                await asyncio.to_thread(reconcile, namespace, name)
            except Exception:
                log.exception("O1Pool %s/%s: re-render failed; next try in %gs", namespace, name, interval_s)


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.webhook_port is not None and not (args.webhook_cert and args.webhook_key):
        cli.error("--webhook-port needs --webhook-cert and --webhook-key")
    import o1operator.handlers  # noqa: F401  (registers the handlers)
    from o1operator.cacheservice import Images
    from o1operator.kube import Kube, load_configuration
    from o1operator.metrics import OperatorMetrics

    memo = kopf.Memo()
    memo.metrics = OperatorMetrics()
    if args.webhook_port is not None:
        from o1operator.webhook import WebhookOptions  # registers the admission handler

        memo.webhook = WebhookOptions(
            port=args.webhook_port,
            certfile=args.webhook_cert,
            keyfile=args.webhook_key,
            sidecar_image=args.sidecar_image,
        )
    kopf.configure(verbose=args.verbose)
    namespaces = [] if args.all_namespaces else args.namespace or [_default_namespace(args.kubeconfig)]
    try:
        memo.kube = Kube(load_configuration(args.kubeconfig))
    except Exception as exc:  # config errors: say which file, not a traceback
        print(f"o1pool operator: cannot load Kubernetes credentials: {exc}", file=sys.stderr)
        return 2
    memo.probes = {}
    memo.images = Images(sidecar=args.sidecar_image, cache=args.cache_image)
    memo.allowed_hosts = (
        tuple(h.strip().lower() for h in args.allowed_upstream_hosts.split(",") if h.strip())
        if args.allowed_upstream_hosts
        else None
    )
    memo.observed = {}
    memo.forecasts = {}
    memo.namespaces = namespaces
    memo.resync_s = float(os.environ.get("O1POOL_RESYNC_SECONDS", "300"))
    if args.metrics_port is not None:
        try:
            memo.metrics.serve(args.metrics_port)
        except OSError as exc:
            print(
                f"o1pool operator: cannot serve metrics on port {args.metrics_port}: {exc}", file=sys.stderr
            )
            return 2
    try:
        asyncio.run(
            run(
                args.sidecar_count_interval,
                args.forecast_interval,
                memo,
                clusterwide=args.all_namespaces,
                namespaces=namespaces,
                standalone=args.peering is None,
                peering_name=args.peering,
                liveness_endpoint=args.liveness,
            )
        )
    except KeyboardInterrupt:
        return 130
    return 0
