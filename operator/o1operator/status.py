"""The O1Pool status the operator writes: conditions in the standard metav1.Condition form and counters.

Pure: computed from the pool (its generation and previous conditions), a Rendering, and the time.

Ready rule: Ready is True when the current spec is rendered into the ConfigMap and Secret and at least
one key is usable; missing keys then only make KeysReady False (the pool serves with the keys that
exist). Ready is False when nothing could be rendered for the current spec (sidecars keep the last
config that rendered), or when the pool's gateway could not be (it keeps what it runs). A gateway that
runs without some of its virtual keys leaves Ready True (``DegradedVirtualKeys``), naming them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from o1operator.cacheservice import cache_service_name
from o1operator.gateway import GatewayRendering
from o1operator.prediction import Assessment
from o1operator.render import Rendering
from o1sidecar.outages import ModelState
from o1sidecar.quarantine import RefusedKey

READY = "Ready"
KEYS_READY = "KeysReady"
CONFIG_RENDERED = "ConfigRendered"
FORECASTING = "Forecasting"
MODELS_AVAILABLE = "ModelsAvailable"
REDIS_REACHABLE = "RedisReachable"
PEAK_COVERED = "PeakCovered"
GATEWAY_RENDERED = "GatewayRendered"
CONDITION_TYPES = (
    READY,
    KEYS_READY,
    CONFIG_RENDERED,
    MODELS_AVAILABLE,
    REDIS_REACHABLE,
    FORECASTING,
    PEAK_COVERED,
    GATEWAY_RENDERED,
)


@dataclass(frozen=True)
class RedisView:
    """What the operator last read from a pool's Redis (sidecars.py): the keys the upstream refused
    (entries for the current key values), the models not up (on Redis time), or why it could not read."""

    refused: tuple[RefusedKey, ...] = ()
    outages: tuple[tuple[str, ModelState], ...] = ()
    error: str | None = None


MAX_MESSAGE = 2048


def timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, status: bool | None, reason: str, message: str, generation: int) -> dict[str, Any]:
    """A condition without lastTransitionTime (set by :func:`merge_conditions`)."""
    text = {True: "True", False: "False", None: "Unknown"}[status]
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return {
        "type": type_,
        "status": text,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """``new`` conditions, each keeping its previous lastTransitionTime if its status did not change.
    Previous conditions of other types (written by other components) are kept."""
    old = {c["type"]: c for c in previous}
    merged = []
    for cond in new:
        before = old.pop(cond["type"], None)
        since = timestamp(now)
        if before is not None and before.get("status") == cond["status"] and before.get("lastTransitionTime"):
            since = before["lastTransitionTime"]
        merged.append({**cond, "lastTransitionTime": since})
    return merged + [dict(c) for c in old.values()]


def _at(seconds: float) -> str:
    return timestamp(datetime.fromtimestamp(seconds, UTC))


def describe_refusal(key: RefusedKey) -> str:
    return (
        f"key {key.label} refused by the upstream since {_at(key.since)} ({key.refusals} in a row; "
        f"next try {_at(key.until)}); rotate the key's Secret value or check the account"
    )


def models_condition(outages: Sequence[tuple[str, ModelState]] | None, generation: int) -> dict[str, Any]:
    """``ModelsAvailable`` from the pool's outages (model, state on Redis time; ``None``: not read, the
    pool has no Redis or it could not be reached)."""
    if outages is None:
        return condition(
            MODELS_AVAILABLE,
            None,
            "NotObserved",
            "the operator has not read the pool's model outages (the pool has no Redis, or it could not be "
            "reached); each sidecar still tracks them (metric o1_api_model_availability)",
            generation,
        )
    down = [(m, st) for m, st in outages if st.phase == "down"]
    ramping = [(m, st) for m, st in outages if st.phase == "ramp"]
    back = "; ".join(
        f"{m} answering again since {_at(st.since)}, ramping back (10%, 25%, 50% of its requests, "
        f"{st.step_s:.0f} s each, then all)"
        for m, st in ramping
    )
    if down:
        lines = [
            f"{m} failing on every account since {_at(st.since)}: nothing is sent to it but one probe "
            f"(next at {_at(st.probe_at)}); its requests go to their fallback models or the cache, or "
            "get 503"
            for m, st in down
        ]
        return condition(
            MODELS_AVAILABLE, False, "ModelsDown", "; ".join(lines + ([back] if back else [])), generation
        )
    if ramping:
        return condition(MODELS_AVAILABLE, True, "Recovering", back, generation)
    return condition(MODELS_AVAILABLE, True, "Answering", "no model is failing on every account", generation)


def redis_condition(rendering: Rendering, redis: RedisView | None, generation: int) -> dict[str, Any]:
    """``RedisReachable``: whether the operator reads the pool's Redis (sidecars share limits there)."""
    if rendering.config is None or rendering.config.redis.url is None:
        message = "the pool has no Redis: each sidecar limits alone on its configured limits"
        return condition(REDIS_REACHABLE, None, "NoRedis", message, generation)
    if redis is None:
        message = "the operator has not read the pool's Redis yet"
        return condition(REDIS_REACHABLE, None, "NotObservedYet", message, generation)
    if redis.error is not None:
        message = (
            f"the operator cannot read the pool's Redis ({redis.error}); sidecars that cannot either "
            "limit on their local share of each limit; check spec.redis and the Redis service"
        )
        return condition(REDIS_REACHABLE, False, "Unreachable", message, generation)
    return condition(REDIS_REACHABLE, True, "Reachable", "the operator reads the pool's Redis", generation)


