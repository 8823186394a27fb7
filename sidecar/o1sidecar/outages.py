"""Whether a model answers at all, and how it comes back after an outage. Pure, on an injected clock.

A model is *up* until ``failures`` upstream failures in a row (5xx, timeouts, connection errors, on
any account) spread over at least ``SPAN_S`` (so that a burst of unlucky concurrent calls under
random faults is not an outage; an answer, even a 400 or a 429, ends the run). Then it is *down*:
no request is sent to it; they go to the next model of their fallback chain, or are answered from
the cache, or wait (protected priorities) or get 503 (the proxy decides). Every ``probe_s`` one
request is the *probe*: if it is answered, the model is *ramping*: a growing share of its requests
goes through (``RAMP_SHARES``: 10%, then 25%, 50% and all, one step a minute, or as long as the
outage lasted if that was shorter: a blip comes back in seconds, a long outage over three minutes),
the rest are treated as down; a failure run during the ramp puts it down again. With Redis the
state is the pool's (outage_sync.py): one probe for all sidecars, one ramp.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from o1sidecar.limits.breaker import CircuitBreaker
from o1sidecar.plan import Outcome

log = logging.getLogger(__name__)

FAILURES = frozenset({Outcome.SERVER_ERROR, Outcome.TIMEOUT, Outcome.NETWORK_ERROR})
ANSWERED = frozenset({Outcome.OK, Outcome.CLIENT_ERROR, Outcome.CONTEXT_LENGTH, Outcome.RATE_LIMITED})
SPAN_S = 2.0
RAMP_SHARES = (0.10, 0.25, 0.50)  # then all
RAMP_STEP_S = 60.0  # at most
RAMP_RETRY_S = 5.0  # at most, what a request left out of the ramp is told to wait

Phase = Literal["up", "down", "ramp"]


def ramp_share(recovered_s: float, step_s: float = RAMP_STEP_S) -> float:
    """The share of a model's requests let through ``recovered_s`` after its probe was answered."""
    step = int(recovered_s // step_s) if step_s > 0 else len(RAMP_SHARES)
    return RAMP_SHARES[step] if 0 <= step < len(RAMP_SHARES) else 1.0


@dataclass(frozen=True)
class ModelState:
    """One model's phase. ``since``: when it went down, or when its probe was answered (ramp);
    ``probe_at``: while down, when the next probe may go; ``step_s``: while ramping, how long each
    step lasts. Times on the owner's clock."""

    phase: Phase = "up"
    since: float = 0.0
    probe_at: float = 0.0
    step_s: float = RAMP_STEP_S

    def share(self, now: float) -> float:
        """The share of requests let through at ``now``."""
        if self.phase == "down":
            return 0.0
        return ramp_share(now - self.since, self.step_s) if self.phase == "ramp" else 1.0


UP = ModelState()


@dataclass(frozen=True)
class Gate:
    """What one request may do with a model now: go (``pass``), go as the probe, or not (``down``,
    with when to try again)."""

    action: Literal["pass", "probe", "down"]
    retry_after_s: float = 0.0


class ModelOutages:
    def __init__(
        self,
        failures: int,
        probe_s: float,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.failures = failures
        self.probe_s = probe_s
        self._clock = clock
        self._rng = rng
        self._states: dict[str, ModelState] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._probing: set[str] = set()

    def now(self) -> float:
        return self._clock()

    def state(self, model: str) -> ModelState:
        """``model``'s phase now (a ramp that has run its course is up)."""
        st = self._states.get(model, UP)
        if st.phase == "ramp" and st.share(self._clock()) >= 1.0:
            self._states.pop(model, None)
            return UP
        return st

    def states(self) -> dict[str, ModelState]:
        """Every model that is not up."""
        return {m: st for m in list(self._states) if (st := self.state(m)).phase != "up"}

    def availability(self, model: str) -> float:
        """1 up, the ramp's share while ramping, 0 down."""
        return self.state(model).share(self._clock())

    def down(self, model: str) -> bool:
        return self.state(model).phase == "down"

    def gate(self, model: str) -> Gate:
        """What a request for ``model`` may do now. A ``probe`` gate makes this request the probe: the
        caller sends it and reports it with ``record(..., probe=True)`` (or ``probe_lost``)."""
        st = self.state(model)
        now = self._clock()
        if st.phase == "up":
            return Gate("pass")
        if st.phase == "ramp":
            left_out = Gate("down", min(RAMP_RETRY_S, st.step_s))
            return Gate("pass") if self._rng() < st.share(now) else left_out
        if now >= st.probe_at and model not in self._probing:
            self._probing.add(model)
            return Gate("probe")
        return Gate("down", max(1.0, st.probe_at - now))

    def probe_lost(self, model: str) -> None:
        """The probe gate was not used (another sidecar probes, or the request went elsewhere)."""
        self._probing.discard(model)

    def adopt(self, model: str, state: ModelState) -> None:
        """The pool's state for ``model`` (outage_sync.py)."""
        if state.phase == "up":
            if self._states.pop(model, None) is not None:
                self._breakers.pop(model, None)
        else:
            self._states[model] = state

    def record(self, model: str, outcome: Outcome, *, probe: bool = False) -> ModelState | None:
        """An attempt on ``model`` ended in ``outcome``. Returns the new state when the phase changed."""
        now = self._clock()
        st = self.state(model)
        if probe:
            self._probing.discard(model)
        if st.phase == "down":
            if not probe:
                return None  # sent before the outage was known: says nothing new
            if outcome in ANSWERED:
                step = min(RAMP_STEP_S, max(1.0, now - st.since))
                new = ModelState("ramp", since=now, step_s=step)
                self._breakers.pop(model, None)
                log.warning(
                    "model %s answered its probe after %.0fs down: ramping back (10%%, 25%%, 50%% of its "
                    "requests, %.0fs each, then all)",
                    model,
                    now - st.since,
                    step,
                )
            elif outcome in FAILURES:
                new = ModelState("down", since=st.since, probe_at=now + self.probe_s)
            else:
                return None
            self._states[model] = new
            return new
        if outcome in ANSWERED:
            breaker = self._breakers.get(model)
            if breaker is not None:
                breaker.success()
            return None
        if outcome not in FAILURES:
            return None
        breaker = self._breakers.get(model)
        if breaker is None:
            breaker = self._breakers[model] = CircuitBreaker(
                self.failures, self.probe_s, min_span_s=SPAN_S, clock=self._clock
            )
        if not breaker.failure():
            return None
        self._breakers.pop(model, None)
        new = self._states[model] = ModelState("down", since=now, probe_at=now + self.probe_s)
        log.warning(
            "model %s is failing on every account (%d or more failures in a row over %.0fs): no request "
            "is sent to it; one probe every %.0fs, then a gradual ramp back",
            model,
            self.failures,
            SPAN_S,
            self.probe_s,
        )
        return new
