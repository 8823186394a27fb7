"""Response cache: L1 in process memory (LRU), L2 in Redis shared by the pool's sidecars (and only
by them: L2 keys carry the pool's tag, ``PoolKeys.cached``). Entries live ``l2_ttl_s``, or with
``ttl_follows_load`` what the pool's published prediction suggests for the hour under way, in both
layers: an L1 entry stored with an answer expires with it, one filled from L2 when the L2 entry does
(with ``l2_ttl_s: 0``, no L2, L1 entries stay until evicted).

The key covers the endpoint, the model and every request field that can change the answer; fields
that only change delivery or bookkeeping (``stream``, ``stream_options``, ``user``, ``metadata``,
``store``) are left out. L2 is best effort: a slow or failed Redis is a miss, never an error, and a
short breaker stops asking a Redis that keeps failing.

With ``cache.service`` set, the pool's cache service (``cachesvc``) is L3: consulted after an L2 miss
within ``budget_ms``, filled with every stored answer (its entries live ``service.ttl_s``), and an L3
hit refills L1 and L2. Like L2, it is best effort: slow or down is a miss.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from cachetools import LRUCache

from o1sidecar.cachesvc.client import BreakerOpen, CacheServiceClient, ServiceBusy, ServiceUnavailable
from o1sidecar.config import CachePolicy, PoolRef, RedisConfig
from o1sidecar.limits.breaker import CircuitBreaker
from o1sidecar.limits.connect import REDIS_FAILURES, KeyedScript, RedisClient, redis_client, register_script
from o1sidecar.limits.keys import PoolKeys

if TYPE_CHECKING:
    from o1sidecar.semantic import SemanticQuery

log = logging.getLogger(__name__)

LookupObserver = Callable[[str, str, float], None]  # (layer, hit|miss|error|skipped|busy, seconds)


class Hit(NamedTuple):
    body: bytes
    layer: str  # l1, l2, l3 or semantic
    similarity: float | None = None  # (semantic)


@dataclass
class Claim:
    """A request that will call the model unless the cache answers it (coalescing.py): its L2 lookup
    takes the pool's in-flight key ``inflight`` on a miss, in the same round trip."""

    key: str
    inflight: str
    owner: str
    hold_ms: int
    event: asyncio.Event  # the identical requests of this sidecar wait on it
    taken: bool | None = None  # whether the lookup took the key (None: it did not ask Redis)


# L2 lookup and, on a miss, the claim of the in-flight key (one round trip; one hash tag, one node).
LOOKUP_OR_CLAIM = """
local body = redis.call('GET', KEYS[1])
if body then return {1, body, redis.call('PTTL', KEYS[1])} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, 1} end
return {0, 0}
"""


NOT_IN_KEY = frozenset({"stream", "stream_options", "user", "metadata", "store"})