def gateway_condition(gateway: GatewayRendering, generation: int) -> dict[str, Any]:
    """``GatewayRendered``: whether the pool's gateway is rendered for the current spec, and with which
    of its virtual keys."""
    if gateway.error is not None:
        return condition(GATEWAY_RENDERED, False, gateway.error.reason, gateway.error.message, generation)
    settings = gateway.settings
    what = (
        f"Deployment and Service {gateway.name} ({settings.replicas} replicas, {settings.port_name} on port "
        f"{settings.api_port}) and ConfigMap {gateway.config_map_name}"
    )
    total = len(gateway.keys)
    if gateway.problems:
        return condition(
            GATEWAY_RENDERED,
            True,
            "DegradedVirtualKeys",
            f"{what}, with {gateway.keys_ready} of {total} virtual keys: " + "; ".join(gateway.problems),
            generation,
        )
    return condition(GATEWAY_RENDERED, True, "Rendered", f"{what}, with all {total} virtual keys", generation)


def _with_gateway(ready: dict[str, Any], gateway: GatewayRendering | None, generation: int) -> dict[str, Any]:
    """``Ready`` of a pool whose sidecar config rendered, given its gateway: False if the gateway did not
    render, naming why; still True without some virtual keys, naming them."""
    if gateway is None:
        return ready
    if gateway.error is not None:
        return condition(
            READY,
            False,
            gateway.error.reason,
            f"the gateway {gateway.name} is not served for the current spec: {gateway.error.message} (the "
            "sidecars are: " + ready["message"] + ")",
            generation,
        )
    if not gateway.problems:
        return ready
    reason = "DegradedVirtualKeys" if ready["reason"] == "Serving" else ready["reason"]
    message = (
        f"{ready['message']}; the gateway {gateway.name} without {len(gateway.keys) - gateway.keys_ready} of "
        f"{len(gateway.keys)} virtual keys: " + "; ".join(gateway.problems)
    )
    return condition(READY, True, reason, message, generation)


def get_conditions(
    rendering: Rendering,
    generation: int,
    previous: Sequence[Mapping[str, Any]],
    redis: RedisView | None = None,
    forecast: Assessment | None = None,
    gateway: GatewayRendering | None = None,
) -> list[dict[str, Any]]:
    """``redis``: what the operator last read from the pool's Redis (``None``: nothing yet, or the pool
    has none): refused keys for ``KeysReady``, outages for ``ModelsAvailable``, ``RedisReachable``;
    ``forecast``: the last assessment of its recorded demand, for ``Forecasting``; ``gateway``: the
    pool's gateway as rendered (``None``: it has none, or its sidecar config did not render), for
    ``GatewayRendered`` and ``Ready``."""
    refused = redis.refused if redis is not None else ()
    outages = redis.outages if redis is not None and redis.error is None else None
    total = len(rendering.keys)
    missing = [k.describe_problem() for k in rendering.keys if not k.ready]
    refusals = [describe_refusal(k) for k in refused]
    ready = rendering.keys_ready - len(refused)
    if missing or refusals:
        problems = {k.problem for k in rendering.keys if k.problem}
        reasons = sorted(problems | ({"KeysRefused"} if refused else set()))
        many = "KeysUnusable" if refused else "KeysMissing"
        keys = condition(
            KEYS_READY,
            False,
            reasons[0] if len(reasons) == 1 else many,
            f"{total - ready} of {total} keys unusable: " + "; ".join(missing + refusals),
            generation,
        )
    else:
        keys = condition(KEYS_READY, True, "AllKeysPresent", f"{ready}/{total} keys present", generation)

    if rendering.error is not None:
        rendered = condition(
            CONFIG_RENDERED, False, rendering.error.reason, rendering.error.message, generation
        )
        ready_cond = condition(
            READY,
            False,
            rendering.error.reason,
            "the current spec is not served: " + rendering.error.message,
            generation,
        )
    else:
        rendered = condition(
            CONFIG_RENDERED,
            True,
            "Rendered",
            f"ConfigMap {rendering.config_map_name} and Secret {rendering.secret_name} "
            f"(config hash {(rendering.config_hash or '')[:12]})",
            generation,
        )
        if missing or refusals:
            ready_cond = condition(
                READY,
                True,
                "DegradedKeys",
                f"serving with {ready} of {total} keys ({rendering.accounts_ready} of "
                f"{rendering.accounts_total} accounts); see KeysReady",
                generation,
            )
        else:
            ready_cond = condition(
                READY,
                True,
                "Serving",
                f"serving with all {total} keys of {rendering.accounts_total} accounts",
                generation,
            )

        ready_cond = _with_gateway(ready_cond, gateway, generation)

    models = models_condition(outages, generation)
    conditions = [ready_cond, keys, rendered, models, redis_condition(rendering, redis, generation)]
    if gateway is not None:
        conditions.append(gateway_condition(gateway, generation))
    if forecast is not None:
        conditions.append(
            condition(FORECASTING, forecast.status, forecast.reason, forecast.message, generation)
        )
        conditions.append(peak_condition(forecast, ready, _reserve_keys(rendering, refused), generation))
    elif not any(c.get("type") == FORECASTING for c in previous):
        conditions.append(
            condition(FORECASTING, None, "NoPrediction", "no load prediction published yet", generation)
        )
    return conditions


