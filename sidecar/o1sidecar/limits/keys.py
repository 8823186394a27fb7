"""Names of the Redis keys of one pool. All carry the pool's hash tag ``{<prefix>:<namespace>/<pool>}``.

One tag per pool puts every key of the pool in one Redis Cluster slot, so a single Lua script can
check the pool's queue for a model and every candidate account atomically. (Per-account tags would
split one admission into several scripts and lose that atomicity.) The cost: one pool lives on one
cluster node; pools spread across nodes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass


def accounts_tag(names: Iterable[str]) -> str:
    """A short tag of a set of accounts, the same in every sidecar: a queue ticket's id carries the tag
    of the accounts its request may use (``<sidecar>.<tag>:<id>``), so that the store can tell a head
    whether the wait it names covers all of them (queue.lua ``name_head``)."""
    return f"{zlib.crc32(','.join(sorted(names)).encode()):08x}"


@dataclass(frozen=True)
class PoolKeys:
    prefix: str
    namespace: str
    pool: str

    @property
    def tag(self) -> str:
        return f"{{{self.prefix}:{self.namespace}/{self.pool}}}"

    def account(self, account: str, model: str) -> str:
        """HASH of one account+model's state: the fields of ``rule.AccountModel`` (pacing levels,
        effective-limit factors, cooldown, episode, probe, window totals, request caps)."""
        return f"{self.tag}:acct:{account}:{model}"

    def window(self, account: str, model: str) -> str:
        """ZSET of one account+model's admissions of the last minute: ``tokens:lease`` -> admitted at."""
        return f"{self.tag}:win:{account}:{model}"

    def leases(self, account: str, model: str) -> str:
        """ZSET of one account+model's concurrency leases, scored by expiry."""
        return f"{self.tag}:lease:{account}:{model}"

    def queue(self, model: str) -> str:
        """ZSET of waiting tickets for one model, scored by rank (ordering.rank)."""
        return f"{self.tag}:queue:{model}"

    def ticket_expiry(self, model: str) -> str:
        """ZSET of the same tickets, scored by when they expire unless refreshed."""
        return f"{self.tag}:qexp:{model}"

    def ticket_cost(self, model: str) -> str:
        """HASH ticket -> tokens the waiting request will cost."""
        return f"{self.tag}:qtok:{model}"

    def fair_share(self, model: str) -> str:
        """HASH of each client's place in the model's queue: ``f:<client>`` its finish, ``w:<client>``
        its weight (fairness.py)."""
        return f"{self.tag}:fair:{model}"

    def places(self, model: str) -> str:
        """HASH ticket -> ``client;worth``: the place each waiting client request holds (fairness.py),
        given back when it leaves unserved."""
        return f"{self.tag}:places:{model}"

    def client_window(self, client: str) -> str:
        """ZSET of one client's calls of the last minute, for its own limits (caps.py): ``tokens:lease``
        -> admitted at."""
        return f"{self.tag}:cwin:{client}"

    def client_tokens(self) -> str:
        """HASH client -> the tokens of its calls in its window (caps.py)."""
        return f"{self.tag}:ctok"

    def sidecars(self) -> str:
        """ZSET sidecar id -> last heartbeat (server time)."""
        return f"{self.tag}:sidecars"

    def cached(self, key: str) -> str:
        """STRING: a cached response body, by its request's cache key (``cache.cache_key``). In the
        pool's tag like every other key, so no other pool on the same Redis can read or write it."""
        return f"{self.tag}:cache:{key}"

    def inflight(self, key: str) -> str:
        """STRING: the sidecar whose request with this cache key is calling the model now (coalescing.py),
        expiring with that request's deadline."""
        return f"{self.tag}:inflight:{key}"

    def refused_keys(self) -> str:
        """HASH of the keys the upstream refused: ``account/key`` -> fingerprint, refusals in a row,
        since and until when the key rests (quarantine.py)."""
        return f"{self.tag}:keys:refused"

    def outages(self) -> str:
        """HASH of the models that are not up: model -> phase, since, next probe (outage_sync.py)."""
        return f"{self.tag}:outages"

    def probe_lock(self, model: str) -> str:
        """STRING held by the sidecar whose request is a down model's probe (outage_sync.py)."""
        return f"{self.tag}:probe:{model}"

    def demand(self, model: str, day: int) -> str:
        """HASH of what clients asked of ``model`` on one UTC day (days since the epoch): per minute and
        per hour and priority (demand.py). The operator's forecasts read it."""
        return f"{self.tag}:demand:{model}:{day}"

    def spend(self, period: str) -> str:
        """HASH of what each client spent in one UTC day (``d<days since the epoch>``) or month
        (``m<YYYYMM>``): ``<client>:usd`` in micro-dollars and ``<client>:tokens`` (spend.py). The
        sidecars' budgets and the pool's status read it."""
        return f"{self.tag}:spend:{period}"

    def prediction(self) -> str:
        """STRING: the operator's prediction for the pool (JSON; o1operator/forecasting.py), expiring
        unless refreshed (prediction.py)."""
        return f"{self.tag}:prediction"

    def wake_channel(self) -> str:
        """Pub/sub channel: a model's queue may move (a lease freed, a waiter admitted); every sidecar
        of the pool listens. Heads whose ticket names no sidecar are named here (queue.lua)."""
        return f"{self.tag}:wake"

    def wake_channel_of(self, sidecar: str) -> str:
        """Pub/sub channel of one sidecar: the heads among its waiters (tickets ``<sidecar>.<id>``) are
        named here, to it alone (queue.lua ``name_head``)."""
        return f"{self.wake_channel()}:{sidecar}"
