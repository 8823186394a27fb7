"""The Redis circuit breaker (pure state machine on a fake clock)."""

from __future__ import annotations

from o1sidecar.limits.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_consecutive_failures_then_probes_once() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, reset_s=2.0, clock=clock)
    assert not b.failure() and not b.failure()
    b.success()  # a success in between resets the count
    assert not b.failure() and not b.failure()
    assert b.failure()
    assert b.state == "open" and not b.allow()
    clock.t = 2.0
    assert b.state == "half_open"
    assert b.allow() and not b.allow()  # exactly one probe
    assert not b.failure()  # the probe failed: open again
    assert b.state == "open"
    clock.t = 4.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()


def test_a_burst_of_failures_at_one_instant_does_not_open_it() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, reset_s=2.0, min_span_s=0.25, clock=clock)
    assert not any(b.failure() for _ in range(50))  # one event-loop stall times out 50 calls at once
    clock.t = 0.3
    assert b.failure()


def test_trip_opens_at_once() -> None:
    b = CircuitBreaker(failures=3, reset_s=2.0, clock=Clock())
    b.trip()
    assert b.state == "open"
