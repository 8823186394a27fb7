"""The one-core sustained-rate benchmark (o1pool/sustain.py): what it decides, and one short real run
(a sidecar, the emulator and redis-server as processes, the sidecar pinned to its own core). The rate
itself is the benchmark's to report, not a test's to assert."""

from __future__ import annotations

import os

from o1pool.procs import RedisServer
from o1pool.sustain import SustainResult, SustainSettings, SustainStep, run_sustain, sustain_table


def step(rate: float, answered: int, p99_ms: float, wall_s: float = 1.0) -> SustainStep:
    slow = answered // 20  # the slowest 5%: the p99 is theirs
    latencies = [0.001] * (answered - slow) + [p99_ms / 1000] * slow
    return SustainStep(rate, int(rate * wall_s), latencies, 0, wall_s, 0.5, 0.5, 1)


def test_the_sustained_rate_is_the_last_step_that_held_with_every_lower_one() -> None:
    settings = SustainSettings(rates_rps=(100, 200, 300), p99_limit_ms=10.0)
    result = SustainResult(settings, [step(100, 100, 2.0), step(200, 200, 30.0), step(300, 300, 2.0)])
    assert result.sustained_rps() == 100.0  # (300 held, but 200 did not)
    behind = SustainResult(settings, [step(100, 100, 2.0), step(200, 150, 2.0)])  # answered 150 of 200
    assert not behind.held(behind.steps[1]) and behind.sustained_rps() == 100.0
    assert SustainResult(settings, [step(100, 100, 11.0)]).sustained_rps() == 0.0
    assert "sustained by one sidecar" in sustain_table(result)


async def test_a_short_run_answers_everything_with_the_sidecar_on_its_own_core(
    redis_server: RedisServer,
) -> None:
    settings = SustainSettings(rates_rps=(50.0, 100.0), step_s=2.0, p99_limit_ms=1_000.0)
    cores = os.sched_getaffinity(0)
    result = await run_sustain(settings, redis_server)
    assert result.pinned == (len(os.sched_getaffinity(0)) >= 2)
    assert [s.rate_rps for s in result.steps] == [50.0, 100.0]
    for s in result.steps:
        assert s.errors == 0 and s.answered == s.sent == int(s.rate_rps * settings.step_s)
        assert s.sidecar_cpu_s > 0 and s.rest_cpu_s > 0
    assert os.sched_getaffinity(0) == cores  # (this process is back on the cores it had)
