"""docs/observability/*.png: each of the chart's Grafana dashboards (helm/o1pool/files/dashboards/) drawn
from real data with matplotlib, a subplot per panel where the dashboard puts it.

It runs on this machine the emulator (two accounts; acct-b's real o1 limit 20% below what the pool is
told, and no limit headers from it), redis-server, three sidecars of one pool sharing Redis, and the
operator's metrics registry served over HTTP (a reconciliation of the pool; the operator's own count of
its live sidecars, `observe`, every 5 s; and the operator's own forecast, `read_demand` and `assess`,
on a week of synthetic demand history written to the pool's Redis in the sidecars' format, scaled to
the first minute's load). A real Prometheus scrapes the sidecars and the operator every second, the
sidecars' targets labelled `namespace`, `pool` and `pod` as the chart's PodMonitor labels them.

A mixed-priority load (20% high, 50% normal, 30% low; o1 and o1-mini; some questions asked again) goes
through the sidecars in phases (PHASES): steady (0-60 s); overload (60-120 s: queues, low priorities
missing their 8 s deadline fall back; another client spends more than half of acct-b's o1 quota
directly: upstream 429s, a lower effective limit); o1 failing on every account (120-145 s: fallbacks,
o1 down, then probed back); Redis stopped (150-170 s: the sidecars limit alone); steady again until
225 s. Then it asks Prometheus for every panel's queries over the run (/api/v1/query_range, the
template variables replaced, rate windows of 15 s) and draws each dashboard.

Needs the extras `test` and `bench` (matplotlib), redis-server, and the Prometheus server built from its
Go module (`bash hack/promtool.sh build-prometheus`, which this script runs when it is missing):

    .venv/bin/python hack/dashboard-pngs.py [--out docs/observability]

About 4 minutes, nearly all of it the load (the Prometheus build, once: 15 minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from o1pool.loadgen import Planned, chat_body, drive, plan_arrivals
from o1pool.procs import RedisServer, free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "helm" / "o1pool" / "files" / "dashboards"
NAMESPACE, POOL, ACCOUNT = "o1pool-demo", "demo", "acct-b"
VALUES = {
    "namespace": NAMESPACE,
    "pool": POOL,
    "account": ACCOUNT,
    "__rate_interval": "15s",
    "__interval": "2s",
    "__range": "5m",
}
PODS = ("app-5d8f7-0", "app-5d8f7-1", "app-5d8f7-2")
PRIORITY_MIX = ((8, 0.2), (5, 0.5), (2, 0.3))
MODELS = ("o1", "o1-mini")
KEYS = (("acct-a", "a1"), ("acct-b", "b1"), ("acct-b", "b2"))
REPEATED = 0.15  # share of requests asking one of a few questions again: cache hits
STEP_S = 2


@dataclass(frozen=True)
class Phase:
    """``rps`` requests a second for ``seconds``."""

    name: str
    seconds: float
    rps: float


PHASES = (
    Phase("steady", 60, 3.0),
    Phase("overload", 60, 8.0),
    Phase("o1 failing", 30, 3.0),
    Phase("Redis stopped", 20, 3.0),
    Phase("steady", 55, 3.0),
)
OTHER_CLIENT = (60.0, 120.0)  # another client of acct-b's o1, not through the pool
O1_FAILS = (120.0, 145.0)
REDIS_DOWN = (150.0, 170.0)
FORECAST_AT = 55.0


def log(message: str) -> None:
    print(f"[dashboard-pngs] {message}", file=sys.stderr, flush=True)


# --- the data plane ------------------------------------------------------------------------------


def emulator_config() -> dict[str, Any]:
    """Two accounts; acct-b's o1 takes 48 RPM where the pool believes 60. The upstream's buckets hold a
    tenth of a minute's worth: a rate above the limit is refused within seconds."""
    from o1emulator.config import DEFAULT_CONFIG

    def limits(o1_rpm: int) -> dict[str, Any]:
        return {"o1": {"rpm": o1_rpm, "tpm": 1_000_000}, "o1-mini": {"rpm": 240, "tpm": 4_000_000}}

    accounts: dict[str, list[dict[str, str]]] = {}
    for account, key in KEYS:
        accounts.setdefault(account, []).append({"name": key, "key": f"sk-dash-{account}-{key}"})
    return {
        "seed": 7,
        "latency_scale": 0.2,
        "burst": 0.1,
        "models": {m: DEFAULT_CONFIG["models"][m] for m in MODELS},
        "accounts": [
            {"name": name, "keys": keys, "models": limits(48 if name == "acct-b" else 60)}
            for name, keys in accounts.items()
        ],
    }


