"""``o1pool bench`` (d): fair share between a pool's clients, and what identity and budgets cost.

Fair share: one emulator (two accounts, 300 RPM each, headers on, the limit known: this is about
sharing, not about finding limits), one redis-server and three sidecar processes, one per client, as
three pods of three workloads would have (``O1POOL_WORKLOAD=Deployment/heavy``, ``light``,
``double``), each with the same config listing the three clients with weights 1, 1 and 2. The openai
SDK (``max_retries=0``) offers each client a multiple of its weighted share of the pool's capacity:
heavy 10x, light 1x, double 3x. Requests whose deadline passes in the queue are refused (429
``queue_timeout``). Served is judged by the sidecars' answers: the 200s each client got within the
measured period (the emulator cannot tell clients apart; its own counter of admitted calls is printed
next to their total). Fair shares are max-min fair (``fair_rates``): light, asking no more than its
weighted share of the configured capacity, is owed all it asks; heavy and double split the rest of
what the pool served, 1:2.

The cost of identity and budgets: the same low rate (no queueing) through one sidecar of no client
and one whose pod is a client with a budget, one after the other on a quiet redis-server. ``INFO
commandstats`` before and after an idle period and a loaded period of each says what Redis ran per
request (EVALSHA: one round trip each; the other commands are mostly those the scripts run) and in the
background per second (heartbeats and mirrors; with a client also the spend flush, a pipeline per
heartbeat).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from o1pool.loadgen import Outcome, Planned, Progress, chat_body, drive, percentile, plan_arrivals, table
from o1pool.procs import RedisServer, free_port, spawn_module, stop_all, wait_for_port
from o1pool.scenarios import MODEL, Cluster, Layout, cluster, emulator_config, emulator_stats, sidecar_config

PRIORITY = 5
SMOOTH_S = 5  # the plot's served calls per second, averaged over this many seconds


@dataclass(frozen=True)
class ClientLoad:
    name: str  # the client's name; its pod's workload is Deployment/<name>
    weight: float
    overload: float  # what it offers, in multiples of its weighted share of the capacity

    @property
    def workload(self) -> str:
        return f"Deployment/{self.name}"


CLIENTS = (ClientLoad("heavy", 1.0, 10.0), ClientLoad("light", 1.0, 1.0), ClientLoad("double", 2.0, 3.0))


@dataclass(frozen=True)
class FairnessSettings:
    rpm: int = 300  # per account, configured and real (the limit is known)
    accounts: int = 2
    warmup_s: float = 60.0
    measure_s: float = 180.0
    # A request waits at most this long, as in the upstream matrix. Not the sidecar's default (120 s):
    # heavy would keep up to 22.5/s x 120 s = 2,700 requests open at once, past the openai SDK's pool
    # of 1,000 connections, which then holds them back itself.
    deadline_ms: int | None = 15_000  # None: the sidecars' default (queue.default_deadline_ms)
    latency_scale: float = 0.05
    max_tokens: int = 64
    clients: tuple[ClientLoad, ...] = CLIENTS
    # the cost of identity and budgets
    cost_rate_rps: float = 10.0
    cost_idle_s: float = 20.0
    cost_load_s: float = 20.0

    @property
    def capacity_rps(self) -> float:
        return self.rpm * self.accounts / 60

    def weighted_share_rps(self, client: ClientLoad) -> float:
        return self.capacity_rps * client.weight / sum(c.weight for c in self.clients)

    def offered_rps(self, client: ClientLoad) -> float:
        return client.overload * self.weighted_share_rps(client)

    def describe(self) -> str:
        offered = ", ".join(
            f"{c.name} (weight {c.weight:g}) {c.overload:g}x = {self.offered_rps(c):.1f}/s"
            for c in self.clients
        )
        deadline = f"deadline {self.deadline_ms / 1000:g} s" if self.deadline_ms else "the default deadline"
        return (
            f"{self.accounts} accounts x {self.rpm} RPM ({self.capacity_rps:.1f} calls/s), one sidecar per "
            f"client; offered: {offered}; {deadline}; "
            f"{self.warmup_s:.0f} s warm-up + {self.measure_s:.0f} s measured"
        )


# The short mode (tests/load/test_fairness_bench.py): 20 s warm-up, 60 s measured, and a 5 s deadline.
# Heavy and double trade places on the deadline's time scale (the benchmark's plot shows swings of
# 10-20 s with its 15 s deadline), so a minute averages out more of those swings with a short one.
SHORT = FairnessSettings(
    warmup_s=20.0, measure_s=60.0, deadline_ms=5_000, cost_rate_rps=10.0, cost_idle_s=6.0, cost_load_s=8.0
)


def max_min_fair(capacity: float, demands: Sequence[tuple[float, float]]) -> list[float]:
    """Max-min fair rates of ``(weight, demand)`` pairs sharing ``capacity``: a client asking less
    than its weighted share of what is left gets what it asks; the others split the rest by weight."""
    fair = [0.0] * len(demands)
    open_ = set(range(len(demands)))
    left = capacity
    while open_:
        per_weight = left / sum(demands[i][0] for i in open_)
        satisfied = {i for i in open_ if demands[i][1] <= demands[i][0] * per_weight * (1 + 1e-9)}
        if not satisfied:
            for i in open_:
                fair[i] = demands[i][0] * per_weight
            break
        for i in satisfied:
            fair[i] = demands[i][1]
            left -= demands[i][1]
        open_ -= satisfied
    return fair


def fair_rates(configured: float, served: float, demands: Sequence[tuple[float, float]]) -> list[float]:
    """Each client's fair rate of what the pool ``served`` in all: a client asking no more than its
    max-min share of the ``configured`` capacity is owed all it asks; the others split the rest of what
    was served by weight. (Plain max-min over ``served`` would hold light to a quarter of it, less
    than it asks whenever the pool serves less than its configured rate, though the pool owes it all.)"""
    owed = max_min_fair(configured, demands)
    satisfied = [i for i, (_, asked) in enumerate(demands) if asked <= owed[i] * (1 + 1e-9)]
    others = [i for i in range(len(demands)) if i not in satisfied]
    rest = served - sum(demands[i][1] for i in satisfied)
    if rest < 0 or not others:
        return max_min_fair(served, demands)
    fair = [d[1] for d in demands]
    for i in others:
        fair[i] = rest * demands[i][0] / sum(demands[j][0] for j in others)
    return fair


@dataclass
class ClientResult:
    client: ClientLoad
    outcomes: list[Outcome]  # every request of the run (warm-up and tail included)
    settings: FairnessSettings
    fair_rps: float = math.nan  # set once every client is known (FairnessResult)

    def _in_period(self, at_s: float) -> bool:
        s = self.settings
        return s.warmup_s <= at_s < s.warmup_s + s.measure_s

    def arrived(self) -> list[Outcome]:
        """Requests that arrived in the measured period."""
        return [o for o in self.outcomes if self._in_period(o.planned.at_s)]

    @property
    def offered_rps(self) -> float:
        return len(self.arrived()) / self.settings.measure_s

    def answered_at(self) -> list[float]:
        """When each served request was answered (seconds since the load began)."""
        return [o.planned.at_s + o.latency_s for o in self.outcomes if o.status == 200]

    @property
    def served_rps(self) -> float:
        """Requests answered 200 in the measured period, per second."""
        return sum(self._in_period(t) for t in self.answered_at()) / self.settings.measure_s

    @property
    def served_of_offered(self) -> float:
        """The share of the period's arrivals answered 200 (whenever they were admitted)."""
        arrived = self.arrived()
        return sum(o.status == 200 for o in arrived) / len(arrived) if arrived else math.nan

    @property
    def refused(self) -> int:
        return sum(o.status == 429 for o in self.arrived())

    @property
    def errors(self) -> int:
        return sum(o.status not in (200, 429) for o in self.arrived())

    def wait(self, q: float) -> float:
        return percentile([o.queue_wait_s for o in self.arrived() if o.status == 200], q)

    @property
    def fair_ratio(self) -> float:
        return self.served_rps / self.fair_rps if self.fair_rps else math.nan


