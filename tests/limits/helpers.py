"""Config builders and a settable clock for the limiter tests."""

from __future__ import annotations

import math
import time
from typing import Any

from redis.asyncio import Redis

from o1sidecar.config import SidecarConfig
from o1sidecar.limits import rule
from o1sidecar.limits.api import Demand
from o1sidecar.limits.backend import AccountLimits, account_limits
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.limits.local import LocalBackend
from o1sidecar.limits.queueing import QueueingLimiter
from o1sidecar.limits.redis_store import packed_limits
from o1sidecar.limits.scripts import lua_source
from o1sidecar.limits.shared import SharedLimiter


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def config(
    accounts: dict[str, dict[str, Any]],
    *,
    model: str = "o1-mini",
    redis_url: str | None = None,
    account: dict[str, Any] | None = None,
    **sections: Any,
) -> SidecarConfig:
    """A config whose accounts each have the given limits for ``model`` (and the ``account`` fields)."""
    data: dict[str, Any] = {
        "accounts": [
            {
                "name": name,
                "models": {model: limits},
                "keys": [{"name": "k", "env": "UNUSED_KEY"}],
                **(account or {}),
            }
            for name, limits in accounts.items()
        ],
        **sections,
    }
    if redis_url:
        data.setdefault("redis", {})["url"] = redis_url
    return SidecarConfig.from_dict(data)


def pacing_level(limiter: QueueingLimiter, account: str, model: str) -> float:
    """Requests the account's pacing bucket holds now, in an in-process limiter's store."""
    store = limiter.backend
    assert isinstance(store, LocalBackend)
    state = store.state_of(account, model)
    if state is None:
        return math.inf  # never used: full
    lim = next(store.limits_of(a) for a in account_limits(limiter.config, model, (account,)))
    rule.refresh(state, lim, time.time())
    return state.r


async def drain_local(limiter: QueueingLimiter, account: str = "a", model: str = "o1-mini") -> None:
    """Spend the account's pacing bucket until it holds less than one request: the next must wait."""
    while pacing_level(limiter, account, model) >= 1:
        grant = await limiter.acquire(Demand(model, 100, 5, time.time() + 60), [account])
        await limiter.release(grant, None)


# The state of one account+model as the scripts see it (rule.lua's load + refresh): every field of
# rule.AccountModel, and the leases in flight.
DUMP = (
    lua_source("rule")
    + """
local now = clock(ARGV[1])
local a = limits(ARGV[2], KEYS[1], KEYS[2], KEYS[3])
load(a, now)
refresh(a, now)
local out = {}
for _, f in ipairs(FIELDS) do
  out[#out + 1] = f
  if type(a[f]) == 'number' then out[#out + 1] = num(a[f]) else out[#out + 1] = tostring(a[f]) end
end
out[#out + 1] = 'inflight'; out[#out + 1] = tostring(a.inflight)
return out
"""
)


async def redis_state(
    client: Redis, keys: PoolKeys, account: AccountLimits, model: str, now: float | None = None
) -> dict[str, str]:
    """``DUMP`` of ``account``+``model`` at ``now`` (default: Redis's own clock)."""
    names = [
        keys.account(account.name, model),
        keys.leases(account.name, model),
        keys.window(account.name, model),
    ]
    out = await client.eval(DUMP, 3, *names, "" if now is None else repr(now), packed_limits(account))
    return dict(zip(out[::2], out[1::2], strict=True))


async def drain_shared(limiter: SharedLimiter, account: str = "a", model: str = "o1-mini") -> None:
    """Spend the account's pacing bucket in Redis until it holds less than one request."""
    limits = account_limits(limiter.config, model, (account,))[0]
    while float((await redis_state(limiter.client, limiter.keys, limits, model))["r"]) >= 1:
        grant = await limiter.acquire(Demand(model, 100, 5, time.time() + 60), [account])
        await limiter.release(grant, None)
