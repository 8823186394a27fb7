"""The upstream matrix: do the pool's limits hold against upstreams the sidecar was not written for?

Each cell is one upstream behaviour: a limit algorithm (token bucket, 60 s sliding log, 60 s fixed
window, sub-minute windows), with or without ``x-ratelimit-*`` headers (without them, every 429 says
``retry-after: 1`` whatever the real wait), with the real limit as configured or 20% lower. Per cell:
one emulator, ``sidecars`` sidecar processes sharing one Redis under a pool of their own, two
accounts (one with two keys), and the openai SDK (``max_retries=0``) offering ``overload`` x the
configured capacity with mixed priorities, for a warm-up and a measured period. The emulator's own
counters are the referee: upstream calls and 429s, admissions per second per account.

A cell may also run the *previous release*: sidecars from another git ref of this repository (the
limiter before pacing and adaptive limits), against the same upstream, side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from o1pool.loadgen import Outcome, Planned, chat_body, drive, percentile, plan_arrivals, table
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
# name -> fields of every sidecar account; "previous release" runs sidecars from another git ref
CLIENTS: dict[str, dict[str, Any]] = {"o1pool": {}, "previous release": {}}
ACCOUNTS = (("acct-a", ("k1", "k2")), ("acct-b", ("k1",)))
PRIORITIES = {8: "high", 5: "normal", 2: "low"}

# The targets, per cell: (max 429 rate, min utilisation of the real binding limit)
TARGETS = {True: (0.005, 0.97), False: (0.02, 0.90)}  # keyed by "the limit is known"
HIGH_P95_WAIT_S = 1.0


# A TPM-bound cell: a non-Latin prompt, which an upstream estimating escaped-JSON characters (the
# emulator's ``json_chars``) charges about twice what the sidecar counts with the model's tokenizer
# (161 tokens; its usage says so too). The configured TPM is what RPM such requests cost upstream, so
# the real capacity in requests is the RPM cells', and the sidecar's own count says twice that.
TOKENS_PROMPT = "请用三行总结本季度的计划并列出主要风险和应对措施。" * 8
TOKENS_BUDGET = 16
TOKENS_PER_REQUEST = 315  # what the upstream charges for it, about


@dataclass(frozen=True)
class Cell:
    upstream: str  # a key of UPSTREAMS
    headers: bool = True
    real_share: float = 1.0  # the limit the upstream really enforces, as a share of the configured one
    client: str = "o1pool"  # a key of CLIENTS
    binding: Literal["requests", "tokens"] = "requests"  # tokens: TPM binds, by an estimate unknown to us
    rpm: int | None = None  # configured RPM per account, if not the settings'

    @property
    def known(self) -> bool:
        """The sidecar's model of the limit is right (the limit as configured, charged as counted)."""
        return self.real_share == 1.0 and self.binding == "requests"

    @property
    def label(self) -> str:
        if self.binding == "tokens":
            return f"{self.upstream}, {'headers' if self.headers else 'no headers'}, TPM by escaped JSON"
        limit = "known" if self.real_share == 1.0 else f"{1 - self.real_share:.0%} lower"
        return f"{self.upstream}, {'headers' if self.headers else 'no headers'}, limit {limit}"


def all_cells(baseline: bool = True) -> list[Cell]:
    """The 20 upstream cells, two TPM-bound cells whose upstream charges by an estimate the sidecar
    does not know, and the previous release on the issue's own example (60 s sliding log, no
    headers, the limit known and 20% lower)."""
    cells = [Cell(u, h, share) for u in UPSTREAMS for h in (True, False) for share in (1.0, 0.8)]
    cells += [Cell("sliding log 60s", h, binding="tokens") for h in (True, False)]
    if baseline:
        cells += [Cell("sliding log 60s", False, share, "previous release") for share in (1.0, 0.8)]
    return cells