@dataclass
class FairnessResult:
    settings: FairnessSettings
    clients: list[ClientResult]
    emulator_admitted: int  # in the measured period, by the emulator's own counters
    upstream_429s: int

    def __post_init__(self) -> None:
        demands = [(c.client.weight, c.offered_rps) for c in self.clients]
        fair = fair_rates(self.settings.capacity_rps, self.served_rps, demands)
        for c, rate in zip(self.clients, fair, strict=True):
            c.fair_rps = rate

    @property
    def served_rps(self) -> float:
        return sum(c.served_rps for c in self.clients)

    def misses(self, tolerance: float = 0.05, light_served: float = 0.99) -> list[str]:
        """The targets missed: every client within ``tolerance`` of its fair share; a client offering
        no more than its weighted share served at least ``light_served`` of what it offered."""
        out = []
        for c in self.clients:
            if not abs(c.fair_ratio - 1) <= tolerance:
                out.append(f"{c.client.name} served {c.fair_ratio:.1%} of its fair share")
            if c.client.overload <= 1 and not c.served_of_offered >= light_served:
                out.append(f"{c.client.name} served {c.served_of_offered:.1%} of what it offered")
        return out

    def per_second(self) -> dict[str, list[int]]:
        """client -> calls answered 200 in each second since the load began."""
        end = int(self.settings.warmup_s + self.settings.measure_s)
        out = {}
        for c in self.clients:
            counts = [0] * end
            for t in c.answered_at():
                if 0 <= t < end:
                    counts[int(t)] += 1
            out[c.client.name] = counts
        return out


