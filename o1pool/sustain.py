"""The highest rate one sidecar sustains on one core (issue 14: ">= 1,500 requests/s through the full
path, Redis admission and cache on, on one core before its p99 passes 10 ms").

One sidecar (Redis limiter, cache on, every request different so each takes the whole path) is
pinned to one core; the emulator (zero latency), redis-server and the load generator (this process)
share the others. The offered rate steps up until the answers fall behind the offer; each step
reports what was answered, the latency, and how busy each side was, so that a step that fails says
whether the sidecar's core or the rest of the machine ran out. The sidecar sustains a rate when every
request was answered, the answers kept up with the offer, and the p99 stayed within the limit, at that
rate and every lower one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from o1pool.loadgen import Planned, chat_body, drive, percentile, plan_arrivals, table
from o1pool.procs import RedisServer, cpu_seconds
from o1pool.scenarios import MODEL, cluster, emulator_config


@dataclass(frozen=True)
class SustainSettings:
    rates_rps: tuple[float, ...] = (250.0, 350.0, 450.0, 550.0, 750.0, 1000.0, 1500.0)
    step_s: float = 10.0
    p99_limit_ms: float = 10.0
    keep_up: float = 0.95  # answered per second over offered per second, at least

    def describe(self) -> str:
        rates = ", ".join(f"{r:.0f}" for r in self.rates_rps)
        return (
            f"one sidecar pinned to one core (Redis limiter, cache on, every request a miss), {rates} rps "
            f"for {self.step_s:.0f} s each; sustained: all answered, >= {self.keep_up:.0%} of the offer "
            f"per second, p99 <= {self.p99_limit_ms:.0f} ms"
        )


@dataclass
class SustainStep:
    rate_rps: float
    sent: int
    latencies_s: list[float]
    errors: int
    wall_s: float  # from the first request sent to the last answer
    sidecar_cpu_s: float
    rest_cpu_s: float  # the emulator, redis-server and the load generator, on the other cores
    rest_cores: int

    @property
    def answered(self) -> int:
        return len(self.latencies_s)

    @property
    def answered_rps(self) -> float:
        return self.answered / self.wall_s if self.wall_s > 0 else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_s, q)

    @property
    def sidecar_core(self) -> float:
        """The sidecar's share of its one core."""
        return self.sidecar_cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def rest_core(self) -> float:
        """The rest's share of the cores left to it."""
        return self.rest_cpu_s / self.wall_s / max(1, self.rest_cores) if self.wall_s > 0 else 0.0


@dataclass
class SustainResult:
    settings: SustainSettings
    steps: list[SustainStep] = field(default_factory=list)
    pinned: bool = False  # False: fewer than two cores, nothing was pinned

    def held(self, step: SustainStep) -> bool:
        s = self.settings
        return (
            step.errors == 0
            and step.answered == step.sent
            and step.answered_rps >= s.keep_up * step.rate_rps
            and step.p(0.99) * 1000 <= s.p99_limit_ms
        )

    def sustained_rps(self) -> float:
        """The highest offered rate that held, every lower one having held too (0: none)."""
        best = 0.0
        for step in self.steps:
            if not self.held(step):
                break
            best = step.rate_rps
        return best


@contextmanager
def pinned(pids: dict[int, set[int]]) -> Iterator[None]:
    """Each process on its cores for the block; their former affinities after it."""
    before = {pid: os.sched_getaffinity(pid) for pid in pids}
    try:
        for pid, cores in pids.items():
            os.sched_setaffinity(pid, cores)
        yield
    finally:
        for pid, cores in before.items():
            try:
                os.sched_setaffinity(pid, cores)
            except ProcessLookupError:
                pass


async def _step(url: str, rate: float, duration_s: float, sender: str) -> tuple[list[float], int, int, float]:
    plan = plan_arrivals(rate, duration_s, ((5, 1.0),), seed=11)

    def body(p: Planned) -> dict[str, object]:
        return chat_body(p, MODEL, max_tokens=16, sender=sender)

    started = time.monotonic()
    outcomes = await drive([url], plan, body, timeout_s=30.0)
    wall = time.monotonic() - started
    latencies = [o.latency_s for o in outcomes if o.status == 200]
    return latencies, sum(o.status != 200 for o in outcomes), len(plan), wall


async def run_sustain(settings: SustainSettings, redis: RedisServer) -> SustainResult:
    big = 10_000_000
    emu_cfg = emulator_config(big, big * 100, latency_scale=0.0)
    cores = sorted(os.sched_getaffinity(0))
    result = SustainResult(settings, pinned=len(cores) >= 2)
    with cluster(emu_cfg, 1, {"rpm": big, "tpm": big * 100}, redis, cache=True) as c:
        emulator, sidecar = c.procs[0], c.procs[1]
        assert redis.proc is not None
        rest_pids = [emulator.pid, redis.proc.pid, os.getpid()]
        sidecar_cores, rest_cores = {cores[0]}, set(cores[1:])
        if not result.pinned:
            sidecar_cores = rest_cores = set(cores)
        with pinned({sidecar.pid: sidecar_cores, **{pid: rest_cores for pid in rest_pids}}):
            await _step(c.sidecar_urls[0], 100.0, 2.0, "warm-up ")
            for i, rate in enumerate(settings.rates_rps):
                side0 = cpu_seconds(sidecar.pid)
                rest0 = sum(cpu_seconds(pid) for pid in rest_pids)
                latencies, errors, sent, wall = await _step(
                    c.sidecar_urls[0], rate, settings.step_s, f"step {i} "
                )
                step = SustainStep(
                    rate,
                    sent,
                    latencies,
                    errors,
                    wall,
                    cpu_seconds(sidecar.pid) - side0,
                    sum(cpu_seconds(pid) for pid in rest_pids) - rest0,
                    len(rest_cores),
                )
                result.steps.append(step)
                if step.errors or step.answered_rps < settings.keep_up * step.rate_rps:
                    break  # (it fell behind: a higher rate says nothing more)
    return result


def sustain_table(result: SustainResult) -> str:
    rows: list[Sequence[object]] = []
    for step in result.steps:
        rows.append(
            (
                f"{step.rate_rps:.0f}",
                step.sent,
                step.answered,
                step.errors,
                step.answered_rps,
                step.p(0.5) * 1000 if step.latencies_s else math.nan,
                step.p(0.99) * 1000 if step.latencies_s else math.nan,
                f"{step.sidecar_core:.0%}",
                step.sidecar_cpu_s / max(1, step.sent) * 1e6,
                f"{step.rest_core:.0%}",
                "yes" if result.held(step) else "no",
            )
        )
    headers = [
        "offered rps",
        "sent",
        "answered",
        "errors",
        "answered rps",
        "p50 ms",
        "p99 ms",
        "sidecar core busy",
        "sidecar CPU µs/req",
        "other cores busy",
        "held",
    ]
    where = "pinned to one core" if result.pinned else "NOT pinned (fewer than two cores)"
    return (
        table(headers, rows)
        + f"\nsustained by one sidecar {where}: {result.sustained_rps():.0f} rps "
        + f"(target 1,500 rps with p99 <= {result.settings.p99_limit_ms:.0f} ms)"
    )