def sidecar_config(upstream: str, redis_url: str) -> dict[str, Any]:
    """The pool as the operator would render it: both accounts at 60 RPM of o1, 240 of o1-mini (with a
    daily cap), o1 falling back to o1-mini, the cache on, Redis shared, at most 20 requests waiting in a
    sidecar."""
    limits = {
        "o1": {"rpm": 60, "tpm": 1_000_000},
        "o1-mini": {"rpm": 240, "tpm": 4_000_000, "daily_requests": 5000},
    }
    accounts: dict[str, list[dict[str, str]]] = {}
    for account, key in KEYS:
        accounts.setdefault(account, []).append({"name": key, "env": env_name(account, key)})
    return {
        "pool": {"name": POOL, "namespace": NAMESPACE},
        "listen": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "redis": {"url": redis_url},
        "cache": {"enabled": True},
        "fallback": {"chains": {"o1": ["o1-mini"]}},
        "queue": {"max_length": 20},
        "accounts": [
            {"name": name, "base_url": upstream, "models": limits, "keys": keys}
            for name, keys in accounts.items()
        ],
    }


def env_name(account: str, key: str) -> str:
    return f"O1POOL_DASH_{account[-1].upper()}_{key.upper()}"


def plan() -> list[Planned]:
    """The phases' arrivals, one after the other."""
    out: list[Planned] = []
    offset = 0.0
    for i, phase in enumerate(PHASES):
        for p in plan_arrivals(phase.rps, phase.seconds, PRIORITY_MIX, seed=i + 1):
            out.append(Planned(at_s=offset + p.at_s, priority=p.priority, index=len(out)))
        offset += phase.seconds
    return out


def body_for(planned: Planned) -> dict[str, object]:
    rng = random.Random(planned.index)
    model = "o1" if rng.random() < 0.4 else "o1-mini"
    if rng.random() < REPEATED:
        text = f"Question {rng.randrange(5)}: what does the pool do?"
        return {"model": model, "messages": [{"role": "user", "content": text}], "max_completion_tokens": 200}
    return chat_body(planned, model, max_tokens=200)


def headers_for(planned: Planned) -> dict[str, str]:
    """Low priorities wait at most 8 s (then the fallback model, if it can take them at once)."""
    return {"x-o1pool-deadline-ms": "8000"} if planned.priority <= 2 else {}


# --- Prometheus ----------------------------------------------------------------------------------


def prometheus_binary() -> Path:
    """The server hack/promtool.sh builds from the Prometheus Go module (built now if missing)."""
    script = ["bash", str(REPO / "hack" / "promtool.sh")]
    found = subprocess.run([*script, "path-prometheus"], capture_output=True, text=True)
    if found.returncode != 0:
        log("building the Prometheus server (once, a few minutes)")
        subprocess.run([*script, "build-prometheus"], check=True)
        found = subprocess.run([*script, "path-prometheus"], capture_output=True, text=True, check=True)
    return Path(found.stdout.strip())