def fairness_config(
    emulator_url: str,
    port: int,
    metrics_port: int,
    redis_url: str,
    settings: FairnessSettings,
    layout: Layout,
) -> dict[str, Any]:
    """Every sidecar's config: the same three clients, told apart by the pod's workload."""
    clients = [
        {"name": c.name, "match": {"workloads": [c.workload]}, "weight": c.weight} for c in settings.clients
    ]
    limits = {"rpm": settings.rpm, "tpm": 100 * settings.rpm * 1000}
    return sidecar_config(
        emulator_url, port, metrics_port, redis_url, limits, False, layout, {"clients": clients}
    )


def start_sidecar(c: Cluster, name: str, config: dict[str, Any], env: dict[str, str], layout: Layout) -> str:
    """One more sidecar process in ``c`` (stopped with it), with ``env`` added: its base URL."""
    path = c.workdir / f"sidecar-{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = spawn_module(
        "o1pool.cli",
        "sidecar",
        "--config",
        str(path),
        log=c.workdir / f"sidecar-{name}.log",
        env={**layout.env(), **env},
    )
    c.procs.append(proc)
    wait_for_port(config["listen"]["port"], proc=proc)
    return f"http://127.0.0.1:{config['listen']['port']}/v1"


def _merged_plan(settings: FairnessSettings) -> list[Planned]:
    """Every client's evenly spaced arrivals in one plan; request ``i`` of client ``k`` is numbered
    ``i * len(clients) + k``, so ``drive`` sends it to the ``k``-th sidecar."""
    n = len(settings.clients)
    plan = []
    for k, client in enumerate(settings.clients):
        own = plan_arrivals(
            settings.offered_rps(client), settings.warmup_s + settings.measure_s, ((PRIORITY, 1.0),)
        )
        plan += [Planned(p.at_s, p.priority, p.index * n + k) for p in own]
    return sorted(plan, key=lambda p: p.at_s)


def _admitted(stats: dict[str, Any]) -> tuple[int, int]:
    models = [a["models"][MODEL] for a in stats["accounts"].values()]
    return sum(m["admitted"] for m in models), sum(m["rejected_total"] for m in models)


async def run_fairness(
    settings: FairnessSettings, redis: RedisServer, progress: bool = False
) -> FairnessResult:
    """The fair-share scenario, on a flushed ``redis``."""
    import aiohttp

    layout = Layout(pool="fair")
    emu_cfg = emulator_config(settings.rpm, 100 * settings.rpm * 1000, settings.latency_scale, layout=layout)
    names = [c.name for c in settings.clients]
    with cluster(emu_cfg, 0, {}, redis, layout=layout) as c:
        urls = []
        for client in settings.clients:
            cfg = fairness_config(c.emulator_url, free_port(), free_port(), redis.url, settings, layout)
            urls.append(start_sidecar(c, client.name, cfg, {"O1POOL_WORKLOAD": client.workload}, layout))
        plan = _merged_plan(settings)
        headers = {"x-o1pool-deadline-ms": str(settings.deadline_ms)} if settings.deadline_ms else {}

        def body(p: Planned) -> dict[str, object]:
            return chat_body(p, MODEL, max_tokens=settings.max_tokens, sender=names[p.index % len(names)])

        last = [0.0]

        def report(p: Progress) -> None:
            if progress and time.monotonic() - last[0] >= 15:
                last[0] = time.monotonic()
                print(f"  {p.line()}", flush=True)

        async def snapshot(session: aiohttp.ClientSession, at_s: float, start: float) -> dict[str, Any]:
            await asyncio.sleep(max(0.0, start + at_s - time.monotonic()))
            return await emulator_stats(c.emulator_url, session=session)

        connector = aiohttp.TCPConnector(limit=2, keepalive_timeout=3600)
        async with aiohttp.ClientSession(connector=connector) as stats:
            await emulator_stats(c.emulator_url, session=stats)
            start = time.monotonic()
            warm = asyncio.create_task(snapshot(stats, settings.warmup_s, start))
            end = asyncio.create_task(snapshot(stats, settings.warmup_s + settings.measure_s, start))
            outcomes = await drive(
                urls, plan, body, on_progress=report, headers_for=lambda _p: headers, client="openai"
            )
            (admitted0, refused0), (admitted1, refused1) = _admitted(await warm), _admitted(await end)
    by_client: list[list[Outcome]] = [[] for _ in names]
    for o in outcomes:
        by_client[o.planned.index % len(names)].append(o)
    return FairnessResult(
        settings,
        [ClientResult(cl, own, settings) for cl, own in zip(settings.clients, by_client, strict=True)],
        admitted1 - admitted0,
        refused1 - refused0,
    )


