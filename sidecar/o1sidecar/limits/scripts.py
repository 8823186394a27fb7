"""The Lua scripts of the shared limiter, loaded once and called by SHA.

Each script is ``lua/rule.lua`` (the admission rule of one account+model, shared by all of them),
``lua/fair.lua`` (fair share between clients), ``lua/caps.lua`` (clients' own limits), ``lua/queue.lua``
(a model's queue: its head, naming it, when a waiter may go) and ``lua/sync.lua`` (the pool's sync,
which the heartbeat carries: poolsync.py), followed by the script's own file. Each is a ``KeyedScript``
(connect.py): redis-py's ``AsyncScript`` that calls EVALSHA and, on NOSCRIPT (after SCRIPT FLUSH, a
Redis restart or a cluster failover), loads the script again where its keys live and retries once;
``load_all`` does the first SCRIPT LOAD at start, on the server that holds the pool's keys (on a
cluster: the primary of the pool's slot, whatever the other primaries do).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from importlib.resources import files

from redis.commands.core import AsyncScript

from o1sidecar.limits.connect import KeyedScript, RedisClient, script_load


def lua_source(name: str) -> str:
    return (files("o1sidecar.limits") / "lua" / f"{name}.lua").read_text()


def script_source(name: str) -> str:
    """What Redis runs for ``name``: the shared rule, fair share, clients' limits, queue and sync, then
    the script."""
    return "\n".join(lua_source(part) for part in ("rule", "fair", "caps", "queue", "sync", name))


@dataclass
class Scripts:
    admit: AsyncScript
    release: AsyncScript
    heartbeat: AsyncScript
    eta: AsyncScript
    forget: AsyncScript
    key: str = field(default="", kw_only=True)  # a key of the pool: where ``load_all`` loads them

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "key"]

    @classmethod
    def register(cls, client: RedisClient, key: str = "") -> Scripts:
        return cls(**{name: KeyedScript(client, script_source(name)) for name in cls.names()}, key=key)

    async def load_all(self, client: RedisClient) -> None:
        for name in self.names():
            script: AsyncScript = getattr(self, name)
            script.sha = await script_load(client, str(script.script), self.key)