def cache_key(path: str, body: dict[str, Any]) -> str:
    """Hex sha256 of the endpoint and the answer-changing request fields, in canonical JSON."""
    material = {k: v for k, v in body.items() if k not in NOT_IN_KEY}
    text = json.dumps([path, material], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def is_cacheable(body: dict[str, Any], policy: CachePolicy) -> bool:
    """Whether a request's answer may be stored and reused under this policy."""
    if not policy.enabled:
        return False
    if policy.only_deterministic:
        return body.get("temperature") == 0 or body.get("seed") is not None
    return True


class ResponseCache:
    """Two layers of ``key -> response body bytes``. ``get`` says which layer answered."""

    def __init__(
        self,
        policy: CachePolicy,
        redis_config: RedisConfig,
        pool: PoolRef,
        *,
        clock: Callable[[], float] = time.monotonic,
        suggested_ttl_s: Callable[[], int | None] = lambda: None,
        observe: LookupObserver = lambda layer, result, seconds: None,
    ) -> None:
        self.policy = policy
        self._observe = observe
        self._suggested_ttl_s = suggested_ttl_s  # the published prediction's (prediction.py)
        # key -> (expires at on ``clock``, body)
        self._l1: LRUCache[str, tuple[float, bytes]] | None = (
            LRUCache(maxsize=policy.l1_entries) if policy.l1_entries > 0 else None
        )
        self._clock = clock
        self._keys = PoolKeys(redis_config.key_prefix, pool.namespace, pool.name)
        # One failure opens it: a cache lookup is worth less than the time a dead Redis would cost.
        self.breaker = CircuitBreaker(failures=1, reset_s=redis_config.breaker_reset_s, clock=clock)
        self._redis: RedisClient | None = None
        self._lookup_or_claim: KeyedScript | None = None
        self._pending: set[asyncio.Task[None]] = set()
        if redis_config.url and policy.l2_ttl_s > 0:
            self._redis = redis_client(redis_config, decode_responses=False)
            self._lookup_or_claim = register_script(self._redis, LOOKUP_OR_CLAIM)
        self._l3 = CacheServiceClient(policy.service, clock) if policy.service is not None else None

    @property
    def has_l2(self) -> bool:
        return self._redis is not None

    @property
    def has_semantic(self) -> bool:
        return self._l3 is not None and self._l3.config.semantic is not None

    async def get(
        self, key: str, question: SemanticQuery | None = None, claim: Claim | None = None
    ) -> Hit | None:
        """The answer stored under ``key`` (L1, L2, L3), else with a ``question`` the answer to a near
        enough question of its scope (the semantic layer), else ``None``. With a ``claim``, an L2 miss
        takes its in-flight key in the same round trip (``claim.taken``)."""
        if self._l1 is not None:
            entry = self._l1.get(key)
            if entry is not None:
                if self._clock() < entry[0]:
                    return Hit(entry[1], "l1")
                del self._l1[key]  # expired
        found = await self._get_l2(key, claim)
        if found is not None:
            self._put_l1(key, *found)
            return Hit(found[0], "l2")
        found = await self._get_l3(key)
        if found is not None:
            body, left_s = found
            self._put_l1(key, body, left_s)
            if self._l2_usable():  # the pool's other sidecars find it in Redis from now on
                self._background(self._put_l2(key, body, max(1, min(int(left_s), self.l2_ttl_s()))))
            return Hit(body, "l3")
        if question is not None and self.has_semantic:
            # Not copied into L1-L3 under this request's key: an exact hit must stay an exact one.
            return await self._get_l4(question)
        return None

    async def _get_l2(self, key: str, claim: Claim | None = None) -> tuple[bytes, float] | None:
        if self._redis is None:
            return None
        if not self.breaker.allow():
            self._observe("l2", "skipped", 0.0)
            return None
        started = time.perf_counter()
        try:
            if claim is not None and self._lookup_or_claim is not None:
                reply = await self._lookup_or_claim(
                    keys=[self._keys.cached(key), claim.inflight], args=[claim.owner, claim.hold_ms]
                )
                body, left_ms = (reply[1], int(reply[2])) if int(reply[0]) else (None, 0)
                claim.taken = body is None and int(reply[1]) == 1
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.get(self._keys.cached(key))
                    pipe.pttl(self._keys.cached(key))
                    body, left_ms = cast(tuple[bytes | None, int], tuple(await pipe.execute()))
        except REDIS_FAILURES as exc:
            self._observe("l2", "error", time.perf_counter() - started)
            self._trip(exc)
            return None
        self.breaker.success()
        self._observe("l2", "miss" if body is None else "hit", time.perf_counter() - started)
        if body is None:
            return None
        return body, left_ms / 1000 if left_ms > 0 else self.l2_ttl_s()

    async def _get_l3(self, key: str) -> tuple[bytes, float] | None:
        if self._l3 is None:
            return None
        started = time.perf_counter()
        try:
            found = await self._l3.get(key)
        except ServiceUnavailable as exc:
            result = "skipped" if isinstance(exc, BreakerOpen) else "error"
            self._observe("l3", result, time.perf_counter() - started)
            return None
        self._observe("l3", "miss" if found is None else "hit", time.perf_counter() - started)
        return found

    async def _get_l4(self, question: SemanticQuery) -> Hit | None:
        assert self._l3 is not None  # (has_semantic)
        started = time.perf_counter()
        try:
            found = await self._l3.semantic_get(question.scope, question.text)
        except ServiceUnavailable as exc:
            result = (
                "skipped"
                if isinstance(exc, BreakerOpen)
                else "busy"
                if isinstance(exc, ServiceBusy)
                else "error"
            )
            self._observe("semantic", result, time.perf_counter() - started)
            return None
        self._observe("semantic", "miss" if found is None else "hit", time.perf_counter() - started)
        return None if found is None else Hit(found[0], "semantic", found[1])

    def store(
        self, key: str, body: bytes, question: SemanticQuery | None = None, release: str | None = None
    ) -> bool:
        """Put in L1 now, and in L2 and L3 in the background, so no answer waits for them; with a
        ``question``, the semantic layer indexes it too. ``release``: a Redis key to delete in the same
        round trip as the L2 write, after it (the coalescer's in-flight key); whether it will be."""
        self._put_l1(key, body, self.l2_ttl_s())
        l2 = self._l2_usable()
        if l2:
            self._background(self._put_l2(key, body, self.l2_ttl_s(), release))
        if self._l3 is not None:
            if question is not None and self.has_semantic:
                self._background(self._l3.put_with_question(key, body, question.scope, question.text))
            else:
                self._background(self._l3.put(key, body))
        return l2

    async def put(self, key: str, body: bytes, question: SemanticQuery | None = None) -> None:
        """Put in every layer and wait for them."""
        self.store(key, body, question)
        await self.flush()

    def _background(self, write: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(write)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _put_l1(self, key: str, body: bytes, ttl_s: float) -> None:
        if self._l1 is not None:
            self._l1[key] = (self._clock() + ttl_s if ttl_s > 0 else math.inf, body)

    async def _put_l2(self, key: str, body: bytes, ttl_s: int, release: str | None = None) -> None:
        assert self._redis is not None
        try:
            if release is None:
                await self._redis.set(self._keys.cached(key), body, ex=ttl_s)
            else:  # (one pipeline: the pool's tag puts both keys on one node of a cluster)
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.set(self._keys.cached(key), body, ex=ttl_s)
                    pipe.delete(release)
                    await pipe.execute()
        except REDIS_FAILURES as exc:
            self._trip(exc)
            return
        self.breaker.success()

    async def flush(self) -> None:
        """Wait for background L2 writes."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def close(self) -> None:
        await self.flush()
        if self._redis is not None:
            await self._redis.aclose()
        if self._l3 is not None:
            await self._l3.close()

    def l2_ttl_s(self) -> int:
        """The lifetime of a new L2 entry: ``l2_ttl_s``, or the prediction's with ``ttl_follows_load``."""
        suggested = self._suggested_ttl_s() if self.policy.ttl_follows_load else None
        return suggested if suggested is not None else self.policy.l2_ttl_s

    def _l2_usable(self) -> bool:
        return self._redis is not None and self.breaker.allow()

    def _trip(self, exc: BaseException) -> None:
        if self.breaker.failure():
            log.warning(
                "cache L2 (Redis) unavailable, serving from L1 only for %.1fs: %s",
                self.breaker.reset_s,
                type(exc).__name__,
            )
