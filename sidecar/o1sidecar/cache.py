"""Response cache: L1 in process memory (LRU), L2 in Redis shared by the pool's sidecars (and only
by them: L2 keys carry the pool's tag, ``PoolKeys.cached``). Entries live ``l2_ttl_s``, or with
``ttl_follows_load`` what the pool's published prediction suggests for the hour under way, in both
layers: an L1 entry stored with an answer expires with it, one filled from L2 when the L2 entry does
(with ``l2_ttl_s: 0``, no L2, L1 entries stay until evicted).

The key covers the endpoint, the model and every request field that can change the answer; fields
that only change delivery or bookkeeping (``stream``, ``stream_options``, ``user``, ``metadata``,
``store``) are left out. L2 is best effort: a slow or failed Redis is a miss, never an error, and a
short breaker stops asking a Redis that keeps failing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any, cast

import redis.asyncio as aioredis
from cachetools import LRUCache

from o1sidecar.config import CachePolicy, PoolRef, RedisConfig
from o1sidecar.limits.breaker import CircuitBreaker
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.limits.redis_store import redis_client

log = logging.getLogger(__name__)

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
    ) -> None:
        self.policy = policy
        self._suggested_ttl_s = suggested_ttl_s  # the published prediction's (prediction.py)
        # key -> (expires at on ``clock``, body)
        self._l1: LRUCache[str, tuple[float, bytes]] | None = (
            LRUCache(maxsize=policy.l1_entries) if policy.l1_entries > 0 else None
        )
        self._clock = clock
        self._keys = PoolKeys(redis_config.key_prefix, pool.namespace, pool.name)
        # One failure opens it: a cache lookup is worth less than the time a dead Redis would cost.
        self.breaker = CircuitBreaker(failures=1, reset_s=redis_config.breaker_reset_s, clock=clock)
        self._redis: aioredis.Redis | None = None
        self._pending: set[asyncio.Task[None]] = set()
        if redis_config.url and policy.l2_ttl_s > 0:
            self._redis = redis_client(redis_config, decode_responses=False)

    @property
    def has_l2(self) -> bool:
        return self._redis is not None

    async def get(self, key: str) -> tuple[bytes, str] | None:
        """``(body, "l1"|"l2")`` or ``None`` on a miss."""
        if self._l1 is not None:
            entry = self._l1.get(key)
            if entry is not None:
                if self._clock() < entry[0]:
                    return entry[1], "l1"
                del self._l1[key]  # expired
        if not self._l2_usable():
            return None
        try:
            assert self._redis is not None  # _l2_usable
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._keys.cached(key))
                pipe.pttl(self._keys.cached(key))
                body, left_ms = cast(tuple[bytes | None, int], tuple(await pipe.execute()))
        except (aioredis.RedisError, OSError) as exc:
            self._trip(exc)
            return None
        self.breaker.success()
        if body is None:
            return None
        self._put_l1(key, body, left_ms / 1000 if left_ms > 0 else self.l2_ttl_s())
        return body, "l2"

    def store(self, key: str, body: bytes) -> None:
        """Put in L1 now and in L2 in the background, so no answer waits for Redis."""
        self._put_l1(key, body, self.l2_ttl_s())
        if self._l2_usable():
            task = asyncio.get_running_loop().create_task(self._put_l2(key, body))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def put(self, key: str, body: bytes) -> None:
        """Put in both layers and wait for L2."""
        self._put_l1(key, body, self.l2_ttl_s())
        if self._l2_usable():
            await self._put_l2(key, body)

    def _put_l1(self, key: str, body: bytes, ttl_s: float) -> None:
        if self._l1 is not None:
            self._l1[key] = (self._clock() + ttl_s if ttl_s > 0 else math.inf, body)

    async def _put_l2(self, key: str, body: bytes) -> None:
        try:
            await self._redis.set(self._keys.cached(key), body, ex=self.l2_ttl_s())  # type: ignore[union-attr]
        except (aioredis.RedisError, OSError) as exc:
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
