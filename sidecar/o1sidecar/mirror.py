"""A loop that takes part of the pool's state from Redis at a fixed interval into this sidecar
(refused keys: quarantine.py; model outages: outage_sync.py). A failed read is logged at debug and
tried again next time: meanwhile the sidecar keeps what it knows."""

from __future__ import annotations

import asyncio
import logging

from o1sidecar.limits.connect import REDIS_FAILURES, RedisClient

log = logging.getLogger("o1sidecar.mirror")


class PoolMirror:
    """Subclasses say what to read (``mirror``); this runs it every ``interval_s`` and owns ``client``."""

    what = "the pool's state"

    def __init__(self, client: RedisClient, interval_s: float) -> None:
        self._client = client
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def mirror(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.aclose()

    async def _forever(self) -> None:
        while True:
            try:
                await self.mirror()
            except REDIS_FAILURES as exc:
                log.debug("cannot read %s: %s", self.what, exc)
            await asyncio.sleep(self._interval_s)