@dataclass
class Prometheus:
    """A Prometheus server on a free loopback port, its data in a temporary directory."""

    binary: Path
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="o1pool-prometheus-")))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, sidecars: Sequence[int], operator: int) -> None:
        """Scrape each sidecar's metrics port (its pod's labels) and the operator's, every second."""
        targets = [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": NAMESPACE, "pool": POOL, "pod": pod}}
            for port, pod in zip(sidecars, PODS, strict=True)
        ]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "o1pool-sidecars", "static_configs": targets},
                {
                    "job_name": "o1pool-operator",
                    "honor_labels": True,  # the pools' namespace and pool, as the chart's ServiceMonitor
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{operator}"], "labels": {"pod": "o1pool-operator-0"}}
                    ],
                },
            ],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=(self.workdir / "prometheus.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, proc=self.proc)
        deadline = time.monotonic() + 60
        while self._get("/-/ready", {}) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus not ready; see {self.workdir / 'prometheus.log'}")
            time.sleep(0.2)

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        body = self._get("/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})
        if body is None or body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {expr}: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query(self, expr: str) -> float:
        """An instant query's one value (NaN without one)."""
        body = self._get("/api/v1/query", {"query": expr})
        result = (body or {}).get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if result else math.nan

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any] | None:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:  # a refused query says why in its body
            text = exc.read().decode()
            if not text.startswith("{"):
                return None
        except OSError:
            return None
        try:
            parsed: dict[str, Any] = json.loads(text)
        except ValueError:
            return {}
        return parsed

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- the operator's side: its metrics, and its forecast ------------------------------------------


async def seed_history(redis_url: str, tokens_per_hour: float, now_s: float, days: int = 8) -> None:
    """``days`` of demand in the pool's demand HASHes, as the sidecars record it (o1sidecar/demand.py):
    every hour marked live, its tokens spread over its minutes; a daily cycle whose level at this hour
    of the day is ``tokens_per_hour`` (60% of it on o1-mini), with a few percent of noise."""
    from redis.asyncio import Redis

    from o1sidecar.limits.keys import PoolKeys

    keys = PoolKeys("o1pool", NAMESPACE, POOL)
    rng = random.Random(11)
    now_hour = int(now_s // 3600)
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for hour in range(now_hour - days * 24, now_hour):
                cycle = 0.65 + 0.35 * math.cos(2 * math.pi * (hour - now_hour) / 24)
                total = tokens_per_hour * cycle * rng.uniform(0.95, 1.05)
                day, of_day = divmod(hour, 24)
                for model, share in (("o1", 0.4), ("o1-mini", 0.6)):
                    fields: dict[Any, Any] = {f"h{of_day}:live": 1}  # (redis-py's loose mapping type)
                    fields |= {f"{of_day * 60 + m}:t": round(total * share / 60) for m in range(60)}
                    pipe.hset(keys.demand(model, day), mapping=fields)
            await pipe.execute()
    finally:
        await client.aclose()


def probe(redis_url: str) -> Any:
    """What the operator reads the pool's Redis with (o1operator.sidecars.get_sidecar_probe's fields)."""
    from o1operator.sidecars import SidecarProbe
    from o1sidecar.limits.keys import PoolKeys

    keys = PoolKeys("o1pool", NAMESPACE, POOL)
    return SidecarProbe(
        namespace=NAMESPACE,
        name=POOL,
        url=redis_url,
        key=keys.sidecars(),
        stale_after_s=6.0,  # the sidecars' rule: three heartbeats of 2 s
        pool_keys=keys,
        models=MODELS,
        refused_key=keys.refused_keys(),
        outages_key=keys.outages(),
    )


async def forecast(redis_url: str, now_s: float) -> dict[str, Any] | None:
    """The operator's prediction for the pool from what its Redis holds (forecasting.read_demand and
    prediction.assess, as its loop runs them)."""
    from redis.asyncio import Redis

    from o1operator.forecasting import read_demand
    from o1operator.prediction import assess

    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        hours, minutes = await read_demand(client, probe(redis_url), now_s)
    finally:
        await client.aclose()
    assessment = assess(hours, datetime.fromtimestamp(now_s, UTC), minutes=minutes)
    log(f"forecast: {assessment.reason}: {assessment.message}")
    return assessment.prediction


async def count_sidecars(redis_url: str, counted: Callable[[int], None], every_s: float = 5.0) -> None:
    """The operator's count of the pool's live sidecars (o1operator.sidecars.observe) every ``every_s``;
    none while Redis is away (the operator keeps its last count)."""
    from redis.exceptions import RedisError

    from o1operator.sidecars import observe

    while True:
        try:
            counted((await observe(probe(redis_url))).live)
        except (RedisError, OSError):
            pass
        await asyncio.sleep(every_s)


def pool_status(prediction: dict[str, Any] | None) -> dict[str, Any]:
    """The status the operator's reconciliation of the pool would set."""
    ready = {"type": "Ready", "status": "True", "reason": "Serving"}
    return {
        "conditions": [ready],
        "keys": f"{len(KEYS)}/{len(KEYS)}",
        "configHash": "0",
        "prediction": prediction,
    }


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Run:
    """The run's span (Unix time; the load began ``lead_s`` after ``start``) and its answers."""

    start: float
    end: float
    lead_s: float
    sent: int
    statuses: dict[int, int]


async def other_client(base_url: str, key: str, seconds: float, rpm: float = 30) -> None:
    """Someone else using the account's key directly: ``rpm`` requests a minute of o1 for ``seconds``,
    which the pool's sidecars do not see but the upstream counts."""
    import aiohttp

    body = {
        "model": "o1",
        "messages": [{"role": "user", "content": "elsewhere"}],
        "max_completion_tokens": 50,
    }
    headers = {"authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            async with session.post(f"{base_url}/chat/completions", json=body, headers=headers) as resp:
                await resp.read()

        calls = [asyncio.create_task(one())]
        for _ in range(int(seconds * rpm / 60) - 1):
            await asyncio.sleep(60 / rpm)
            calls.append(asyncio.create_task(one()))
        await asyncio.gather(*calls, return_exceptions=True)


async def events(
    emulator: Any, redis: RedisServer, prometheus: Prometheus, reconcile: Callable[[dict[str, Any]], None]
) -> None:
    """What happens to the pool during the load, at its time."""
    started = time.monotonic()

    async def at(t: float) -> None:
        await asyncio.sleep(max(0.0, started + t - time.monotonic()))

    await at(FORECAST_AT)
    pace = await asyncio.to_thread(prometheus.query, "sum(rate(o1_api_tokens_offered_total[40s])) * 3600")
    log(f"tokens offered at {pace:,.0f} an hour: a week of demand around that, then the forecast")
    now_s = time.time()
    await seed_history(redis.url, pace if math.isfinite(pace) else 1e6, now_s)
    reconcile(pool_status(await forecast(redis.url, now_s)))
    await at(OTHER_CLIENT[0])
    log("another client spends acct-b's o1 quota")
    await other_client(emulator.base_url, emulator.key("acct-b"), OTHER_CLIENT[1] - OTHER_CLIENT[0])
    await at(O1_FAILS[0])
    log("o1 fails on every account")
    emulator.set_faults([{"kind": "no_headers", "account": "acct-b", "model": "o1"}])
    emulator.set_faults([{"kind": "error_5xx", "model": "o1"}], add=True)
    await at(O1_FAILS[1])
    log("o1 answers again")
    emulator.set_faults([{"kind": "no_headers", "account": "acct-b", "model": "o1"}])
    await at(REDIS_DOWN[0])
    log("Redis stopped")
    redis.stop()
    await at(REDIS_DOWN[1])
    redis.start()
    log("Redis back")


async def run_load(prometheus: Prometheus) -> Run:
    """The data plane under the phases' load, scraped by ``prometheus`` from start to end."""
    from o1emulator import start_emulator
    from o1operator.metrics import OperatorMetrics
    from o1sidecar.app import start_sidecar
    from o1sidecar.config import SidecarConfig

    redis = RedisServer.find()
    if redis is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    redis.start()
    emulator = await start_emulator(emulator_config())
    emulator.set_faults([{"kind": "no_headers", "account": "acct-b", "model": "o1"}])
    sidecars = []
    try:
        for account, key in KEYS:
            os.environ[env_name(account, key)] = emulator.key(
                account, [k for a, k in KEYS if a == account].index(key)
            )
        config = SidecarConfig.from_dict(sidecar_config(emulator.base_url, redis.url))
        sidecars = [await start_sidecar(config) for _ in PODS]
        operator = OperatorMetrics()
        operator_port = free_port()
        operator.serve(operator_port, addr="127.0.0.1")

        def reconcile(status: dict[str, Any]) -> None:
            operator.reconcile(NAMESPACE, POOL, lambda: status)

        reconcile(pool_status(None))
        prometheus.start([s.metrics_port for s in sidecars], operator_port)
        lead_s = 5.0
        await asyncio.sleep(lead_s)  # a few scrapes before the first request
        start = time.time() - lead_s
        arrivals = plan()
        seconds = sum(p.seconds for p in PHASES)
        log(f"{len(arrivals)} requests over {seconds:.0f} s through {len(sidecars)} sidecars")
        happening = asyncio.create_task(events(emulator, redis, prometheus, reconcile))
        counting = asyncio.create_task(
            count_sidecars(redis.url, lambda live: operator.counted(NAMESPACE, POOL, live))
        )
        outcomes = await drive(
            [s.url for s in sidecars], arrivals, body_for, headers_for=headers_for, timeout_s=300
        )
        await happening
        await asyncio.sleep(10)  # the last scrapes
        counting.cancel()
        for name, account in emulator.stats()["accounts"].items():
            seen = {
                m: f"{v['admitted']} admitted, {v['rejected_total']} refused"
                for m, v in account["models"].items()
            }
            log(f"the upstream's {name}: {seen}")
        statuses: dict[int, int] = {}
        for outcome in outcomes:
            statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
        return Run(start, time.time(), lead_s, len(outcomes), statuses)
    finally:
        for sidecar in sidecars:
            await sidecar.close()
        await emulator.close()
        redis.close()


# --- drawing -------------------------------------------------------------------------------------

UNITS: dict[str, tuple[float, str]] = {
    "percentunit": (100.0, "%"),
    "reqps": (1.0, "per second"),
    "s": (1.0, "seconds"),
    "short": (1.0, ""),
}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute(expr: str) -> str:
    return VARIABLE.sub(lambda m: VALUES[m.group(1) or m.group(2)], expr)


def legend(template: str, labels: dict[str, str]) -> str:
    if not template:
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


Series = list[tuple[str, list[float], list[float]]]  # (legend, times in minutes, values)


def panel_series(prometheus: Prometheus, panel: dict[str, Any], run: Run) -> Series:
    out: Series = []
    for target in panel["targets"]:
        for result in prometheus.query_range(substitute(target["expr"]), run.start, run.end, STEP_S):
            times = [(float(t) - run.start) / 60 for t, _ in result["values"]]
            values = [float(v) for _, v in result["values"]]
            out.append((legend(target.get("legendFormat", ""), result["metric"]), times, values))
    return out


def draw(board: dict[str, Any], series: dict[int, Series], run: Run, path: Path) -> int:
    """The dashboard as Grafana lays it out (24 columns; rows and panels by their gridPos), a subplot per
    panel; returns the PNG's size in bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    unit_in, top_in, bottom_in = 0.36, 0.9, 0.15
    total_in = height * unit_in + top_in + bottom_in
    fig = plt.figure(figsize=(15, total_in))
    variables = f"namespace={NAMESPACE}, pool={POOL}"
    if any(v["name"] == "account" for v in board["templating"]["list"]):
        variables += f", account={ACCOUNT}"
    fig.text(0.01, 1 - 0.3 / total_in, f"{board['title']}   ({variables})", fontsize=12, weight="bold")
    fig.text(
        0.01,
        1 - 0.6 / total_in,
        f"x: minutes of a real run (hack/dashboard-pngs.py); shaded: o1 failing on every account, then "
        f"Redis stopped; load {PHASES[0].rps:g}/s, {PHASES[1].rps:g}/s from minute 1 to 2, then "
        f"{PHASES[2].rps:g}/s",
        fontsize=9,
        color="0.3",
    )
    for panel in board["panels"]:
        pos = panel["gridPos"]
        left, width = pos["x"] / 24, pos["w"] / 24
        bottom = 1 - (top_in + (pos["y"] + pos["h"]) * unit_in) / total_in
        if panel["type"] == "row":
            fig.text(0.01, bottom + 0.3 * unit_in / total_in, panel["title"], fontsize=10, weight="bold")
            continue
        ax = fig.add_axes(
            (
                left + 0.035,
                bottom + 0.7 * unit_in / total_in,
                width - 0.05,
                (pos["h"] - 1.5) * unit_in / total_in,
            )
        )
        draw_panel(ax, panel, series.get(panel["id"], []), run)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    plt.close(fig)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return path.stat().st_size


def draw_panel(ax: Any, panel: dict[str, Any], series: Series, run: Run) -> None:
    """One panel's series in Grafana's units (percentunit as %), titled as the panel."""
    from matplotlib.ticker import EngFormatter

    scale, axis = UNITS.get(panel["fieldConfig"]["defaults"].get("unit", "short"), (1.0, ""))
    axis = panel["fieldConfig"]["defaults"].get("custom", {}).get("axisLabel") or axis
    for name, times, values in sorted(series, key=lambda s: s[0]):
        ax.plot(times, [v * scale for v in values], linewidth=1, label=name)
    ax.set_title(panel["title"], fontsize=9, loc="left")
    ax.set_xlim(0, (run.end - run.start) / 60)
    ax.tick_params(labelsize=7)
    ax.set_ylabel(axis, fontsize=7)
    ax.grid(alpha=0.3)
    defaults = panel["fieldConfig"]["defaults"]
    if defaults.get("min") == 0:
        ax.set_ylim(bottom=0)
    if defaults.get("max") is not None:
        ax.set_ylim(top=defaults["max"] * scale * 1.05)
    for start, end in (O1_FAILS, REDIS_DOWN):  # shaded: o1 failing, then Redis stopped
        ax.axvspan((run.lead_s + start) / 60, (run.lead_s + end) / 60, color="0.88", linewidth=0)
    if (
        series
        and max((abs(v) * scale for _, _, vs in series for v in vs if math.isfinite(v)), default=0) >= 1e4
    ):
        ax.yaxis.set_major_formatter(EngFormatter(sep=""))  # 2M, not 2 with 1e6 above the axis
    if series:
        ax.legend(fontsize=6, loc="upper left", ncol=2 if len(series) > 4 else 1, framealpha=0.6)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5")


def render(prometheus: Prometheus, run: Run, out: Path) -> None:
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        series = {p["id"]: panel_series(prometheus, p, run) for p in board["panels"] if p.get("targets")}
        png = out / (path.stem + ".png")
        size = draw(board, series, run, png)
        empty = [p["title"] for p in board["panels"] if p.get("targets") and not series[p["id"]]]
        log(f"{png.relative_to(REPO)}: {size / 1024:.0f} KB; panels without data: {empty or 'none'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dashboard-pngs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "observability", help="where the PNGs go")
    args = parser.parse_args(argv)
    began = time.monotonic()
    prometheus = Prometheus(prometheus_binary())
    try:
        run = asyncio.run(run_load(prometheus))
        log(f"answers by status: {dict(sorted(run.statuses.items()))} of {run.sent}")
        render(prometheus, run, args.out)
    finally:
        prometheus.close()
    log(f"done in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
