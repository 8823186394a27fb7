"""The Lua scripts of the shared limiter, loaded once and called by SHA.

Each script is ``lua/rule.lua`` (the admission rule of one account+model, shared by all of them),
``lua/fair.lua`` (fair share between clients) and ``lua/caps.lua`` (clients' own limits), followed by
the script's own file. redis-py's ``AsyncScript`` calls EVALSHA and, on NOSCRIPT (after SCRIPT FLUSH
or a Redis restart), loads the script again and retries once; ``load_all`` does the first SCRIPT LOAD
at start.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def lua_source(name: str) -> str:
    return (files("o1sidecar.limits") / "lua" / f"{name}.lua").read_text()


def script_source(name: str) -> str:
    """What Redis runs for ``name``: the shared rule, fair share and clients' limits, then the script."""
    return "\n".join(lua_source(part) for part in ("rule", "fair", "caps", name))


@dataclass
class Scripts:
    admit: AsyncScript
    release: AsyncScript
    heartbeat: AsyncScript
    eta: AsyncScript
    forget: AsyncScript

    @classmethod
    def register(cls, client: Redis) -> Scripts:
        return cls(**{f.name: client.register_script(script_source(f.name)) for f in fields(cls)})

    async def load_all(self, client: Redis) -> None:
        for f in fields(self):
            script: AsyncScript = getattr(self, f.name)
            script.sha = await client.script_load(script.script)
