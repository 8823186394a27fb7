"""The upstream matrix: do the pool's limits hold against upstreams the sidecar was not written for?

Each cell is one upstream behaviour: a limit algorithm (token bucket, 60 s sliding log, 60 s fixed
window, sub-minute windows), with or without ``x-ratelimit-*`` headers, with the real limit as
configured or 20% lower. Per cell: one emulator, ``sidecars`` sidecar processes sharing one Redis
under a pool of their own, two accounts (one with two keys), and the openai SDK (``max_retries=0``)
offering ``overload`` x the configured capacity for a warm-up and a measured period. The emulator's
own counters are the referee: upstream calls and 429s, and admissions per second per account.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from o1pool.loadgen import Outcome, chat_body, drive, percentile, plan_arrivals
from o1pool.procs import RedisServer
from o1pool.scenarios import MODEL, Layout, cluster, emulator_config, emulator_stats

# name -> (emulator limiter.algorithm, limiter.window_s)
UPSTREAMS: dict[str, tuple[str, float]] = {
    "token bucket": ("token_bucket", 60.0),
    "sliding log 60s": ("sliding_log", 60.0),
    "fixed window 60s": ("fixed_window", 60.0),
    "sliding log 10s": ("sliding_log", 10.0),
    "fixed window 1s": ("fixed_window", 1.0),
}
ACCOUNTS = (("acct-a", ("k1", "k2")), ("acct-b", ("k1",)))
PRIORITY_NAMES = {8: "high", 5: "normal", 2: "low"}


@dataclass(frozen=True)
class Cell:
    upstream: str  # a key of UPSTREAMS
    headers: bool = True
    real_share: float = 1.0  # the limit the upstream really enforces, as a share of the configured one

    @property
    def label(self) -> str:
        limit = "known" if self.real_share == 1.0 else f"{1 - self.real_share:.0%} lower"
        return f"{self.upstream}, {'headers' if self.headers else 'no headers'}, limit {limit}"


def all_cells() -> list[Cell]:
    return [Cell(u, h, share) for u in UPSTREAMS for h in (True, False) for share in (1.0, 0.8)]


@dataclass(frozen=True)
class MatrixSettings:
    sidecars: int = 4
    rpm: int = 120  # configured, per account
    tpm: int = 10_000_000  # not binding
    overload: float = 3.0
    warmup_s: float = 60.0
    measure_s: float = 300.0
    deadline_ms: int = 15_000
    latency_scale: float = 0.05
    max_tokens: int = 64
    priority_mix: tuple[tuple[int, float], ...] = ((8, 0.2), (5, 0.5), (2, 0.3))
    sidecar_extra: tuple[tuple[str, Any], ...] = ()  # extra sidecar config sections (for comparisons)

    @property
    def capacity_rps(self) -> float:
        return self.rpm * len(ACCOUNTS) / 60


@dataclass
class CellResult:
    cell: Cell
    settings: MatrixSettings
    outcomes: list[Outcome]
    at_warmup: dict[str, Any]  # emulator stats when the measured period began
    at_end: dict[str, Any]  # and when it ended
    timeline: dict[str, Any]
    started_s: float  # the emulator's uptime when the load began (timeline seconds are since its start)

    def _sum(self, stats: dict[str, Any], field_: str) -> int:
        return sum(a["models"][MODEL][field_] for a in stats["accounts"].values())

    @property
    def upstream_calls(self) -> int:
        admitted = self._sum(self.at_end, "admitted") - self._sum(self.at_warmup, "admitted")
        return admitted + self.upstream_429s

    @property
    def upstream_429s(self) -> int:
        return self._sum(self.at_end, "rejected_total") - self._sum(self.at_warmup, "rejected_total")

    @property
    def rate_429(self) -> float:
        return self.upstream_429s / self.upstream_calls if self.upstream_calls else 0.0

    @property
    def real_rpm(self) -> float:
        """The binding limit the upstream really enforces, all accounts together, per minute."""
        return sum(a["models"][MODEL]["limits"]["rpm"] for a in self.at_end["accounts"].values())

    @property
    def utilisation(self) -> float:
        admitted = self.upstream_calls - self.upstream_429s
        return admitted / (self.real_rpm * self.settings.measure_s / 60)

    def measured(self) -> list[Outcome]:
        """Outcomes of requests that arrived in the measured period."""
        s = self.settings
        return [o for o in self.outcomes if s.warmup_s <= o.planned.at_s < s.warmup_s + s.measure_s]

    @property
    def lost(self) -> int:
        """Requests that got neither an answer nor a 429 with retry-after: errors, resets, timeouts."""
        return sum(o.status not in (200, 429) for o in self.outcomes)

    def served_share(self, priority: int) -> float:
        group = [o for o in self.measured() if o.planned.priority == priority]
        return sum(o.status == 200 for o in group) / len(group) if group else math.nan

    def wait_p95(self, priority: int) -> float:
        waits = [
            o.queue_wait_s for o in self.measured() if o.planned.priority == priority and o.status == 200
        ]
        return percentile(waits, 0.95)

    def per_second(self) -> dict[str, list[tuple[int, int, int]]]:
        """account -> [(second since the load began, admitted, refused)]."""
        offset = math.floor(self.started_s)
        return {
            account: [(sec - offset, a, r) for sec, a, r in models.get(MODEL, []) if sec >= offset]
            for account, models in self.timeline["accounts"].items()
        }


def cell_configs(
    cell: Cell, settings: MatrixSettings, pool: str
) -> tuple[Layout, dict[str, Any], dict[str, Any]]:
    layout = Layout(accounts=ACCOUNTS, pool=pool)
    algorithm, window = UPSTREAMS[cell.upstream]
    limiter = {
        "algorithm": algorithm,
        "window_s": window,
        "headers": cell.headers,
        "limit_scale": cell.real_share,
    }
    if not cell.headers:
        limiter["retry_after_s"] = 1.0  # an upstream that says nothing useful
    emu = emulator_config(settings.rpm, settings.tpm, settings.latency_scale, layout=layout, limiter=limiter)
    limits = {"rpm": settings.rpm, "tpm": settings.tpm}
    return layout, emu, limits


async def _snapshot_at(url: str, delay_s: float) -> dict[str, Any]:
    await asyncio.sleep(delay_s)
    return await emulator_stats(url)


async def _timeline(url: str) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url + "/admin/timeline") as resp:
        return dict(await resp.json())


async def run_cells(
    cells: Sequence[Cell], settings: MatrixSettings, redis: RedisServer, *, tag: str = "m"
) -> list[CellResult]:
    """Run ``cells`` at the same time, each on its own emulator and sidecars (one Redis, a pool each)."""
    plan = plan_arrivals(
        settings.capacity_rps * settings.overload,
        settings.warmup_s + settings.measure_s,
        settings.priority_mix,
    )
    headers = {"x-o1pool-deadline-ms": str(settings.deadline_ms)}
    with contextlib.ExitStack() as stack:
        clusters = []
        for i, cell in enumerate(cells):
            layout, emu_cfg, limits = cell_configs(cell, settings, f"{tag}{i}")
            extra = dict(settings.sidecar_extra)
            clusters.append(
                stack.enter_context(
                    cluster(emu_cfg, settings.sidecars, limits, redis, layout=layout, sidecar_extra=extra)
                )
            )

        async def one(c: Any) -> tuple[list[Outcome], dict[str, Any], dict[str, Any], dict[str, Any], float]:
            started = (await emulator_stats(c.emulator_url))["uptime_s"]
            warm = asyncio.create_task(_snapshot_at(c.emulator_url, settings.warmup_s))
            end = asyncio.create_task(_snapshot_at(c.emulator_url, settings.warmup_s + settings.measure_s))
            outcomes = await drive(
                c.sidecar_urls,
                plan,
                lambda p: chat_body(p, MODEL, max_tokens=settings.max_tokens),
                headers_for=lambda _p: headers,
                client="openai",
            )
            return outcomes, await warm, await end, await _timeline(c.emulator_url), started

        runs = await asyncio.gather(*(one(c) for c in clusters))
    return [CellResult(cell, settings, *run) for cell, run in zip(cells, runs, strict=True)]


@dataclass
class MatrixResult:
    settings: MatrixSettings
    cells: list[CellResult] = field(default_factory=list)
