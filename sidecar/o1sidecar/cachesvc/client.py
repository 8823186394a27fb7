"""The sidecar's side of the pool's cache service (L3): a lookup gets ``budget_ms`` and no more, writes
go in the background, and a slow, failing or absent service is a miss, never an error. Three failures
in a row open a breaker: lookups skip the service for ``BREAKER_RESET_S``, then one probes it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from o1sidecar.cachesvc import SIMILARITY_HEADER, TTL_HEADER
from o1sidecar.config import CacheServiceConfig
from o1sidecar.limits.breaker import CircuitBreaker

log = logging.getLogger(__name__)

BREAKER_FAILURES = 3
BREAKER_RESET_S = 5.0
WRITE_TIMEOUT_S = 2.0  # a write is in the background: it may take longer than a lookup's budget


class ServiceUnavailable(Exception):
    """The service did not answer in time, or not sanely."""


class BreakerOpen(ServiceUnavailable):
    """Not asked: it failed lately, and the breaker's pause is not over."""


class ServiceBusy(ServiceUnavailable):
    """It answered at once that too many lookups were waiting (429): a miss, not a fault."""


class CacheServiceClient:
    def __init__(self, config: CacheServiceConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._base = config.url.rstrip("/") + "/v1/entries/"
        self._semantic = config.url.rstrip("/") + "/v1/semantic/"
        self.breaker = CircuitBreaker(failures=BREAKER_FAILURES, reset_s=BREAKER_RESET_S, clock=clock)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use, inside the running loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30), raise_for_status=False
            )
        return self._session

    async def get(self, key: str) -> tuple[bytes, float] | None:
        """``(body, seconds left)``, or ``None`` when the service holds no live entry. Raises
        ``ServiceUnavailable`` when it cannot say within the budget."""
        if not self.breaker.allow():
            raise BreakerOpen()
        try:
            async with asyncio.timeout(self.config.budget_ms / 1000):
                async with self._client().get(self._base + key) as resp:
                    if resp.status == 404:
                        found = None
                    elif resp.status == 200:
                        found = await resp.read(), float(resp.headers.get(TTL_HEADER, "1"))
                    else:
                        raise ServiceUnavailable(f"HTTP {resp.status}")
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, ServiceUnavailable) as exc:
            self._failed(exc)
            raise ServiceUnavailable(type(exc).__name__) from None
        self.breaker.success()
        return found

    async def put(self, key: str, body: bytes) -> None:
        """Store an entry for ``ttl_s``; a failure is logged and counted by the breaker, never raised."""
        if not self.breaker.allow():
            return
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                url = f"{self._base}{key}?ttl_s={self.config.ttl_s}"
                async with self._client().put(url, data=body) as resp:
                    if resp.status == 413:  # an answer larger than the service keeps: not a fault
                        log.debug("cache service keeps no answer of %d bytes", len(body))
                    elif resp.status != 204:
                        raise ServiceUnavailable(f"HTTP {resp.status}")
        except (TimeoutError, aiohttp.ClientError, OSError, ServiceUnavailable) as exc:
            self._failed(exc)
            return
        self.breaker.success()

    async def semantic_get(self, scope: str, text: str) -> tuple[bytes, float, float] | None:
        """``(answer, similarity, seconds left)`` of the nearest question of ``scope`` near enough to
        ``text``, or ``None``. Raises ``ServiceUnavailable`` when it cannot say within the semantic
        budget, ``ServiceBusy`` when too many lookups wait there.

        The semantic layer follows the breaker but never moves it: its lookups are CPU-bound and may
        run late when the service is merely busy, which must not close the service's L3 to the pool
        (the L3 calls, made first, say whether it is down)."""
        assert self.config.semantic is not None, "semantic_get without cache.service.semantic"
        if self.breaker.state != "closed":
            raise BreakerOpen()
        try:
            async with asyncio.timeout(self.config.semantic.budget_ms / 1000):
                payload = {"scope": scope, "text": text}
                async with self._client().post(self._semantic + "lookup", json=payload) as resp:
                    if resp.status == 429:
                        raise ServiceBusy()
                    if resp.status == 404:
                        return None
                    if resp.status != 200:
                        raise ServiceUnavailable(f"HTTP {resp.status}")
                    similarity = float(resp.headers.get(SIMILARITY_HEADER, "nan"))
                    return await resp.read(), similarity, float(resp.headers.get(TTL_HEADER, "1"))
        except ServiceBusy:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, ServiceUnavailable) as exc:
            log.debug("semantic lookup at %s failed: %s", self.config.url, type(exc).__name__)
            raise ServiceUnavailable(type(exc).__name__) from None

    async def put_with_question(self, key: str, body: bytes, scope: str, text: str) -> None:
        """Store an entry, then index its question for the semantic layer (in that order: a lookup
        that finds the question finds the answer). Failures are logged, never raised; as with lookups,
        indexing follows the breaker but does not move it."""
        await self.put(key, body)
        if self.breaker.state != "closed":
            return
        payload = {"scope": scope, "key": key, "text": text, "ttl_s": self.config.ttl_s}
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                async with self._client().post(self._semantic + "entries", json=payload) as resp:
                    if resp.status in (422, 429):  # too long to index, or too many waiting: not a fault
                        log.debug("cache service did not index a question (HTTP %d)", resp.status)
                    elif resp.status != 204:
                        raise ServiceUnavailable(f"HTTP {resp.status}")
        except (TimeoutError, aiohttp.ClientError, OSError, ServiceUnavailable) as exc:
            log.info("cache service %s did not index a question: %s", self.config.url, exc)

    def _failed(self, exc: BaseException) -> None:
        if self.breaker.failure():
            log.warning(
                "cache service %s unavailable, skipping L3 for %.1fs: %s",
                self.config.url,
                self.breaker.reset_s,
                exc if isinstance(exc, ServiceUnavailable) else type(exc).__name__,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
