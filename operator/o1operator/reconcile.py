"""One reconciliation of one O1Pool: read its Secrets, render, apply, write status, post events."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from o1operator import cacheservice, gateway
from o1operator.kube import Kube
from o1operator.prediction import Assessment, get_forecast_settings
from o1operator.render import (
    get_config_map,
    get_key_secret,
    key_secret_name,
    referenced_secrets,
    render,
    with_salt,
)
from o1operator.sidecars import Probes, get_sidecar_probe
from o1operator.status import (
    GATEWAY_RENDERED,
    KEYS_READY,
    MODELS_AVAILABLE,
    PEAK_COVERED,
    REDIS_REACHABLE,
    RedisView,
    get_status,
)

NO_REDIS = Assessment(
    None, "NoRedis", "the pool has no Redis: its sidecars record no demand to forecast", None
)

# (pool, type, reason, message) -> None: posts a Kubernetes event about the pool (kopf.event).
PostEvent = Callable[[Mapping[str, Any], str, str, str], None]


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def get_events(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Events worth posting for a status change: (type, reason, message). Pure."""
    events = []
    if after.get("configHash") and after.get("configHash") != before.get("configHash"):
        events.append(
            (
                "Normal",
                "Rendered",
                f"config hash {after['configHash'][:12]} ({after['keysReady']}/{after['keysTotal']} keys)",
            )
        )
    keys_before, keys_after = _condition(before, KEYS_READY), _condition(after, KEYS_READY)
    if keys_after.get("status") == "False" and keys_after.get("message") != keys_before.get("message"):
        events.append(("Warning", keys_after["reason"], keys_after["message"]))
    models_before, models_after = _condition(before, MODELS_AVAILABLE), _condition(after, MODELS_AVAILABLE)
    if models_after.get("status") == "False" and models_after.get("message") != models_before.get("message"):
        events.append(("Warning", models_after["reason"], models_after["message"]))
    if models_after.get("reason") == "Answering" and models_before.get("status") == "False":
        events.append(("Normal", "ModelsAnswering", "every model answers again"))
    redis_before, redis_after = _condition(before, REDIS_REACHABLE), _condition(after, REDIS_REACHABLE)
    if redis_after.get("status") == "False" and redis_before.get("status") != "False":
        events.append(("Warning", "RedisUnreachable", redis_after["message"]))
    peak_before, peak_after = _condition(before, PEAK_COVERED), _condition(after, PEAK_COVERED)
    if peak_after.get("status") == "False" and peak_before.get("status") != "False":  # (not hourly)
        events.append(("Warning", peak_after["reason"], peak_after["message"]))
    gateway_before, gateway_after = _condition(before, GATEWAY_RENDERED), _condition(after, GATEWAY_RENDERED)
    degraded = gateway_after.get("reason") == "DegradedVirtualKeys"  # (not rendered at all: Ready's event)
    if degraded and gateway_after.get("message") != gateway_before.get("message"):
        events.append(("Warning", "DegradedVirtualKeys", gateway_after["message"]))
    ready = _condition(after, "Ready")
    if ready.get("status") == "False" and ready.get("message") != _condition(before, "Ready").get("message"):
        events.append(("Warning", ready["reason"], ready["message"]))
    return events


def apply_cache_service(
    kube: Kube,
    pool: Mapping[str, Any],
    persistent: cacheservice.Persistent | None,
    images: cacheservice.Images,
) -> None:
    """The pool's cache service as its spec says: applied, or deleted if the status says it had one."""
    meta = pool["metadata"]
    if persistent is not None:
        image = cacheservice.image_for(pool, persistent, images)
        for manifest in cacheservice.get_manifests(pool, persistent, image):
            kube.apply(manifest)
    elif (pool.get("status") or {}).get("cacheService"):
        for kind in cacheservice.KINDS:
            kube.delete(kind, meta["namespace"], pool["status"]["cacheService"])


def apply_gateway(
    kube: Kube,
    pool: Mapping[str, Any],
    rendered: gateway.GatewayRendering | None,
    images: cacheservice.Images,
) -> None:
    """The pool's gateway as its spec says: applied when it rendered; left as it is when it did not
    (pods already running keep what they have; the status says why); deleted when the pool no longer
    has one and the status says it had."""
    meta = pool["metadata"]
    if rendered is not None:
        if rendered.error is None:
            for manifest in gateway.get_manifests(pool, rendered, gateway.image_for(pool, images)):
                kube.apply(manifest)
    elif (pool.get("status") or {}).get("gateway"):
        for kind, name in gateway.names_of(meta["name"], pool["status"]["gateway"]).items():
            kube.delete(kind, meta["namespace"], name)


def reconcile_pool(
    kube: Kube,
    pool: Mapping[str, Any],
    post_event: PostEvent,
    logger: logging.Logger,
    probes: Probes | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    redis: RedisView | None = None,
    allowed_hosts: Sequence[str] | None = None,
    forecast: Assessment | None = None,
    images: cacheservice.Images = cacheservice.NO_IMAGES,
) -> dict[str, Any]:
    """Bring the pool's ConfigMap, Secret, cache service (in one of ``images``: ``image_for``), gateway
    and status in line with its spec and Secrets, and report the
    keys the upstream refused lately, the models not up and whether Redis answers (``redis``: read by
    sidecars.py) and its forecast (``forecast``: forecasting.py); ``allowed_hosts``: the host patterns
    an account's baseURL may name (None: any).
    Returns the status."""
    meta = pool["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    read = kube.read_secrets(namespace, referenced_secrets(pool["spec"]) | {key_secret_name(name)})
    secrets = with_salt(read, name)  # the config hash's salt: kept in the pool's own key Secret
    rendering = render(pool, secrets, allowed_hosts)
    rendered_gateway = gateway.render_gateway(pool, rendering, secrets)
    probe = get_sidecar_probe(
        rendering, get_forecast_settings(pool["spec"])
    )  # None: no Redis, nothing to observe
    if rendering.error is None:
        kube.apply(get_config_map(pool, rendering))
        kube.apply(get_key_secret(pool, rendering))
        apply_cache_service(kube, pool, rendering.cache_service, images)
        apply_gateway(kube, pool, rendered_gateway, images)
        if probes is not None:
            if probe is None:
                probes.pop((namespace, name), None)
            else:
                probes[namespace, name] = probe
    if probe is None:  # not rendered (keep what was said), or no Redis: nothing recorded or forecast
        redis, forecast = None, (NO_REDIS if rendering.config is not None else None)
    status = get_status(pool, rendering, now(), redis, forecast, rendered_gateway)
    kube.patch_status(namespace, name, status)
    for type_, reason, message in get_events(pool.get("status") or {}, status):
        post_event(pool, type_, reason, message)
    logger.info(
        "O1Pool %s/%s reconciled: keys %d/%d, accounts %d/%d, %s",
        namespace,
        name,
        rendering.keys_ready,
        len(rendering.keys),
        rendering.accounts_ready,
        rendering.accounts_total,
        f"config hash {rendering.config_hash[:12]}"
        if rendering.config_hash
        else f"not rendered ({rendering.error.reason if rendering.error else ''})",
    )
    return status
