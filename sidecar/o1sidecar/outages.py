"""Whether a model is down everywhere: after ``failures`` upstream failures in a row (5xx, timeouts,
connection errors, on any account) spread over at least ``SPAN_S`` (so that a burst of unlucky
concurrent calls under random faults is not an outage), the model is *down* for ``probe_s``:
requests skip it for the next model of their fallback chain, and one failure on it is not retried.
Then it is tried again (half-open); a success brings it back, a failure puts it down for another
``probe_s``. Pure, on the limiter's ``CircuitBreaker`` and an injected clock."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from o1sidecar.limits.breaker import CircuitBreaker
from o1sidecar.plan import Outcome

log = logging.getLogger(__name__)

FAILURES = frozenset({Outcome.SERVER_ERROR, Outcome.TIMEOUT, Outcome.NETWORK_ERROR})
SPAN_S = 2.0
ANSWERED = frozenset({Outcome.OK, Outcome.CLIENT_ERROR, Outcome.CONTEXT_LENGTH, Outcome.RATE_LIMITED})


class ModelOutages:
    def __init__(self, failures: int, probe_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.probe_s = probe_s
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}

    def _breaker(self, model: str) -> CircuitBreaker:
        breaker = self._breakers.get(model)
        if breaker is None:
            breaker = self._breakers[model] = CircuitBreaker(
                self.failures, self.probe_s, min_span_s=SPAN_S, clock=self._clock
            )
        return breaker

    def down(self, model: str) -> bool:
        """Whether requests should skip ``model`` now (it failed everywhere, and its probe time has
        not come)."""
        breaker = self._breakers.get(model)
        return breaker is not None and breaker.state == "open"

    def record(self, model: str, outcome: Outcome) -> None:
        """An attempt on ``model`` ended in ``outcome``."""
        if outcome in ANSWERED:
            if model in self._breakers:
                self._breaker(model).success()
        elif outcome in FAILURES and self._breaker(model).failure():
            log.warning(
                "model %s is failing on every account (%d or more failures in a row over %.0fs): requests "
                "skip it for the next model of their fallback chain for %.0fs, then it is tried again",
                model,
                self.failures,
                SPAN_S,
                self.probe_s,
            )
