"""``status.liveSidecars``: how many sidecars serve each pool, counted from their Redis heartbeats.

Sidecars register in the pool's ZSET ``{<prefix>:<namespace>/<pool>}:sidecars`` (member: sidecar id,
score: Redis server time of its last heartbeat) and count as live for three heartbeat intervals, the
same rule they use for their fair share (o1sidecar/limits/lua/heartbeat.lua). The operator reads that
count on a fixed period for every pool it has rendered with a Redis; pools without Redis report none.

One operator-wide loop (started next to kopf by the CLI), not a kopf timer: kopf timers put a
finalizer on every pool, which would make deleting a pool wait for the operator.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass

import yaml
from kubernetes.client.exceptions import ApiException
from redis.asyncio import Redis
from redis.exceptions import RedisError

from o1operator.kube import Kube
from o1operator.render import REDIS_PASSWORD_FILE, Rendering
from o1sidecar.limits.keys import PoolKeys

log = logging.getLogger("o1operator.sidecars")

REDIS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class SidecarProbe:
    """Where to count one pool's sidecars. ``password`` is held in memory only (never logged: repr off)."""

    namespace: str
    name: str
    url: str
    key: str
    stale_after_s: float
    password: str | None = None

    def __repr__(self) -> str:
        return f"SidecarProbe({self.namespace}/{self.name}, {self.key})"


# (namespace, pool) -> probe; written by reconcile, read by the counting loop.
Probes = MutableMapping[tuple[str, str], SidecarProbe]


def get_sidecar_probe(rendering: Rendering) -> SidecarProbe | None:
    """The probe for a rendered pool, or None if it has no config or no Redis. Pure."""
    if rendering.config_yaml is None:
        return None
    config = yaml.safe_load(rendering.config_yaml)
    redis = config.get("redis") or {}
    if not redis.get("url"):
        return None
    encoded = rendering.key_data.get(REDIS_PASSWORD_FILE)
    keys = PoolKeys(
        prefix=redis["key_prefix"], namespace=config["pool"]["namespace"], pool=config["pool"]["name"]
    )
    return SidecarProbe(
        namespace=rendering.namespace,
        name=rendering.name,
        url=redis["url"],
        key=keys.sidecars(),
        stale_after_s=3 * float(redis["heartbeat_interval_s"]),
        password=base64.b64decode(encoded).decode().strip() if encoded else None,
    )


async def count_live_sidecars(probe: SidecarProbe) -> int:
    """Sidecars whose last heartbeat is newer than ``stale_after_s``, on Redis server time."""
    client = Redis.from_url(
        probe.url,
        password=probe.password,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
    )
    try:
        seconds, micros = await client.time()
        now = seconds + micros / 1e6
        return int(await client.zcount(probe.key, f"({now - probe.stale_after_s}", "+inf"))
    finally:
        await client.aclose()


async def count_forever(kube: Kube, probes: Probes, interval_s: float) -> None:
    """Every ``interval_s``: count each probed pool's sidecars and patch ``liveSidecars`` when it changed."""
    reported: dict[tuple[str, str], int] = {}
    while True:
        for ref, probe in list(probes.items()):
            try:
                live = await count_live_sidecars(probe)
            except (TimeoutError, RedisError, OSError) as exc:
                log.warning("O1Pool %s/%s: cannot count sidecars in Redis: %s", *ref, type(exc).__name__)
                continue
            if reported.get(ref) == live:
                continue
            try:
                await asyncio.to_thread(
                    kube.patch_status, probe.namespace, probe.name, {"liveSidecars": live}
                )
            except ApiException as exc:
                if exc.status == 404:  # the pool is gone
                    probes.pop(ref, None)
                    reported.pop(ref, None)
                else:
                    log.warning("O1Pool %s/%s: cannot patch liveSidecars: HTTP %s", *ref, exc.status)
                continue
            reported[ref] = live
        await asyncio.sleep(interval_s)
