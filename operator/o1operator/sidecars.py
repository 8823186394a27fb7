"""What the operator reads from a pool's Redis: live sidecars, refused keys and model outages.

``status.liveSidecars``: sidecars register in the pool's ZSET ``{<prefix>:<namespace>/<pool>}:sidecars``
(member: sidecar id, score: Redis server time of its last heartbeat) and count as live for three
heartbeat intervals (``RedisConfig.live_for_s``, the rule the sidecars use for their fair share).

``status.refusedKeys`` and the ``KeysReady`` condition: the keys the upstream refused, from the pool's
HASH of refused keys (o1sidecar/quarantine.py). An entry whose fingerprint is not that of the key's
value in the pool's Secret (the key was rotated, or left the spec) is deleted: a rotation lifts the
quarantine. The ``ModelsAvailable`` condition: the models failing on every account or ramping back, from the
pool's HASH of outages (o1sidecar/outage_sync.py). A change of either re-reconciles the pool (status,
conditions, an event).

``status.usage`` (the ``-o wide`` columns ``RPM Use`` and ``429s 5m``): from the demand HASHes the
sidecars write (o1sidecar/demand.py), the upstream calls and upstream 429s of the requests that arrived
in the last ``USAGE_MINUTES`` complete minutes, by the model called; the RPM use is the highest, over
the pool's models, of those calls per minute against the configured RPM of the model's accounts
(reserve accounts included).

``status.spend``: what each of the pool's clients spent in the UTC day and month under way (on Redis
time), from the spend HASHes the sidecars add to (o1sidecar/spend.py), for pools with clients.

The operator reads all of these on a fixed period, in one round trip, for every pool it has rendered
with a Redis; pools without Redis report none.

One operator-wide loop (started next to kopf by the CLI), not a kopf timer: kopf timers put a
finalizer on every pool, which would make deleting a pool wait for the operator.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException
from redis.asyncio import Redis

from o1common.keyprint import key_fingerprint
from o1operator.demand import field_number
from o1operator.kube import Kube
from o1operator.prediction import ForecastSettings
from o1operator.render import REDIS_PASSWORD_FILE, Rendering
from o1operator.status import RedisView
from o1sidecar.limits.connect import REDIS_FAILURES, SERVER_TIME, RedisClient, cluster_client, server_time
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.outage_sync import read_states
from o1sidecar.outages import ModelState
from o1sidecar.quarantine import RefusedKey, read_refused
from o1sidecar.spend import ClientSpend, day_period, month_period, spend_fields, spend_of

log = logging.getLogger("o1operator.sidecars")

REDIS_TIMEOUT_S = 2.0
USAGE_MINUTES = 5


@dataclass(frozen=True)
class SidecarProbe:
    """Where to count one pool's sidecars. ``password`` is held in memory only (never logged: repr off)."""

    namespace: str
    name: str
    url: str
    key: str
    stale_after_s: float  # o1sidecar.config.RedisConfig.live_for_s: the sidecars' own rule
    pool_keys: PoolKeys  # every key of the pool (the demand HASHes: forecasting.py)
    models: tuple[str, ...] = ()  # the models the pool serves
    password: str | None = None
    cluster: bool = False  # the url names one node of a Redis Cluster (o1sidecar.config.RedisConfig)
    refused_key: str = ""  # the pool's HASH of refused keys
    outages_key: str = ""  # the pool's HASH of models not up
    fingerprints: tuple[tuple[str, str], ...] = ()  # (account/key, fingerprint of its value) per key
    rpm: tuple[tuple[str, int], ...] = ()  # (model, configured RPM of all its accounts) per served model
    clients: tuple[str, ...] = ()  # the pool's clients, in the config's order (status.spend)
    forecasting: ForecastSettings = field(
        default_factory=ForecastSettings
    )  # spec.forecasting: how demand is judged

    def __repr__(self) -> str:
        return f"SidecarProbe({self.namespace}/{self.name}, {self.key})"


@dataclass(frozen=True)
class Usage:
    """The pool's recent use of its accounts, as ``status.usage`` shows it."""

    calls_per_minute: float  # upstream calls per minute, all models
    rpm_use: float  # the highest share of a model's configured RPM used (0.42: 42%)
    upstream_429s: int  # upstream 429 answers

    def status(self) -> dict[str, Any]:
        return {
            "rpmUse": f"{self.rpm_use:.0%}",
            "callsPerMinute": round(self.calls_per_minute, 1),
            "upstream429s": self.upstream_429s,
            "minutes": USAGE_MINUTES,
        }


def get_usage(
    rpm: Sequence[tuple[str, int]], calls: Mapping[str, float], rate_limited: Mapping[str, float]
) -> Usage:
    """``calls`` and ``rate_limited``: each model's upstream calls and 429s over ``USAGE_MINUTES``. Pure."""
    per_minute = {model: calls.get(model, 0.0) / USAGE_MINUTES for model, _ in rpm}
    use = max((per_minute[model] / limit for model, limit in rpm if limit > 0), default=0.0)
    return Usage(sum(per_minute.values()), use, int(sum(rate_limited.values())))


