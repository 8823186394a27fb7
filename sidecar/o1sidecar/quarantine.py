"""Key quarantine for the whole pool: a key the upstream refused (401/403) rests for every sidecar.

``upstream.AccountRoute`` decides which key a call uses and rests a refused one (60 s, doubling per
refusal in a row, at most an hour). With Redis, the rest is the pool's: a refusal is recorded in the
pool's HASH ``{tag}:keys:refused`` (quarantine.lua, one round trip, on Redis time) and every sidecar
mirrors that HASH into its routes every ``redis.heartbeat_interval_s`` (poolsync.py); the first success
with the key lifts it for all. An entry names the key by its ``account/key`` label with the fingerprint
of the refused value (o1common.keyprint), never the value: a sidecar holding another value of the key
(after a rotation) does not rest it, and the operator drops entries of values no longer in the pool's
Secret and reports the others in the O1Pool's ``KeysReady`` condition. Without Redis (or while it fails)
each sidecar rests keys by itself, as before."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files

from o1sidecar.limits.connect import REDIS_FAILURES, RedisClient, register_script
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.poolsync import Op, Sync, SyncPart
from o1sidecar.upstream import QUARANTINE_FIRST_S, QUARANTINE_MAX_S, AccountRoute, Quarantine, UpstreamKey

log = logging.getLogger("o1sidecar.quarantine")

SCRIPT = (files("o1sidecar") / "quarantine.lua").read_text()


@dataclass(frozen=True)
class RefusedKey:
    """One entry of the pool's HASH, as the operator and the sidecars read it (Redis time, seconds)."""

    label: str
    fingerprint: str
    refusals: int
    since: float
    until: float

    @classmethod
    def parse(cls, label: str, value: str) -> RefusedKey | None:
        parts = value.split(";")
        try:
            return cls(label, parts[0], int(parts[1]), float(parts[2]), float(parts[3]))
        except (IndexError, ValueError):
            return None


def read_refused(entries: Mapping[str, str]) -> list[RefusedKey]:
    """The parsed entries of an HGETALL of the HASH (malformed ones left out)."""
    parsed = (RefusedKey.parse(label, value) for label, value in entries.items())
    return sorted((e for e in parsed if e is not None), key=lambda e: e.label)


class SharedQuarantine(SyncPart):
    """The pool's refused keys in Redis, mirrored into this sidecar's ``routes``."""

    what = "the pool's refused keys"

    def __init__(
        self,
        client: RedisClient,
        keys: PoolKeys,
        routes: Mapping[str, AccountRoute],
        *,
        first_rest_s: float = QUARANTINE_FIRST_S,
        longest_rest_s: float = QUARANTINE_MAX_S,
    ) -> None:
        super().__init__(client)
        self._rests = (first_rest_s, longest_rest_s)
        self._hash = keys.refused_keys()
        self._routes = routes
        self._script = register_script(client, SCRIPT)

    async def refused(self, route: AccountRoute, key: UpstreamKey) -> Quarantine:
        """Record the refusal for the pool and rest the key here as the pool decided (by this sidecar
        alone when Redis fails)."""
        try:
            n, rest, remaining = await self._script(
                keys=[self._hash],
                args=["refuse", key.label, key.fingerprint, *self._rests],
            )
        except REDIS_FAILURES as exc:
            log.warning("cannot share the refusal of key %s (%s); resting it here", key.label, exc)
            return route.refused(key)
        return route.adopt(key.name, int(n), float(rest), float(remaining))

    async def accepted(self, key: UpstreamKey) -> None:
        """``key`` worked after a rest: lift it for the pool."""
        try:
            await self._script(keys=[self._hash], args=["accept", key.label, key.fingerprint, 0, 0])
        except REDIS_FAILURES as exc:
            log.debug("cannot lift key %s for the pool: %s", key.label, exc)

    def sync(self) -> Sync:
        """Read the pool's refused keys."""
        return Sync([Op("hash", self._hash)], lambda replies, now: self._mirror(replies[0], now))

    def _mirror(self, entries: Mapping[str, str], now: float) -> None:
        """Rest here exactly the keys the pool rests (entries about this sidecar's key values)."""
        refused = {e.label: e for e in read_refused(entries)}
        for route in self._routes.values():
            for key in route.keys:
                entry = refused.get(key.label)
                if entry is None or entry.fingerprint != key.fingerprint:
                    route.lift(key.name)
                else:
                    first, longest = self._rests
                    rest = min(first * 2 ** (entry.refusals - 1), longest)
                    route.adopt(key.name, entry.refusals, rest, entry.until - now)
