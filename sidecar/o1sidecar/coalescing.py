"""Request coalescing: identical cacheable requests in flight at the same time make one upstream call,
in one sidecar and across the pool's sidecars.

The first request for a cache key leads: it calls the model as usual, and when it is done it lets the
others go (those in its sidecar at once, its answer being in L1; the pool's key once the answer is in
L2, in the background: the leader's own answer never waits for it). A request that finds the key in
flight waits for the leader and is answered from the cache (``x-o1pool-cache: coalesced``, replayed
as SSE when it streams). Within a sidecar the first request holds the key in memory and the others
wait on it; across sidecars it also takes the pool's Redis key ``{tag}:inflight:<cache key>`` (SET
NX, expiring with the request's deadline), and a sidecar that finds it taken sends one of its
requests to wait on the pool's cache (polling, from 20 ms up to 250 ms) while its others wait on that
one.

A leader that ends without a stored answer (an error, a fallback model's answer) lets the others go
on their own, each calling the model as if alone: a failure is not repeated one request after
another. Redis down, slow or unreachable: coalescing within the sidecar only (fail open), never an
error. A follower never waits past its own deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from o1sidecar.cache import Claim, ResponseCache
from o1sidecar.limits.connect import REDIS_FAILURES, RedisClient
from o1sidecar.limits.keys import PoolKeys

if TYPE_CHECKING:
    from o1sidecar.semantic import SemanticQuery

log = logging.getLogger("o1sidecar.coalescing")

FIRST_POLL_S = 0.02
MAX_POLL_S = 0.25
MAX_HOLD_S = 600.0  # the Redis key outlives no leader by more than this (a leader that died)


@dataclass
class Lead:
    """This request calls the model; ``done`` lets the requests waiting for it go."""

    coalescer: Coalescer | None
    key: str
    event: asyncio.Event | None = None
    remote: bool = False  # holds the pool's Redis key
    inflight: str = ""  # that key's name

    def store(
        self, cache: ResponseCache, key: str, body: bytes, question: SemanticQuery | None = None
    ) -> None:
        """Store this request's answer under ``key`` (``ResponseCache.store``). A leader holding the pool's
        key lets it go in the same round trip as the answer's L2 write, after it: one round trip less."""
        release = self.inflight if self.remote and key == self.key else None
        if cache.store(key, body, question, release=release) and release is not None:
            self.remote = False  # (``done`` has nothing left to let go in Redis)

    def done(self) -> None:
        if self.coalescer is not None:
            self.coalescer.release(self)


ALONE = Lead(None, "")  # call the model as if no identical request were in flight


def _hold_ms(deadline: float) -> int:
    """How long the pool's key is held: until the leader's deadline (at most ``MAX_HOLD_S``)."""
    return max(1, round(min(MAX_HOLD_S, max(1.0, deadline - time.time())) * 1000))


class Coalescer:
    def __init__(
        self, cache: ResponseCache, client: RedisClient | None, keys: PoolKeys | None, owner: str
    ) -> None:
        self._cache = cache
        self._client = client
        self._keys = keys
        self._owner = owner
        self._local: dict[str, asyncio.Event] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def claim(self, key: str, deadline: float) -> Claim | None:
        """Before the cache lookup of a request that would lead: it leads the identical requests of this
        sidecar from now on, and its L2 lookup takes the pool's key on a miss (``ResponseCache.get``),
        saving ``join`` a round trip. ``None``: one of them leads already, or there is no pool to ask
        (``join`` as usual)."""
        if self._client is None or self._keys is None or key in self._local:
            return None
        event = self._local[key] = asyncio.Event()
        return Claim(key, self._keys.inflight(key), self._owner, _hold_ms(deadline), event)

    def drop(self, claim: Claim) -> None:
        """The cache answered the request that claimed: the identical requests go (to the cache), and
        the pool's key, if its lookup took it."""
        self.release(Lead(self, claim.key, claim.event, remote=bool(claim.taken)))

    async def join(self, key: str, deadline: float, claim: Claim | None = None) -> bytes | Lead:
        """The answer of an identical request that was in flight, or the :class:`Lead` to call the model
        under (``ALONE`` when a leader ended without an answer, or the deadline came first). ``claim``:
        what ``claim`` gave this request, whose lookup then missed."""
        if claim is not None:
            event = claim.event  # (it leads this sidecar's identical requests since its claim)
        else:
            found = self._local.get(key)
            if found is not None:
                return await self._follow(found, key, deadline)
            event = self._local[key] = asyncio.Event()
        try:
            taken = await self._take(key, deadline, claim.taken if claim is not None else None)
        except BaseException:  # (cancelled: the client went away) the followers here go on alone
            self.release(Lead(self, key, event))
            raise
        if taken == "remote":
            assert self._keys is not None
            return Lead(self, key, event, remote=True, inflight=self._keys.inflight(key))
        if taken == "local":
            return Lead(self, key, event)
        # Another sidecar led; its answer (if any) is in the cache now, for this one's followers too.
        self.release(Lead(self, key, event))
        hit = await self._cache.get(key)
        return hit[0] if hit is not None else ALONE

    async def _follow(self, event: asyncio.Event, key: str, deadline: float) -> bytes | Lead:
        try:
            await asyncio.wait_for(event.wait(), max(0.0, deadline - time.time()))
        except TimeoutError:
            return ALONE
        hit = await self._cache.get(key)
        return hit[0] if hit is not None else ALONE

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def release(self, lead: Lead) -> None:
        """The leader is done: its answer (if any) is in L1 now, and on its way to L2. The followers in
        this sidecar go at once; the pool's key goes once the answer is in L2, in the background (the
        leader's own answer does not wait for it)."""
        if lead.event is not None:
            lead.event.set()
            if self._local.get(lead.key) is lead.event:
                del self._local[lead.key]
        if lead.remote:
            task = asyncio.get_running_loop().create_task(self._release_remote(lead.key))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _release_remote(self, key: str) -> None:
        assert self._client is not None and self._keys is not None
        await self._cache.flush()  # (the answer in L2 before the other sidecars look)
        try:
            await self._client.delete(self._keys.inflight(key))
        except REDIS_FAILURES:
            pass  # it expires with the leader's deadline

    async def _take(
        self, key: str, deadline: float, taken: bool | None = None
    ) -> Literal["remote", "local", "waited"]:
        """``remote``: this sidecar took the pool's key and calls the model; ``local``: it calls the model
        without asking the pool (no Redis, or Redis failed); ``waited``: a leader elsewhere is done (or
        the deadline came), and this sidecar waited for it. ``taken``: whether the request's lookup took
        the key already (``None``: it did not ask)."""
        if self._client is None or self._keys is None:
            return "local"
        inflight = self._keys.inflight(key)
        try:
            if taken is None:
                taken = bool(await self._client.set(inflight, self._owner, nx=True, px=_hold_ms(deadline)))
            if taken:
                return "remote"
            await self._wait_elsewhere(inflight, key, deadline)
        except REDIS_FAILURES as exc:
            log.debug("coalescing across sidecars unavailable: %s", exc)
            return "local"
        return "waited"

    async def _wait_elsewhere(self, inflight: str, key: str, deadline: float) -> None:
        """Poll the pool's cache until another sidecar's leader is done (its answer stored, or its key
        gone) or the deadline; the answer lands in this sidecar's L1 on the way."""
        assert self._client is not None
        pause = FIRST_POLL_S
        while time.time() + pause < deadline:
            await asyncio.sleep(pause)
            if await self._cache.get(key) is not None:
                return
            if not await self._client.exists(inflight):
                return
            pause = min(MAX_POLL_S, pause * 2)