def get_spend(spend: Sequence[tuple[str, ClientSpend]]) -> list[dict[str, Any]]:
    """``status.spend``: each client's spend, dollars to 4 decimals. Pure."""
    return [
        {
            "client": name,
            "todayUsd": round(spent.today.usd, 4),
            "monthUsd": round(spent.month.usd, 4),
            "todayTokens": spent.today.tokens,
            "monthTokens": spent.month.tokens,
        }
        for name, spent in spend
    ]


def usage_fields(now_s: float) -> list[tuple[int, str, str]]:
    """(day, calls field, 429s field) of each of the last ``USAGE_MINUTES`` complete minutes (demand.py)."""
    this_minute = int(now_s // 60)
    out = []
    for minute in range(this_minute - USAGE_MINUTES, this_minute):
        day, of_day = divmod(minute, 1440)
        out.append((day, f"{of_day}:u", f"{of_day}:z"))
    return out


@dataclass(frozen=True)
class Observation:
    live: int
    refused: tuple[RefusedKey, ...]
    outages: tuple[tuple[str, ModelState], ...] = ()  # models not up, on Redis time
    usage: Usage | None = None
    spend: tuple[tuple[str, ClientSpend], ...] | None = None  # per client; None: the pool has no clients


# (namespace, pool) -> probe; written by reconcile, read by the observing loop.
Probes = MutableMapping[tuple[str, str], SidecarProbe]
# (namespace, pool) -> what the observing loop last read from its Redis; read by reconcile.
Observed = MutableMapping[tuple[str, str], RedisView]


def get_sidecar_probe(
    rendering: Rendering, forecasting: ForecastSettings | None = None
) -> SidecarProbe | None:
    """The probe for a rendered pool, or None if it has no config or no Redis. Pure."""
    config = rendering.config
    url = None if config is None else config.redis.url
    if config is None or url is None:
        return None
    redis = config.redis
    encoded = rendering.key_data.get(REDIS_PASSWORD_FILE)
    keys = PoolKeys(prefix=redis.key_prefix, namespace=config.pool.namespace, pool=config.pool.name)
    fingerprints = tuple(
        (label, key_fingerprint(label, base64.b64decode(rendering.key_data[k.file_name]).decode().strip()))
        for k in rendering.keys
        if k.ready
        for label in [f"{k.account}/{k.name}"]
    )
    return SidecarProbe(
        namespace=rendering.namespace,
        name=rendering.name,
        url=url,
        key=keys.sidecars(),
        stale_after_s=redis.live_for_s,
        pool_keys=keys,
        models=tuple(config.served_models()),
        password=base64.b64decode(encoded).decode().strip() if encoded else None,
        cluster=redis.cluster,
        refused_key=keys.refused_keys(),
        outages_key=keys.outages(),
        fingerprints=fingerprints,
        forecasting=forecasting or ForecastSettings(),
        rpm=tuple(
            (model, sum(limits.rpm for a in config.accounts_for(model) if (limits := a.limits_for(model))))
            for model in config.served_models()
        ),
        clients=tuple(c.name for c in config.clients),
    )


def probe_client(probe: SidecarProbe) -> RedisClient:
    """A client of the pool's Redis for the operator's reads (short timeouts; the caller closes it): a
    Redis Cluster client seeded by the url's node when the pool's Redis is a cluster."""
    settings: dict[str, Any] = dict(
        password=probe.password, socket_connect_timeout=REDIS_TIMEOUT_S, decode_responses=True
    )
    if probe.cluster:
        return cluster_client(probe.url, op_timeout_s=REDIS_TIMEOUT_S, **settings)
    return Redis.from_url(probe.url, socket_timeout=REDIS_TIMEOUT_S, **settings)


async def observe(probe: SidecarProbe) -> Observation:
    """Sidecars whose last heartbeat is newer than ``stale_after_s`` (on Redis server time), the
    refused keys of the values the pool holds now (entries of other values are deleted), the model
    outages, the recent usage and the clients' spend of the day and month under way."""
    client = probe_client(probe)
    try:
        # TIME of the server that holds the pool's keys (the clock the sidecars' heartbeats are on)
        now = server_time(await client.eval(SERVER_TIME, 1, probe.key))
        minutes = usage_fields(now)
        async with client.pipeline(transaction=False) as pipe:
            pipe.zcount(probe.key, f"({now - probe.stale_after_s}", "+inf")
            pipe.hgetall(probe.refused_key)
            pipe.hgetall(probe.outages_key)
            for model, _ in probe.rpm:
                for day, calls_field, rate_limited_field in minutes:
                    pipe.hmget(probe.pool_keys.demand(model, day), calls_field, rate_limited_field)
            fields = spend_fields(probe.clients)
            if probe.clients:  # (the HMGETs of o1sidecar.spend.read_spend)
                pipe.hmget(probe.pool_keys.spend(day_period(now)), fields)
                pipe.hmget(probe.pool_keys.spend(month_period(now)), fields)
            live, entries, outage_entries, *recorded = await pipe.execute()
        spend = None
        if probe.clients:
            *recorded, day_values, month_values = recorded
            spent = spend_of(probe.clients, day_values, month_values)
            spend = tuple((name, spent[name]) for name in probe.clients)
        calls: dict[str, float] = {}
        rate_limited: dict[str, float] = {}
        for i, (model, _) in enumerate(probe.rpm):
            for a, z in recorded[i * len(minutes) : (i + 1) * len(minutes)]:
                calls[model] = calls.get(model, 0.0) + field_number(a)
                rate_limited[model] = rate_limited.get(model, 0.0) + field_number(z)
        outages = tuple(
            (model, st)
            for model, st in sorted(read_states(outage_entries, now).items())
            if st.share(now) < 1.0
        )
        current = dict(probe.fingerprints)
        refused = {e.label: e for e in read_refused(entries)}
        kept = tuple(e for e in refused.values() if current.get(e.label) == e.fingerprint)
        stale = sorted(set(entries) - {e.label for e in kept})  # rotated, gone from the spec, or malformed
        if stale:
            await client.hdel(probe.refused_key, *stale)
        return Observation(int(live), kept, outages, get_usage(probe.rpm, calls, rate_limited), spend)
    finally:
        await client.aclose()


def redis_error(exc: BaseException) -> str:
    """What went wrong, for the pool's status: the error's kind and its first line (no credentials:
    redis-py's messages name the host and port, never the password)."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _report(
    observed: Observed, ref: tuple[str, str], view: RedisView, on_change: Callable[[str, str], None]
) -> None:
    """Record ``view`` and re-reconcile the pool when it changed."""
    if observed.get(ref) == view:
        return
    observed[ref] = view
    try:
        await asyncio.to_thread(on_change, *ref)
    except ApiException as exc:
        log.warning("O1Pool %s/%s: cannot report what its Redis says: HTTP %s", *ref, exc.status)


async def observe_forever(
    kube: Kube,
    probes: Probes,
    observed: Observed,
    interval_s: float,
    on_change: Callable[[str, str], None],
    on_count: Callable[[str, str, int], None] = lambda namespace, name, live: None,
    on_spend: Callable[[str, str, Mapping[str, ClientSpend]], None] = lambda namespace, name, spend: None,
) -> None:
    """Every ``interval_s``: observe each probed pool; patch ``liveSidecars``, ``usage`` and ``spend``
    when they changed; when its refused keys or model outages changed, record them in ``observed`` and
    call ``on_change(namespace, name)`` (in a thread) to re-reconcile the pool; ``on_count(namespace,
    name, live)`` and ``on_spend(namespace, name, spend by client)`` after each read (the operator's
    metrics)."""
    # What was last patched, and for which probe: each reconciliation makes a new probe, and may have
    # removed status.spend (status.py), so the first read after one patches again.
    reported: dict[tuple[str, str], tuple[SidecarProbe, dict[str, Any]]] = {}
    while True:
        for ref, probe in list(probes.items()):
            try:
                seen = await observe(probe)
            except REDIS_FAILURES as exc:  # (TimeoutError is an OSError)
                log.warning("O1Pool %s/%s: cannot read its Redis: %s", *ref, type(exc).__name__)
                before = observed.get(ref, RedisView())
                view = RedisView(before.refused, before.outages, error=redis_error(exc))
                await _report(observed, ref, view, on_change)
                continue
            await _report(observed, ref, RedisView(seen.refused, seen.outages), on_change)
            if ref not in probes:  # deleted while it was read (handlers.pool_event): nothing to report
                continue
            on_count(*ref, seen.live)
            on_spend(*ref, dict(seen.spend or ()))
            patch = {
                "liveSidecars": seen.live,
                "usage": seen.usage.status() if seen.usage else None,
                "spend": None if seen.spend is None else get_spend(seen.spend),  # None: removed
            }
            last = reported.get(ref)
            if last is not None and last[0] is probe and last[1] == patch:
                continue
            try:
                await asyncio.to_thread(kube.patch_status, probe.namespace, probe.name, patch)
            except ApiException as exc:
                if exc.status == 404:  # the pool is gone
                    probes.pop(ref, None)
                    reported.pop(ref, None)
                else:
                    log.warning("O1Pool %s/%s: cannot patch its status: HTTP %s", *ref, exc.status)
                continue
            reported[ref] = (probe, patch)
        await asyncio.sleep(interval_s)
