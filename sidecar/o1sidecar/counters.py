"""Counters in the pool's HASHes, added to in one round trip and one command (counters.lua): what the
sidecar's demand counts and its clients' spend write every interval."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files

from o1sidecar.limits.connect import KeyedScript, RedisClient, register_script

SCRIPT = (files("o1sidecar") / "counters.lua").read_text()


@dataclass(frozen=True)
class Increments:
    """What to add to one HASH: (field, increment) pairs, and how long the HASH then lives."""

    key: str
    ttl_s: int
    fields: Sequence[tuple[str, int]]


class Counters:
    """Adds to counters of the pool's HASHes; returns their new values."""

    def __init__(self, client: RedisClient) -> None:
        self._script: KeyedScript = register_script(client, SCRIPT)

    async def add(self, batch: Sequence[Increments]) -> list[int]:
        """The new values of every field of ``batch``, in its order (nothing sent for an empty one)."""
        if not batch:
            return []
        args: list[str | int] = []
        for inc in batch:
            args += [inc.ttl_s, len(inc.fields)]
            for name, value in inc.fields:
                args += [name, value]
        return [int(v) for v in await self._script(keys=[inc.key for inc in batch], args=args)]
