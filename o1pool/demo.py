"""``o1pool demo``: the whole data plane on one machine, in about half a minute.

It starts the OpenAI emulator with two small accounts, Redis when ``redis-server`` is installed
(otherwise each sidecar limits alone on half of every limit), two sidecars sharing the accounts, and
sends a burst of mixed-priority requests at several times what the accounts allow. A progress line
shows the burst draining; a summary table shows who waited how long, and what the upstream saw.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass
from typing import Any

from o1pool.loadgen import Outcome, chat_body, drive, plan_arrivals, summarize_by_priority, table
from o1pool.procs import RedisServer

MODEL = "o1-mini"
PRIORITY_MIX = ((8, 0.2), (5, 0.5), (2, 0.3))  # high, normal, low
PRIORITY_NAMES = {8: "high (8)", 5: "normal (5)", 2: "low (2)"}
DEMO_KEYS = (("acct-a", "a1", "O1POOL_DEMO_KEY_A"), ("acct-b", "b1", "O1POOL_DEMO_KEY_B"))


@dataclass(frozen=True)
class DemoSettings:
    rpm: int = 300  # per account; two accounts: 10 requests a second
    requests: int = 240  # in 8 s: three times what the accounts allow
    burst_s: float = 8.0
    latency_scale: float = 0.2
    sidecars: int = 2


def emulator_config(s: DemoSettings) -> dict[str, Any]:
    from o1emulator.config import DEFAULT_CONFIG

    limits = {MODEL: {"rpm": s.rpm, "tpm": 200_000, "concurrency": 10}}
    return {
        "latency_scale": s.latency_scale,
        "models": {MODEL: DEFAULT_CONFIG["models"][MODEL]},
        "accounts": [
            {"name": "acct-a", "keys": [{"name": "a1", "key": "sk-demo-acct-a-1"}], "models": limits},
            {"name": "acct-b", "keys": [{"name": "b1", "key": "sk-demo-acct-b-1"}], "models": limits},
        ],
    }


def sidecar_config(s: DemoSettings, upstream: str, redis_url: str | None) -> dict[str, Any]:
    """Each sidecar's config; without Redis each one gets an equal share of every limit."""
    share = 1 if redis_url else s.sidecars
    limits = {MODEL: {"rpm": s.rpm // share, "tpm": 200_000 // share, "concurrency": max(1, 10 // share)}}
    return {
        "pool": {"name": "demo", "namespace": "default"},
        "listen": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "redis": {"url": redis_url} if redis_url else {},
        "cache": {"enabled": False},
        "accounts": [
            {"name": name, "base_url": upstream, "models": limits, "keys": [{"name": key, "env": env}]}
            for name, key, env in DEMO_KEYS
        ],
    }


def summary(outcomes: list[Outcome], stats: dict[str, Any], elapsed_s: float, s: DemoSettings) -> str:
    rows = [
        (
            PRIORITY_NAMES.get(r.priority, str(r.priority)),
            r.sent,
            r.ok,
            r.rejected,
            r.failed,
            r.wait_p50_s,
            r.wait_p95_s,
        )
        for r in summarize_by_priority(outcomes)
    ]
    per_priority = table(["priority", "sent", "served", "429", "errors", "wait p50 s", "wait p95 s"], rows)
    models = [m for a in stats["accounts"].values() for m in a["models"].values()]
    admitted = sum(m["admitted"] for m in models)
    upstream_429 = sum(m["rejected_total"] for m in models)
    # Paced, the pool sends at the accounts' rate while the burst drains: how close it came.
    rate = sum(m["limits"]["rpm"] for m in models) / 60
    served = sum(o.status == 200 for o in outcomes)
    queued = sum(o.queue_wait_s > 0.05 for o in outcomes)
    totals = table(
        ["served", "queued (waited > 50 ms)", "upstream 429s", "admitted by upstream", "use of the RPM rate"],
        [(served, queued, upstream_429, admitted, f"{admitted / (rate * elapsed_s):.0%}")],
    )
    return f"{per_priority}\n\n{totals}\n\nwall time {elapsed_s:.1f}s; two accounts x {s.rpm} RPM"


async def run(s: DemoSettings) -> int:
    from o1emulator import start_emulator
    from o1sidecar.app import start_sidecar
    from o1sidecar.config import SidecarConfig

    redis = RedisServer.find()
    if redis:
        redis.start()
    mode = f"Redis at {redis.url}" if redis else "no redis-server: each sidecar limits alone on half"
    emulator = await start_emulator(emulator_config(s))
    sidecars = []
    try:
        os.environ["O1POOL_DEMO_KEY_A"] = emulator.key("acct-a")
        os.environ["O1POOL_DEMO_KEY_B"] = emulator.key("acct-b")
        config = SidecarConfig.from_dict(sidecar_config(s, emulator.base_url, redis.url if redis else None))
        sidecars = [await start_sidecar(config) for _ in range(s.sidecars)]
        print(f"o1pool demo: emulator {emulator.url}; {mode}")
        for i, sc in enumerate(sidecars, 1):
            print(f"  sidecar {i}: OPENAI_BASE_URL={sc.url}  metrics {sc.metrics_url}")
        print(
            f"burst: {s.requests} requests for {MODEL} over {s.burst_s:.0f}s "
            f"(priorities high/normal/low 20/50/30%) against two accounts x {s.rpm} RPM\n"
        )
        plan = plan_arrivals(s.requests / s.burst_s, s.burst_s, PRIORITY_MIX)
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcomes = await drive(
            [sc.url for sc in sidecars],
            plan,
            lambda p: chat_body(p, MODEL, max_tokens=256),
            on_progress=lambda pr: print("\r" + pr.line(), end="", file=sys.stderr, flush=True),
        )
        elapsed = loop.time() - started
        print("\n", file=sys.stderr)
        print(summary(outcomes, emulator.stats(), elapsed, s))
        return 0 if all(o.status == 200 for o in outcomes) else 1
    finally:
        for sc in sidecars:
            await sc.close()
        await emulator.close()
        if redis:
            redis.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="o1pool demo",
        description="Run the emulator, Redis (if installed), two sidecars and a mixed-priority burst; "
        "print a progress line and a summary table.",
    )
    d = DemoSettings()
    parser.add_argument("--requests", type=int, default=d.requests, help="requests in the burst")
    parser.add_argument("--burst-seconds", type=float, default=d.burst_s, help="how long the burst lasts")
    parser.add_argument("--rpm", type=int, default=d.rpm, help="RPM of each of the two accounts")
    parser.add_argument(
        "--latency-scale",
        type=float,
        default=d.latency_scale,
        help="emulated model latency, as a fraction of o1-mini's real one",
    )
    args = parser.parse_args(argv)
    settings = DemoSettings(args.rpm, args.requests, args.burst_seconds, args.latency_scale)
    return asyncio.run(run(settings))
