"""Model outages for the whole pool: one down model, one probe, one ramp for every sidecar.

``outages.ModelOutages`` decides from what this sidecar sees. With Redis, each change of phase it
makes is published to the pool's HASH ``{tag}:outages`` (model -> phase, since, next probe, on Redis
time; outage_sync.lua), every sidecar mirrors that HASH into its own ``ModelOutages`` every
``redis.heartbeat_interval_s`` (poolsync.py), and the probe of a down model is claimed with a lock held for
``probe_s``: one probe per period for the pool, not one per sidecar. The operator reads the same HASH
for the O1Pool's ``ModelsAvailable`` condition. Without Redis (or while it fails) each sidecar
decides alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from importlib.resources import files

from o1sidecar.limits.connect import REDIS_FAILURES, RedisClient, register_script
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.outages import UP, ModelOutages, ModelState
from o1sidecar.poolsync import Op, Sync, SyncPart

log = logging.getLogger("o1sidecar.outage_sync")

SCRIPT = (files("o1sidecar") / "outage_sync.lua").read_text()
KEEP_S = 3600.0  # an entry no sidecar refreshed for this long is dropped by Redis


def parse_state(value: str, redis_now: float, local_now: float) -> ModelState | None:
    """An entry of the HASH on the local clock (``None`` if malformed)."""
    parts = value.split(";")
    try:
        phase, since, probe_at, step_s = parts[0], float(parts[1]), float(parts[2]), float(parts[3])
    except (IndexError, ValueError):
        return None
    if phase not in ("down", "ramp") or step_s <= 0:
        return None
    offset = local_now - redis_now
    return ModelState(phase, since + offset, probe_at + offset, step_s)  # type: ignore[arg-type]


def read_states(entries: Mapping[str, str], redis_now: float) -> dict[str, ModelState]:
    """The HASH's entries on Redis time (what the operator reports)."""
    parsed = {model: parse_state(value, redis_now, redis_now) for model, value in entries.items()}
    return {model: st for model, st in parsed.items() if st is not None}


class SharedOutages(SyncPart):
    """The pool's model outages in Redis, mirrored into this sidecar's ``outages``."""

    what = "the pool's model outages"

    def __init__(
        self,
        client: RedisClient,
        keys: PoolKeys,
        outages: ModelOutages,
        models: Sequence[str],
    ) -> None:
        super().__init__(client)
        self._keys = keys
        self._outages = outages
        self._models = list(models)
        self._script = register_script(client, SCRIPT)

    async def publish(self, model: str, state: ModelState, now: float) -> None:
        """This sidecar changed ``model``'s phase at ``now`` (its clock): tell the pool."""
        try:
            await self._script(
                keys=[self._keys.outages(), self._keys.probe_lock(model)],
                args=[
                    "set",
                    model,
                    state.phase,
                    max(0.0, now - state.since),
                    state.probe_at - now,
                    KEEP_S,
                    state.step_s,
                ],
            )
        except REDIS_FAILURES as exc:
            log.warning("cannot share that %s is %s (%s); deciding alone", model, state.phase, exc)

    async def claim_probe(self, model: str) -> bool:
        """Whether this sidecar's request may be ``model``'s probe (no other sidecar's in this period)."""
        try:
            hold_ms = max(1, round(self._outages.probe_s * 1000))
            return bool(
                await self._script(
                    keys=[self._keys.outages(), self._keys.probe_lock(model)], args=["probe", model, hold_ms]
                )
            )
        except REDIS_FAILURES:
            return True  # no pool to ask: this sidecar's own probe

    def sync(self) -> Sync:
        """Read the pool's outages."""
        local_now = self._outages.now()
        return Sync(
            [Op("hash", self._keys.outages())],
            lambda replies, redis_now: self._mirror(replies[0], redis_now, local_now),
        )

    def _mirror(self, entries: Mapping[str, str], redis_now: float, local_now: float) -> None:
        """Take the pool's state of every model this sidecar serves."""
        for model in self._models:
            value = entries.get(model)
            state = parse_state(value, redis_now, local_now) if value is not None else UP
            self._outages.adopt(model, state or UP)