@dataclass(frozen=True)
class MatrixSettings:
    sidecars: int = 4
    rpm: int = 300  # configured, per account (whole per second and per 10 s, also at 80%)
    tpm: int = 10_000_000  # not binding
    overload: float = 3.0
    warmup_s: float = 60.0
    measure_s: float = 300.0
    deadline_ms: int = 15_000
    latency_scale: float = 0.05
    max_tokens: int = 64
    bucket_burst: float = 1.0  # a token-bucket upstream's capacity, in minutes of its limit
    priority_mix: tuple[tuple[int, float], ...] = ((8, 0.2), (5, 0.5), (2, 0.3))

    def rpm_of(self, cell: Cell) -> int:
        return cell.rpm or self.rpm

    def offered_rps(self, cell: Cell) -> float:
        """``overload`` times the configured capacity (in requests) of the cell's accounts."""
        return self.overload * self.rpm_of(cell) * len(ACCOUNTS) / 60


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
    def upstream_429s(self) -> int:
        return self._sum(self.at_end, "rejected_total") - self._sum(self.at_warmup, "rejected_total")

    @property
    def admitted(self) -> int:
        return self._sum(self.at_end, "admitted") - self._sum(self.at_warmup, "admitted")

    @property
    def upstream_calls(self) -> int:
        return self.admitted + self.upstream_429s

    @property
    def rate_429(self) -> float:
        return self.upstream_429s / self.upstream_calls if self.upstream_calls else 0.0

    @property
    def real_rpm(self) -> float:
        """The binding limit the upstream really enforces, all accounts together, per minute (for a
        sub-minute window: whole requests per window)."""
        return float(
            sum(a["models"][MODEL]["limits"]["rpm_enforced"] for a in self.at_end["accounts"].values())
        )

    @property
    def real_rps(self) -> float:
        """Calls per second the upstream's binding limit allows, all accounts together."""
        if self.cell.binding == "tokens":
            charged = self._sum(self.at_end, "tokens_charged") / max(1, self._sum(self.at_end, "admitted"))
            return self.real_tpm / charged / 60
        return self.real_rpm / 60

    @property
    def real_tpm(self) -> float:
        return float(
            sum(a["models"][MODEL]["limits"]["tpm_enforced"] for a in self.at_end["accounts"].values())
        )

    @property
    def utilisation(self) -> float:
        """What the upstream admitted in the measured period (calls, or tokens for a TPM-bound cell),
        over what its real limit allows then."""
        if self.cell.binding == "tokens":
            charged = self._sum(self.at_end, "tokens_charged") - self._sum(self.at_warmup, "tokens_charged")
            return charged / (self.real_tpm * self.settings.measure_s / 60)
        return self.admitted / (self.real_rpm * self.settings.measure_s / 60)

    def measured(self) -> list[Outcome]:
        """Outcomes of requests that arrived in the measured period."""
        s = self.settings
        return [o for o in self.outcomes if s.warmup_s <= o.planned.at_s < s.warmup_s + s.measure_s]

    @property
    def lost(self) -> int:
        """Requests that got neither an answer nor a 429 with retry-after: errors, resets, timeouts."""
        return sum(o.status not in (200, 429) for o in self.outcomes)

    def fair_share(self, priority: int) -> float:
        """The share of ``priority``'s requests the real limit lets through if they go first."""
        offered = self.settings.offered_rps(self.cell) * dict(self.settings.priority_mix)[priority]
        return min(1.0, self.real_rps / offered)

    def served_share(self, priority: int) -> float:
        group = [o for o in self.measured() if o.planned.priority == priority]
        return sum(o.status == 200 for o in group) / len(group) if group else math.nan

    def wait_p95(self, priority: int) -> float:
        waits = [
            o.queue_wait_s for o in self.measured() if o.planned.priority == priority and o.status == 200
        ]
        return percentile(waits, 0.95)

    def misses(self) -> list[str]:
        """The targets this cell misses (empty: all met). Baseline cells are not held to them."""
        max_429, min_use = TARGETS[self.cell.known]
        out = []
        if self.rate_429 > max_429:
            out.append(f"429 rate {self.rate_429:.2%} > {max_429:.1%}")
        if self.utilisation < min_use:
            out.append(f"utilisation {self.utilisation:.1%} < {min_use:.0%}")
        if self.lost:
            out.append(f"{self.lost} lost")
        if self.served_share(8) < 0.99 * self.fair_share(8):
            out.append(f"high served {self.served_share(8):.0%}")
        if not self.wait_p95(8) <= HIGH_P95_WAIT_S:
            out.append(f"high p95 wait {self.wait_p95(8):.2f} s > {HIGH_P95_WAIT_S:.0f} s")
        return out

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
    limiter: dict[str, Any] = {
        "algorithm": algorithm,
        "window_s": window,
        "headers": cell.headers,
        "limit_scale": cell.real_share,
    }
    if not cell.headers:
        limiter["retry_after_s"] = 1.0  # an upstream that says nothing useful
    rpm, tpm = settings.rpm_of(cell), settings.tpm
    extra: dict[str, Any] = {}
    if cell.binding == "tokens":
        rpm, tpm = 10 * settings.rpm_of(cell), settings.rpm_of(cell) * TOKENS_PER_REQUEST
        extra = {"tokens": {"estimate": "json_chars"}}
    emu = emulator_config(
        rpm, tpm, settings.latency_scale, layout=layout, limiter=limiter, burst=settings.bucket_burst, **extra
    )
    return layout, emu, {"rpm": rpm, "tpm": tpm}


def cell_body(cell: Cell, planned: Planned, settings: MatrixSettings) -> dict[str, object]:
    if cell.binding == "tokens":
        text = f"{TOKENS_PROMPT} #{planned.index}"
        return {
            "model": MODEL,
            "messages": [{"role": "user", "content": text}],
            "max_completion_tokens": TOKENS_BUDGET,
        }
    return chat_body(planned, MODEL, max_tokens=settings.max_tokens)


async def _snapshot_at(url: str, delay_s: float, session: Any) -> dict[str, Any]:
    await asyncio.sleep(delay_s)
    return await emulator_stats(url, session=session)


async def _timeline(url: str) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url + "/admin/timeline") as resp:
        return dict(await resp.json())


