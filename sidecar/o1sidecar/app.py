"""The sidecar's aiohttp application and an embeddable in-process server.

``create_app(config)`` builds the proxy app (OpenAI API surface + health); ``start_sidecar(config)``
serves it and the metrics app on their configured (or ephemeral) ports and returns a handle.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from o1sidecar.audit import AuditLog
from o1sidecar.cache import ResponseCache
from o1sidecar.clients import Clients
from o1sidecar.coalescing import Coalescer
from o1sidecar.config import ConfigError, SidecarConfig
from o1sidecar.controls import parse_controls
from o1sidecar.demand import DemandCounts, DemandRecorder
from o1sidecar.errors import ProxyError
from o1sidecar.httplog import quiet_malformed_http
from o1sidecar.identity import Identity
from o1sidecar.inbound import (
    CHAT,
    EMBEDDINGS,
    RESPONSES,
    Endpoint,
    discard_unread_body,
    parse_body,
    read_body,
)
from o1sidecar.keyfiles import KeyFiles
from o1sidecar.limits.api import Limiter
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.limits.redis_store import redis_client
from o1sidecar.limits.shared import SharedLimiter
from o1sidecar.metrics import NO_KEY, SidecarMetrics, create_metrics_app
from o1sidecar.outage_sync import SharedOutages
from o1sidecar.outages import ModelOutages
from o1sidecar.poolsync import PoolSync, SyncPart
from o1sidecar.prediction import PredictionMirror
from o1sidecar.proxy import Proxy
from o1sidecar.quarantine import SharedQuarantine
from o1sidecar.spend import SpendRecorder
from o1sidecar.tokens import TokenCounter
from o1sidecar.tracing import Tracing
from o1sidecar.upstream import load_routes

log = logging.getLogger("o1sidecar")

PROXY_KEY = web.AppKey("o1sidecar.proxy", Proxy)
READY_KEY = web.AppKey("o1sidecar.ready", asyncio.Event)  # set while the sidecar takes requests


def _default_limiter(config: SidecarConfig) -> Limiter:
    from o1sidecar.limits import build_limiter

    return build_limiter(config)


def create_app(
    config: SidecarConfig,
    *,
    limiter: Limiter | None = None,
    counter: TokenCounter | None = None,
) -> web.Application:
    """The proxy app. Keys are read now (errors name the key's source). The app starts and closes the
    limiter (``build_limiter(config)`` unless one is given), loads token encodings at startup and owns
    one pooled HTTP session to the upstreams. ``app[PROXY_KEY].metrics`` holds its metrics."""
    quiet_malformed_http()
    routes = load_routes(config)
    limiter = limiter if limiter is not None else _default_limiter(config)
    metrics = SidecarMetrics(limiter.state)
    outages = ModelOutages(config.fallback.outage_failures, config.fallback.outage_probe_s)
    metrics.watch_models(config.served_models(), outages.availability)
    metrics.start_at_zero([key.label for route in routes.values() for key in route.keys])
    quarantine, outage_sync, demand, prediction, spend, sync = None, None, None, None, None, None
    identity = Identity.from_env()
    clients = Clients(config, identity)
    metrics.watch_budgets([c for c in clients.served() if c.budgets.any()], clients.left)
    metrics.identify(identity.as_dict(), clients.names())
    if clients.gateway:
        serving = f"as a gateway for client(s) {', '.join(clients.names())}"
    else:
        who = identity.workload or "a workload without the webhook's identity"
        serving = f"{who} (client {clients.own.name if clients.own else 'none'})"
    if config.redis.url is not None:
        keys = PoolKeys(config.redis.key_prefix, config.pool.namespace, config.pool.name)
        shared = redis_client(config.redis)  # (the parts' own calls, and their sync every interval)
        quarantine = SharedQuarantine(shared, keys, routes)
        outage_sync = SharedOutages(shared, keys, outages, config.served_models())
        demand = DemandRecorder(shared, keys, DemandCounts(), config.served_models())
        prediction = PredictionMirror(shared, keys)
        parts: list[SyncPart] = [quarantine, outage_sync, demand, prediction]
        if clients.names():
            spend = SpendRecorder(shared, keys, clients.ledger, clients.names())
            parts.append(spend)
        carrier = limiter if isinstance(limiter, SharedLimiter) else None  # (its heartbeat carries it)
        sync = PoolSync(shared, parts, config.redis.heartbeat_interval_s, carrier)
    tracing = Tracing(config)
    cache = ResponseCache(
        config.cache,
        config.redis,
        config.pool,
        suggested_ttl_s=prediction.cache_ttl_s if prediction is not None else lambda: None,
        observe=tracing.observing(metrics.cache_layer),
    )
    coalescer = Coalescer(cache, None, None, "")
    if config.redis.url is not None and cache.has_l2:  # (across sidecars through the pool's cache)
        pool_keys = PoolKeys(config.redis.key_prefix, config.pool.namespace, config.pool.name)
        coalescer = Coalescer(cache, redis_client(config.redis), pool_keys, uuid.uuid4().hex)
    proxy = Proxy(
        config,
        limiter,
        routes,
        counter or TokenCounter(),
        cache,
        metrics,
        quarantine,
        outages,
        outage_sync,
        demand,
        prediction,
        coalescer,
        tracing,
        AuditLog(config.audit, config.pool, identity),
        clients,
        spend,
        sync,
    )
    app = web.Application(
        client_max_size=config.max_body_bytes + 1,
        middlewares=[discard_unread_body(config.timeouts.request_body_s)],
    )
    app[PROXY_KEY] = proxy
    ready = app[READY_KEY] = asyncio.Event()
    key_files = KeyFiles(config, routes, lambda label: metrics.key_renewals.labels(label).inc())

    async def on_startup(_app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, proxy.counter.load)
        await tracing.start()
        await proxy.start()
        await limiter.start()
        await key_files.start()
        ready.set()
        log.info(
            "sidecar ready: pool %s/%s, %d account(s) at %s, models %s, limiter %s, serving %s",
            config.pool.namespace,
            config.pool.name,
            len(config.accounts),
            ", ".join(sorted({a.base_url for a in config.accounts})),
            ", ".join(proxy.models),
            limiter.state().mode,
            serving,
        )

    draining: list[asyncio.Task[None]] = []

    async def on_shutdown(_app: web.Application) -> None:
        # Draining: out of rotation at once; calls already sent finish (within shutdown.grace_s, the
        # runner's shutdown timeout); waiting requests are handed back after shutdown.queue_s.
        ready.clear()
        log.info(
            "draining: waiting requests are handed back in %gs, calls in flight get %gs",
            config.shutdown.queue_s,
            config.shutdown.grace_s,
        )

        async def hand_back() -> None:
            await asyncio.sleep(config.shutdown.queue_s)
            await limiter.drain()

        draining.append(asyncio.get_running_loop().create_task(hand_back()))

    async def on_cleanup(_app: web.Application) -> None:
        for task in draining:
            task.cancel()
        await key_files.close()
        await limiter.close()
        await proxy.close()
        await proxy.cache.close()
        await tracing.close()  # (the requests' spans have ended: they reach the collector now)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)

    def endpoint_handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                client = clients.of_request(request.headers.get("Authorization"))
                controls = parse_controls(request.headers, config.queue)
                raw = await read_body(request, config.max_body_bytes, config.timeouts.request_body_s)
                body = parse_body(raw, endpoint)
            except ProxyError as exc:
                metrics.requests.labels(str(exc.status), NO_KEY, NO_KEY).inc()
                request_id = proxy.audit.refused(request, exc.status, exc.code or exc.type)
                return exc.response({"x-o1pool-request-id": request_id} if request_id else None)
            return await proxy.handle(proxy.exchange(request, endpoint, raw, body, controls, client))

        return handler

    async def models(_request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "o1pool"} for m in proxy.models]
        return web.json_response({"object": "list", "data": data})

    async def model(request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name not in proxy.models:
            return ProxyError(
                404,
                f"The model `{name}` is not served by this pool; see GET /v1/models.",
                code="model_not_found",
            ).response()
        return web.json_response({"id": name, "object": "model", "created": 0, "owned_by": "o1pool"})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        if not ready.is_set():
            return web.json_response({"status": "starting"}, status=503)
        return web.json_response({"status": "ready", "limiter": limiter.state().mode})

    async def not_found(request: web.Request) -> web.Response:
        return ProxyError(
            404,
            f"{request.method} {request.path} is not served by the o1pool sidecar; it serves POST "
            "/v1/chat/completions, /v1/responses, /v1/embeddings and GET /v1/models.",
            code="unknown_url",
        ).response()

    app.router.add_post("/v1/chat/completions", endpoint_handler(CHAT))
    app.router.add_post("/v1/responses", endpoint_handler(RESPONSES))
    app.router.add_post("/v1/embeddings", endpoint_handler(EMBEDDINGS))
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model}", model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/v1/{tail:.*}", not_found)
    return app


@dataclass
class SidecarHandle:
    """A running sidecar: where it listens, its app, and how to stop it."""

    app: web.Application
    url: str  # base URL for OpenAI clients, ending in /v1
    metrics_url: str  # full URL of the Prometheus endpoint
    port: int
    metrics_port: int
    _runners: tuple[web.AppRunner, ...]

    @property
    def proxy(self) -> Proxy:
        return self.app[PROXY_KEY]

    async def close(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()


async def start_sidecar(
    config: SidecarConfig,
    *,
    limiter: Limiter | None = None,
    serve_metrics: bool = True,
    reuse_port: bool = False,
) -> SidecarHandle:
    """Serve the proxy on ``config.listen`` and metrics on ``config.metrics`` (port 0 picks a free
    port) and return once both are listening. ``reuse_port``: another sidecar of this process may
    listen on the same ports at the same time (a config reload: reload.py)."""
    app = create_app(config, limiter=limiter)
    # A client that hangs up cancels its handler: it leaves the queue instead of spending quota.
    # aiohttp closes a connection whose handler waits for a request head longer than its keep-alive
    # timeout, from the connection's start or its last answer: that bounds slow (slowloris) and idle
    # clients alike.
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=config.shutdown.grace_s,
        keepalive_timeout=config.timeouts.request_head_s,
        auto_decompress=False,  # inbound.py decodes gzip/deflate itself, bounded; other encodings: 415
    )
    await runner.setup()
    runners: list[web.AppRunner] = [runner]
    try:
        site = web.TCPSite(
            runner,
            config.listen.host,
            config.listen.port,
            reuse_address=True,
            reuse_port=reuse_port,
            ssl_context=_tls(config),
        )
        await site.start()
        port = _bound_port(runner)
        metrics_port = 0
        metrics_host = config.metrics.host
        if serve_metrics:
            metrics_app = create_metrics_app(app[PROXY_KEY].metrics, app[READY_KEY].is_set)
            metrics_runner = web.AppRunner(metrics_app, access_log=None, handle_signals=False)
            await metrics_runner.setup()
            runners.append(metrics_runner)
            await web.TCPSite(
                metrics_runner, metrics_host, config.metrics.port, reuse_address=True, reuse_port=reuse_port
            ).start()
            metrics_port = _bound_port(metrics_runner)
    except BaseException:
        for r in reversed(runners):
            await r.cleanup()
        raise
    host = _client_host(config.listen.host)
    scheme = "https" if config.gateway.tls_cert_file is not None else "http"
    return SidecarHandle(
        app=app,
        url=f"{scheme}://{host}:{port}/v1",
        metrics_url=f"http://{_client_host(metrics_host)}:{metrics_port}/metrics" if serve_metrics else "",
        port=port,
        metrics_port=metrics_port,
        _runners=tuple(runners),
    )


def _tls(config: SidecarConfig) -> ssl.SSLContext | None:
    """A gateway's TLS context (``gateway.tls_*``); errors name the files."""
    gateway = config.gateway
    if gateway.tls_cert_file is None or gateway.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(gateway.tls_cert_file, gateway.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"gateway TLS: cannot load {gateway.tls_cert_file} with {gateway.tls_key_file}: {exc}"
        ) from None
    return context


def _bound_port(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


def _client_host(host: str) -> str:
    if host in {"0.0.0.0", "", "::"}:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