def peak_condition(
    forecast: Assessment, usable_keys: int, reserve_keys: int, generation: int
) -> dict[str, Any]:
    """``PeakCovered``: whether the pool's usable keys are as many as the brief suggests for the busiest
    hour of the next day (status.prediction.peak); keys of reserve accounts count only for a high
    load, the only one they serve under."""
    peak = (forecast.prediction or {}).get("peak")
    if not peak:
        return condition(PEAK_COVERED, None, "NoPrediction", "no prediction of the next day", generation)
    at = f"{peak['hour'][11:16]} UTC"
    need, load = peak["suggestedKeys"], peak["load"]
    have = usable_keys if load == "high" else usable_keys - reserve_keys
    counted = "usable" if load == "high" or not reserve_keys else "usable outside reserve accounts"
    if have >= need:
        return condition(
            PEAK_COVERED,
            True,
            "KeysCoverPeak",
            f"the busiest hour ahead, {at} ({load} load, up to {peak['upperTokensPerHour']:,} tokens), "
            f"needs about {need} keys' worth of quota; the pool has {have} {counted}",
            generation,
        )
    return condition(
        PEAK_COVERED,
        False,
        "PeakNeedsMoreKeys",
        f"peak at {at} ({load} load, up to {peak['upperTokensPerHour']:,} tokens) needs about {need} "
        f"keys' worth of quota, pool has {have} {counted}: add keys or accounts before then",
        generation,
    )


def _reserve_keys(rendering: Rendering, refused: Sequence[RefusedKey]) -> int:
    """Usable keys of reserve accounts."""
    reserves = {a.name for a in rendering.config.accounts if a.reserve} if rendering.config else set()
    gone = {k.label for k in refused}
    return sum(
        1 for k in rendering.keys if k.ready and k.account in reserves and f"{k.account}/{k.name}" not in gone
    )


def get_refused_keys(refused: Sequence[RefusedKey]) -> list[dict[str, Any]]:
    return [
        {"key": k.label, "since": _at(k.since), "refusals": k.refusals, "nextTry": _at(k.until)}
        for k in refused
    ]


def get_status(
    pool: Mapping[str, Any],
    rendering: Rendering,
    now: datetime,
    redis: RedisView | None = None,
    forecast: Assessment | None = None,
    gateway: GatewayRendering | None = None,
) -> dict[str, Any]:
    """The status patch for ``pool`` after ``rendering`` and its ``gateway`` were applied (or failed to
    render), with what the operator last read from its Redis (``redis``) and its forecast
    (``forecast``; a forecast without a prediction clears the one published)."""
    generation = int(pool["metadata"].get("generation", 0))
    previous = (pool.get("status") or {}).get("conditions") or []
    if rendering.error is None and gateway is None:  # no gateway (any more): its condition goes
        previous = [c for c in previous if c.get("type") != GATEWAY_RENDERED]
    conditions = get_conditions(rendering, generation, previous, redis, forecast, gateway)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(previous, conditions, now),
        "keysReady": rendering.keys_ready,
        "keysTotal": len(rendering.keys),
        "keys": f"{rendering.keys_ready}/{len(rendering.keys)}",
        "accountsReady": rendering.accounts_ready,
        "accountsTotal": rendering.accounts_total,
        "refusedKeys": get_refused_keys(redis.refused if redis is not None else ()),
    }
    if forecast is not None:
        status["prediction"] = forecast.prediction  # None: removed (a merge patch)
    config = rendering.config
    if config is not None and (config.redis.url is None or not config.clients):
        status["spend"] = None  # nothing counted (sidecars.py reads it otherwise): removed (a merge patch)
    if rendering.error is None:
        service = rendering.cache_service
        status |= {
            "configMap": rendering.config_map_name,
            "keySecret": rendering.secret_name,
            "configHash": rendering.config_hash,
            "cacheService": None if service is None else cache_service_name(rendering.name),
        }
        if gateway is None:
            status["gateway"] = None  # (a merge patch: removed)
        elif gateway.error is None:
            status["gateway"] = gateway.name
        # (a gateway that did not render keeps its name: what runs is still there, and deleted once off)
    return status
