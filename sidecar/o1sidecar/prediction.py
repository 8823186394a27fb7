"""The pool's published prediction, mirrored from Redis into this sidecar (written by the operator:
o1operator/forecasting.py; its fields: docs/forecast.md).

``peak()``: the operator predicts a high load for the hour under way. Then requests below
``queue.peak_min_priority`` start at the next model of their fallback chain (admission.py), leaving
the requested model to the protected priorities; without a fallback they queue as usual.
``cache_ttl_s()``: the L2 lifetime the prediction suggests for the hour under way (with
``cache.ttl_follows_load``: cache.py). The
prediction expires in Redis if the operator stops refreshing it, and a malformed one counts as none:
the sidecar then works as configured.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from o1sidecar.limits.connect import RedisClient
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.poolsync import Op, Sync, SyncPart

log = logging.getLogger("o1sidecar.prediction")

LOADS = ("low", "medium", "high")
MAX_TTL_S = 30 * 86_400  # a cache TTL beyond this is not one the operator publishes


@dataclass(frozen=True)
class Published:
    load: str
    hour: datetime  # the hour the prediction is for (UTC)
    cache_ttl_s: int | None = None  # cacheTTLSeconds, when present and sane


def parse(raw: str | bytes | None) -> Published | None:
    """The prediction the operator published, or None (absent or malformed)."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        load, hour = data["load"], datetime.strptime(data["hour"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (ValueError, KeyError, TypeError):
        return None
    ttl = data.get("cacheTTLSeconds")
    ttl = ttl if isinstance(ttl, int) and not isinstance(ttl, bool) and 0 < ttl <= MAX_TTL_S else None
    return Published(load, hour, ttl) if load in LOADS else None


class PredictionMirror(SyncPart):
    """The pool's prediction, read every interval; ``peak()`` says whether it is a high load now."""

    what = "the pool's prediction"

    def __init__(self, client: RedisClient, keys: PoolKeys) -> None:
        super().__init__(client)
        self._keys = keys
        self.current: Published | None = None

    def sync(self) -> Sync:
        return Sync([Op("get", self._keys.prediction())], lambda replies, _now: self._take(replies[0]))

    def _take(self, raw: str) -> None:
        published = parse(raw or None)
        if published != self.current:
            log.info("pool prediction: %s", "none" if published is None else f"{published.load} load")
        self.current = published

    def peak(self, now: datetime | None = None) -> bool:
        """A high load predicted for the hour under way (a prediction of another hour does not count)."""
        p = self._under_way(now)
        return p is not None and p.load == "high"

    def cache_ttl_s(self, now: datetime | None = None) -> int | None:
        """The cache TTL the prediction for the hour under way suggests, if any."""
        p = self._under_way(now)
        return None if p is None else p.cache_ttl_s

    def _under_way(self, now: datetime | None) -> Published | None:
        p = self.current
        now = now or datetime.now(UTC)
        return p if p is not None and p.hour <= now < p.hour + timedelta(hours=1) else None
