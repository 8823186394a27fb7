"""The Lua scripts of the shared limiter, loaded once and called by SHA.

redis-py's ``AsyncScript`` calls EVALSHA and, on NOSCRIPT (after SCRIPT FLUSH or a Redis restart),
loads the script again and retries once; ``load_all`` does the first SCRIPT LOAD at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def lua_source(name: str) -> str:
    return (files("o1sidecar.limits") / "lua" / f"{name}.lua").read_text()


@dataclass
class Scripts:
    admit: AsyncScript
    release: AsyncScript
    heartbeat: AsyncScript

    @classmethod
    def register(cls, client: Redis) -> Scripts:
        return cls(
            admit=client.register_script(lua_source("admit")),
            release=client.register_script(lua_source("release")),
            heartbeat=client.register_script(lua_source("heartbeat")),
        )

    async def load_all(self, client: Redis) -> None:
        for script in (self.admit, self.release, self.heartbeat):
            script.sha = await client.script_load(script.script)
