"""What the pool's clients asked for, per minute, kept in Redis for the operator's forecasts.

Every answered request counts once, under the model the client asked for (its demand, whichever model
served it), at the minute it arrived (UTC): offered; and, by priority, whether it was admitted to an
upstream, waited in the queue, was refused for lack of capacity (429/503 from the sidecar) or was
answered from the cache, with the tokens it was charged where admission counted them. Counts gather in
memory and go to Redis with the pool's other state in one command (poolsync.py) every
``redis.heartbeat_interval_s`` (no round trip per request), into one HASH per model and UTC day
(``PoolKeys.demand``) kept for ``RETENTION_DAYS``:

- ``<minute of day>:r`` / ``:t`` — requests and tokens offered in that minute (the forecast's input
  and the spread of minutes within an hour);
- ``<minute of day>:u`` / ``:z`` — upstream calls made to this model (every attempt) by the requests
  that arrived in that minute, whichever model they asked for, and how many of them the upstream
  answered 429 (the pool's status: RPM use and recent 429s);
- ``h<hour>:<priority>:<kind>`` — per hour and priority: ``r`` offered, ``a`` admitted, ``q`` queued,
  ``x`` refused, ``c`` cached, ``t`` tokens offered, ``at`` tokens admitted;
- ``h<hour>:live`` — added to by each sidecar's first flush of the hour, requests or not: some sidecar
  was counting in that hour, so an hour without requests had no demand (an hour without the mark is a
  gap in the history).

While Redis is unreachable the counts stay in memory (at most ``MAX_PENDING_MINUTES`` minutes of them;
older ones are dropped with a warning) and go with the next flush that succeeds.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from o1sidecar.limits.connect import RedisClient
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.poolsync import Op, Sync, SyncPart

log = logging.getLogger("o1sidecar.demand")

RETENTION_DAYS = 36  # five weeks of history and the day under way
MAX_PENDING_MINUTES = 1440  # a day
MINUTE_FIELDS = ("r", "t", "u", "z")  # a minute's fields: <minute of day>:<name>
DAY_S = 86_400


def fields_of(
    minute: int,
    priority: int,
    admitted: bool,
    queued: bool,
    refused: bool,
    cached: bool,
    tokens: int,
) -> dict[str, int]:
    """The increments of one request that arrived at ``minute`` (minutes since the epoch)."""
    of_day, hour = minute % 1440, (minute % 1440) // 60
    h = f"h{hour}:{priority}:"
    out = {f"{of_day}:r": 1, f"{h}r": 1}
    if tokens:
        out[f"{of_day}:t"] = tokens
        out[f"{h}t"] = tokens
    for kind, happened in (("a", admitted), ("q", queued), ("x", refused), ("c", cached)):
        if happened:
            out[h + kind] = 1
    if admitted and tokens:
        out[f"{h}at"] = tokens
    return out


class DemandCounts:
    """Counts not yet in Redis: (model, UTC day) -> field -> increment. Pure; the clock is injected."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counts: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._minutes: set[int] = set()
        self.dropped = 0  # requests whose counts were dropped while Redis was away

    def record(
        self,
        model: str,
        priority: int,
        *,
        admitted: bool,
        queued: bool,
        refused: bool,
        cached: bool,
        tokens: int,
        arrived: float | None = None,
    ) -> None:
        minute = int((self._clock() if arrived is None else arrived) // 60)
        fields = fields_of(minute, priority, admitted, queued, refused, cached, tokens)
        self._add(model, minute, fields)

    def called(self, model: str, calls: int, rate_limited: int, arrived: float | None = None) -> None:
        """Upstream calls made to ``model`` (and 429s among them) by a request that arrived then."""
        minute = int((self._clock() if arrived is None else arrived) // 60)
        fields = {f"{minute % 1440}:{name}": n for name, n in (("u", calls), ("z", rate_limited)) if n}
        self._add(model, minute, fields)

    def _add(self, model: str, minute: int, fields: dict[str, int]) -> None:
        counts = self._counts[(model, minute // 1440)]
        for name, value in fields.items():
            counts[name] += value
        self._minutes.add(minute)
        if len(self._minutes) > MAX_PENDING_MINUTES:
            self._drop_oldest()

    def take(self) -> dict[tuple[str, int], dict[str, int]]:
        """Everything counted so far, to be written; the counts start again from nothing."""
        out = {k: dict(v) for k, v in self._counts.items()}
        self._counts.clear()
        self._minutes.clear()
        return out

    def give_back(self, counts: dict[tuple[str, int], dict[str, int]]) -> None:
        """Counts a flush could not write: they go with the next one."""
        for key, fields in counts.items():
            mine = self._counts[key]
            for name, value in fields.items():
                mine[name] += value
            day = key[1]
            self._minutes.update(day * 1440 + int(n.split(":")[0]) for n in fields if not n.startswith("h"))
        while len(self._minutes) > MAX_PENDING_MINUTES:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        oldest = min(self._minutes)
        self._minutes.discard(oldest)
        day, of_day = divmod(oldest, 1440)
        for (_, d), fields in self._counts.items():
            if d == day:
                self.dropped += fields.pop(f"{of_day}:r", 0)
                for name in MINUTE_FIELDS[1:]:
                    fields.pop(f"{of_day}:{name}", None)


class DemandRecorder(SyncPart):
    """Writes this sidecar's :class:`DemandCounts` to the pool's demand HASHes every interval."""

    what = "the pool's demand counts"

    def __init__(
        self,
        client: RedisClient,
        keys: PoolKeys,
        counts: DemandCounts,
        models: Sequence[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(client)
        self._keys = keys
        self.counts = counts
        self._models = list(models)
        self._clock = clock
        self._warned_drops = 0
        self._marked = -1  # the last hour (since the epoch) this sidecar's live marks went out for

    async def flush(self) -> None:
        """Write what was counted, now (raises what the call raised; the counts stay here)."""
        await self.sync_alone()

    def sync(self) -> Sync | None:
        """Add what was counted since the last sync (and, first in an hour, the live marks)."""
        batch = self.counts.take()
        hour = int(self._clock() // 3600)
        if not batch and hour == self._marked:
            return None
        keep = RETENTION_DAYS * DAY_S
        ops = [
            Op("add", self._keys.demand(model, day), keep, list(fields.items()))
            for (model, day), fields in batch.items()
        ]
        if hour != self._marked:
            live = [(f"h{hour % 24}:live", 1)]
            ops += [Op("add", self._keys.demand(m, hour // 24), keep, live) for m in self._models]

        def took(_replies: Sequence[Any], _now: float) -> None:
            self._marked = hour

        def failed(_exc: BaseException) -> None:
            self.counts.give_back(batch)
            if self.counts.dropped > self._warned_drops:
                log.warning(
                    "Redis unreachable: %d requests' demand counts dropped (kept in memory for %d minutes)",
                    self.counts.dropped,
                    MAX_PENDING_MINUTES,
                )
                self._warned_drops = self.counts.dropped

        return Sync(ops, took, failed)