def previous_release(ref: str, into: Path) -> dict[str, str] | None:
    """The environment that runs sidecars from git ``ref`` of this repository (extracted into
    ``into``), or ``None`` when the ref is not in the repository (a shallow clone)."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", ref], capture_output=True, check=False)
    if archive.returncode != 0:
        return None
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    path = [str(into / folder) for folder in ("", "sidecar", "emulator", "operator", "common")]
    return {"PYTHONPATH": os.pathsep.join(path)}


async def run_cells(
    cells: Sequence[Cell],
    settings: MatrixSettings,
    redis: RedisServer,
    *,
    tag: str = "m",
    previous_env: dict[str, str] | None = None,
) -> list[CellResult]:
    """Run ``cells`` at the same time, each on its own emulator and sidecars (one Redis, a pool each).
    ``previous_env`` runs the sidecars of "previous release" cells (see ``previous_release``)."""
    headers = {"x-o1pool-deadline-ms": str(settings.deadline_ms)}
    with contextlib.ExitStack() as stack:
        clusters = []
        for i, cell in enumerate(cells):
            layout, emu_cfg, limits = cell_configs(cell, settings, f"{tag}{i}")
            env = previous_env if cell.client == "previous release" else None
            if cell.client == "previous release" and env is None:
                raise ValueError("a previous-release cell needs previous_env (matrix.previous_release)")
            clusters.append(
                stack.enter_context(
                    cluster(
                        emu_cfg,
                        settings.sidecars,
                        limits,
                        redis,
                        layout=layout,
                        account_extra=CLIENTS[cell.client],
                        sidecar_env=env,
                    )
                )
            )

        async def one(
            c: Any, cell: Cell
        ) -> tuple[list[Outcome], dict[str, Any], dict[str, Any], dict[str, Any], float]:
            plan = plan_arrivals(
                settings.offered_rps(cell), settings.warmup_s + settings.measure_s, settings.priority_mix
            )
            import aiohttp

            # One kept-alive connection per emulator for the snapshots: none is a new connect at the
            # edge of the measured period, when a loaded machine can delay new connects for seconds.
            connector = aiohttp.TCPConnector(limit=2, keepalive_timeout=3600)
            async with aiohttp.ClientSession(connector=connector) as stats:
                started = (await emulator_stats(c.emulator_url, session=stats))["uptime_s"]
                end_s = settings.warmup_s + settings.measure_s
                warm = asyncio.create_task(_snapshot_at(c.emulator_url, settings.warmup_s, stats))
                end = asyncio.create_task(_snapshot_at(c.emulator_url, end_s, stats))
                outcomes = await drive(
                    c.sidecar_urls,
                    plan,
                    lambda p: cell_body(cell, p, settings),
                    headers_for=lambda _p: headers,
                    client="openai",
                )
                return outcomes, await warm, await end, await _timeline(c.emulator_url), started

        runs = await asyncio.gather(*(one(c, cell) for c, cell in zip(clusters, cells, strict=True)))
    return [CellResult(cell, settings, *run) for cell, run in zip(cells, runs, strict=True)]


async def run_matrix(
    cells: Sequence[Cell],
    settings: MatrixSettings,
    redis: RedisServer,
    *,
    parallel: int = 5,
    progress: bool = True,
    previous_env: dict[str, str] | None = None,
) -> list[CellResult]:
    """Every cell, ``parallel`` at a time (each batch runs side by side; Redis flushed in between)."""
    results: list[CellResult] = []
    for start in range(0, len(cells), parallel):
        batch = cells[start : start + parallel]
        if progress:
            names = "; ".join(c.label + ("" if c.client == "o1pool" else f" [{c.client}]") for c in batch)
            print(f"  cells {start + 1}-{start + len(batch)} of {len(cells)}: {names}", flush=True)
        results += await run_cells(batch, settings, redis, tag=f"m{start}-", previous_env=previous_env)
        redis.flush()
    return results


def matrix_table(results: Sequence[CellResult]) -> str:
    rows = []
    for r in results:
        misses = r.misses()
        verdict = "-" if r.cell.client != "o1pool" else ("met" if not misses else "; ".join(misses))
        rows.append(
            (
                r.cell.label + ("" if r.cell.client == "o1pool" else f" [{r.cell.client}]"),
                f"{r.upstream_429s}/{r.upstream_calls}",
                f"{r.rate_429:.2%}",
                f"{r.utilisation:.1%}",
                r.lost,
                *(f"{r.served_share(p):.0%}" for p in PRIORITIES),
                r.wait_p95(8),
                verdict,
            )
        )
    return table(
        [
            "upstream",
            "429s/calls",
            "429 rate",
            "use of real limit",
            "lost",
            *(f"{name} served" for name in PRIORITIES.values()),
            "high p95 wait s",
            "targets",
        ],
        rows,
    )


def machine() -> str:
    import os

    python = platform.python_version()
    return f"{platform.node()}: {os.cpu_count()} cores, Python {python}, {platform.platform()}"
