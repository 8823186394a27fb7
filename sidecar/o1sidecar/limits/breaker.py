"""A circuit breaker for the Redis connection, as a small state machine on an injected clock.

Closed: calls go to Redis. ``failures`` consecutive failures spread over at least ``min_span_s``
open it: calls go elsewhere for ``reset_s``. (The span keeps one stall of this process's event loop,
which times out every call in flight at once, from looking like an outage.) Then it is
half-open: one probe may go through; success closes it, failure reopens it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    failures: int
    reset_s: float
    min_span_s: float = 0.0
    clock: Callable[[], float] = time.monotonic
    _consecutive: int = 0
    _first_failure: float = 0.0
    _opened_at: float | None = None
    _probing: bool = field(default=False)

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self.clock() - self._opened_at >= self.reset_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """Whether a call may go to Redis now (closed, or the single probe of a half-open breaker)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def trip(self) -> None:
        """Open the breaker now (Redis was down from the start)."""
        self._consecutive = max(self._consecutive, self.failures)
        self._opened_at = self.clock()
        self._probing = False

    def failure(self) -> bool:
        """Record a failure; True if this failure opened (or reopened) the breaker."""
        now = self.clock()
        if self._consecutive == 0:
            self._first_failure = now
        self._consecutive += 1
        self._probing = False
        if self._opened_at is not None:
            self._opened_at = now
            return False
        if self._consecutive >= self.failures and now - self._first_failure >= self.min_span_s:
            self._opened_at = now
            return True
        return False