def fairness_table(result: FairnessResult) -> str:
    total = result.served_rps
    rows = []
    for c in result.clients:
        rows.append(
            (
                f"{c.client.name} (w {c.client.weight:g}, {c.client.overload:g}x)",
                c.offered_rps,
                c.served_rps,
                c.fair_rps,
                f"{c.served_rps / total:.1%}" if total else "-",
                f"{c.fair_rps / total:.1%}" if total else "-",
                f"{c.fair_ratio:.3f}",
                f"{c.served_of_offered:.1%}",
                c.refused,
                c.errors,
                c.wait(0.5),
                c.wait(0.95),
            )
        )
    s = result.settings
    misses = result.misses()
    return "\n".join(
        [
            table(
                [
                    "client",
                    "offered/s",
                    "served/s",
                    "fair/s",
                    "served share",
                    "fair share",
                    "served/fair",
                    "served/offered",
                    "429s",
                    "errors",
                    "wait p50 s",
                    "wait p95 s",
                ],
                rows,
            ),
            "",
            f"served {total:.2f} calls/s in all by the sidecars' answers ({total / s.capacity_rps:.1%} of "
            f"{s.capacity_rps:.1f}); the emulator admitted {result.emulator_admitted / s.measure_s:.2f}/s "
            f"and refused {result.upstream_429s} in the measured {s.measure_s:.0f} s",
            "targets: " + ("met" if not misses else "; ".join(misses)),
        ]
    )


def write_fairness_plot(path: Path, result: FairnessResult) -> Path:
    """Calls served per second per client over time (answered 200; 5 s average), each client's fair
    share, the end of the warm-up."""
    from o1pool.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    per_second = result.per_second()
    for c in result.clients:
        counts = per_second[c.client.name]
        smooth = [sum(counts[max(0, i - SMOOTH_S + 1) : i + 1]) / SMOOTH_S for i in range(len(counts))]
        label = f"{c.client.name} (weight {c.client.weight:g}, offers {c.client.overload:g}x its share)"
        (line,) = ax.plot(range(len(smooth)), smooth, linewidth=1.0, label=label)
        ax.axhline(c.fair_rps, color=line.get_color(), linewidth=0.8, linestyle=":")
    ax.axvline(result.settings.warmup_s, color="grey", linewidth=0.6, linestyle="--")
    ax.set_ylim(0, result.settings.capacity_rps * 0.75)
    ax.set_xlabel("seconds since the load began (dashed: end of warm-up; dotted: each client's fair share)")
    ax.set_ylabel(f"calls served per second ({SMOOTH_S} s average)")
    ax.set_title(
        f"fair share: {result.settings.accounts} accounts x {result.settings.rpm} RPM, three clients, "
        "one sidecar each"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


# --- the cost of identity and budgets -------------------------------------------------------------


@dataclass
class CostRow:
    sidecar: str
    requests: int
    errors: int
    latencies_s: list[float]
    per_request: dict[str, float]  # command -> calls per request (background subtracted)
    background: dict[str, float] = field(default_factory=dict)  # command -> calls per second, idle

    def p(self, q: float) -> float:
        return percentile(self.latencies_s, q)

    @property
    def evalsha(self) -> float:
        return self.per_request.get("evalsha", 0.0)

    @property
    def commands(self) -> float:
        return sum(self.per_request.values())

    @property
    def background_total(self) -> float:
        return sum(self.background.values())


async def _commandstats(client: Any) -> dict[str, int]:
    """Calls of each command so far (``INFO commandstats``; the INFO calls themselves left out)."""
    stats = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in stats.items()
        if not name.startswith("cmdstat_info")
    }


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


