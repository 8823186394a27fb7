"""The pool's shared state, exchanged with Redis in one command every interval (limits/lua/sync.lua).

Each part says what it writes and reads this time (``sync``): the demand counts (demand.py) and
the clients' spend (spend.py) add to counters; the refused keys (quarantine.py), the model outages
(outage_sync.py) and the prediction (prediction.py) are read, with the server's clock. ``PoolSync``
gathers every part's operations once per ``redis.heartbeat_interval_s`` and hands each part its
replies. With a shared limiter they ride along with its heartbeat, in the same script call
(``Carrier``): one command a sidecar per interval for all of it, where there was one per part and one
for the heartbeat (docs/scale.md); else ``PoolSync`` sends them itself. A failed sync is logged at
debug and tried again next time: meanwhile each sidecar keeps what it knows, and what a part would
have written stays with it (``Sync.failed``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from o1sidecar.limits.connect import REDIS_FAILURES, KeyedScript, RedisClient, register_script, server_time
from o1sidecar.limits.redis_store import Carried
from o1sidecar.limits.scripts import lua_source

log = logging.getLogger("o1sidecar.poolsync")

SCRIPT = "\n".join(lua_source(part) for part in ("sync", "pool_sync"))


@dataclass(frozen=True)
class Op:
    """One operation on one key of the pool: ``add`` to a HASH's counters (``fields``: field and
    increment; the HASH then lives ``ttl_s``), read a ``hash`` whole, or ``get`` a string ('' absent)."""

    kind: Literal["add", "hash", "get"]
    key: str
    ttl_s: int = 0
    fields: Sequence[tuple[str, int]] = ()

    def args(self) -> list[str | int]:
        if self.kind != "add":
            return [self.kind]
        out: list[str | int] = ["add", self.ttl_s, len(self.fields)]
        for name, value in self.fields:
            out += [name, value]
        return out


def _nothing(_exc: BaseException) -> None:
    return None


@dataclass(frozen=True)
class Sync:
    """A part's operations this time; ``took`` gets their replies in order (``add``: the new values,
    ints; ``hash``: field -> value; ``get``: the string) and the server's clock, ``failed`` the error
    when the call failed."""

    ops: Sequence[Op]
    took: Callable[[Sequence[Any], float], None]
    failed: Callable[[BaseException], None] = _nothing


def _decoded(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _reply(op: Op, raw: Any) -> Any:
    if op.kind == "add":
        return [int(v) for v in raw]
    if op.kind == "hash":
        flat = [_decoded(v) for v in raw]
        return dict(zip(flat[::2], flat[1::2], strict=True))
    return _decoded(raw)


def carried(syncs: Sequence[Sync | None]) -> Carried | None:
    """``syncs`` as one script call's keys and arguments (sync.lua), with what to do with its reply
    (``{TIME, one reply per operation}``) or its failure; None: nothing to do."""
    live = [e for e in syncs if e is not None and e.ops]
    if not live:
        return None
    ops = [op for e in live for op in e.ops]

    def took(reply: Sequence[Any]) -> None:
        now, at = server_time(reply[0]), 1
        for e in live:
            replies = [_reply(op, raw) for op, raw in zip(e.ops, reply[at : at + len(e.ops)], strict=True)]
            at += len(e.ops)
            try:
                e.took(replies, now)
            except Exception:  # (one part's fault is not the others', nor the heartbeat carrying them)
                log.exception("taking the pool's reply failed")

    def failed(exc: BaseException) -> None:
        for e in live:
            e.failed(exc)

    return Carried([op.key for op in ops], [arg for op in ops for arg in op.args()], took, failed)


async def run_syncs(script: KeyedScript, syncs: Sequence[Sync | None]) -> None:
    """Run every sync's operations in one call of ``script`` (``SCRIPT`` registered on a client)
    and hand each its replies; on failure, tell each and raise."""
    batch = carried(syncs)
    if batch is None:
        return
    try:
        reply = await script(keys=batch.keys, args=batch.args)
    except BaseException as exc:
        batch.failed(exc)
        raise
    batch.took(reply)


class Carrier(Protocol):
    """What carries the pool's sync on a call it makes every interval anyway (``SharedLimiter``'s
    heartbeat): it asks ``source`` for it each time."""

    def carry(self, source: Callable[[], Carried | None]) -> None: ...


class SyncPart:
    """A part of the pool's state this sidecar exchanges (``sync``). ``client`` serves the part's
    own calls (and ``sync_alone``); ``close`` closes it."""

    what = "the pool's state"

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._alone: KeyedScript | None = None

    def sync(self) -> Sync | None:
        """What to write and read now (None: nothing)."""
        raise NotImplementedError

    async def sync_alone(self) -> None:
        """This part's sync, now, on its own (raises what the call raised)."""
        if self._alone is None:
            self._alone = register_script(self._client, SCRIPT)
        await run_syncs(self._alone, [self.sync()])

    async def close(self) -> None:
        await self._client.aclose()


class PoolSync:
    """Every ``interval_s``, the syncs of ``parts`` in one call: carried by ``carrier``'s, or on
    ``client``; at close, a last one (what the demand and spend counted since) on ``client``, then the
    parts' and ``client``'s connections close."""

    def __init__(
        self,
        client: RedisClient,
        parts: Sequence[SyncPart],
        interval_s: float,
        carrier: Carrier | None = None,
    ) -> None:
        self._client = client
        self._script = register_script(client, SCRIPT)
        self.parts = list(parts)
        self._interval_s = interval_s
        self._carrier = carrier
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        """One sync of every part, on this sync's client (raises what the call raised)."""
        await run_syncs(self._script, [p.sync() for p in self.parts])

    def carried(self) -> Carried | None:
        """One sync of every part, for the carrier's call."""
        return carried([p.sync() for p in self.parts])

    async def start(self) -> None:
        if self._carrier is not None:
            self._carrier.carry(self.carried)
        else:
            self._task = asyncio.get_running_loop().create_task(self._forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.tick()
        except Exception as exc:
            log.debug("could not write the last of %s: %s", self._what(), exc)
        for part in self.parts:
            await part.close()
        await self._client.aclose()

    def _what(self) -> str:
        return ", ".join(p.what for p in self.parts)

    async def _forever(self) -> None:
        while True:
            try:
                await self.tick()
            except REDIS_FAILURES as exc:
                log.debug("cannot exchange %s with the pool: %s", self._what(), exc)
            await asyncio.sleep(self._interval_s)