COST_VARIANTS = {
    "no client": ({}, {}),
    "a client with a budget": (
        {
            "clients": [
                {
                    "name": "budgeted",
                    "match": {"workloads": ["Deployment/budgeted"]},
                    "budgets": {"daily_usd": 1_000_000},
                }
            ]
        },
        {"O1POOL_WORKLOAD": "Deployment/budgeted"},
    ),
}


async def run_cost(settings: FairnessSettings, redis: RedisServer) -> list[CostRow]:
    """The same low-rate load through a sidecar of no client, then one whose pod is a client with a
    budget (each alone on ``redis``, flushed before), against a zero-latency emulator."""
    from redis.asyncio import Redis

    big = 10_000_000
    layout = Layout(pool="cost")
    rows = []
    client = Redis.from_url(redis.url)
    try:
        with cluster(emulator_config(big, big * 100, 0.0, layout=layout), 0, {}, redis, layout=layout) as c:
            for name, (extra, env) in COST_VARIANTS.items():
                redis.flush()
                limits = {"rpm": big, "tpm": big * 100}
                cfg = sidecar_config(
                    c.emulator_url, free_port(), free_port(), redis.url, limits, False, layout, extra
                )
                url = start_sidecar(c, name.replace(" ", "-"), cfg, env, layout)
                try:
                    rows.append(await _cost_of(url, settings, client, name))
                finally:
                    stop_all([c.procs[-1]])  # (alone on Redis: the next one starts after)
    finally:
        await client.aclose()
    return rows


async def _cost_of(url: str, settings: FairnessSettings, client: Any, name: str) -> CostRow:
    def body(p: Planned) -> dict[str, object]:
        return chat_body(p, MODEL, max_tokens=16, sender=name)

    warm = plan_arrivals(settings.cost_rate_rps, 2.0, ((PRIORITY, 1.0),), seed=3)
    await drive([url], warm, body)  # connections, first calls, scripts loaded
    await asyncio.sleep(1.0)
    before = await _commandstats(client)
    started = time.monotonic()
    await asyncio.sleep(settings.cost_idle_s)
    idle = await _commandstats(client)
    idle_s = time.monotonic() - started
    plan = plan_arrivals(settings.cost_rate_rps, settings.cost_load_s, ((PRIORITY, 1.0),), seed=4)
    started = time.monotonic()
    outcomes = await drive([url], plan, lambda p: body(Planned(p.at_s, p.priority, p.index + 1_000_000)))
    loaded = await _commandstats(client)
    load_s = time.monotonic() - started
    background = {k: v / idle_s for k, v in _delta(idle, before).items()}
    during = _delta(loaded, idle)
    per_request = {
        k: (during.get(k, 0) - background.get(k, 0.0) * load_s) / len(plan)
        for k in set(during) | set(background)
    }
    return CostRow(
        name,
        len(plan),
        sum(o.status != 200 for o in outcomes),
        [o.latency_s for o in outcomes if o.status == 200],
        {k: v for k, v in per_request.items() if abs(v) >= 0.005},
        background,
    )


def cost_table(rows: Sequence[CostRow]) -> str:
    base = rows[0]
    out = table(
        [
            "sidecar",
            "requests",
            "errors",
            "p50 ms",
            "p95 ms",
            "EVALSHA/request",
            "commands/request",
            "background commands/s",
            "spend flush commands/s",
        ],
        [
            (
                r.sidecar,
                r.requests,
                r.errors,
                r.p(0.5) * 1000,
                r.p(0.95) * 1000,
                f"{r.evalsha:.2f}",
                f"{r.commands:.2f}",
                f"{r.background_total:.2f}",
                f"{r.background_total - base.background_total:.2f}" if r is not base else "-",
            )
            for r in rows
        ],
    )
    lines = [out, "", "per request, by command (those run inside the scripts included):"]
    for r in rows:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.per_request.items(), key=lambda kv: -kv[1]))
        lines.append(f"  {r.sidecar}: {parts}")
    lines.append("in the background, by command per second (idle):")
    for r in rows:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.background.items(), key=lambda kv: -kv[1]))
        lines.append(f"  {r.sidecar}: {parts}")
    return "\n".join(lines)
