"""``o1pool bench``: the two numbers that say whether o1pool is worth running, side by side.

(a) Quota utilisation: four sidecar processes share two accounts through Redis under ~3x overload;
    how much of the binding limit (RPM) reached the upstream, and how many upstream calls were 429s.
(b) Added latency: at a fixed request rate against a zero-latency emulator, the latency of calls made
    directly, through a bare aiohttp pass-through proxy, and through an o1pool sidecar.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from pathlib import Path

from o1pool.loadgen import summarize_by_priority, table
from o1pool.procs import RedisServer
from o1pool.scenarios import (
    LatencyRow,
    LatencySettings,
    OverloadResult,
    OverloadSettings,
    run_latency,
    run_overload,
)

PRIORITY_NAMES = {8: "high", 5: "normal", 2: "low"}


def overload_table(r: OverloadResult) -> str:
    s = r.settings
    head = table(
        [
            "sidecars",
            "offered rps",
            "capacity rps",
            "duration s",
            "upstream calls",
            "upstream 429s",
            "429 rate",
            "RPM utilisation",
            "answered",
        ],
        [
            (
                s.sidecars,
                s.capacity_rps * s.overload,
                s.capacity_rps,
                r.elapsed_s,
                r.admitted + r.upstream_429,
                r.upstream_429,
                f"{r.upstream_429_rate:.3%}",
                f"{r.utilisation:.1%}",
                f"{r.answered}/{len(r.outcomes)}",
            )
        ],
    )
    waits = table(
        ["priority", "sent", "served", "turned away after queueing", "mean time to answer s"],
        [
            (
                PRIORITY_NAMES.get(row.priority, str(row.priority)),
                row.sent,
                row.ok,
                row.rejected,
                r.mean_latency(row.priority),
            )
            for row in summarize_by_priority(r.outcomes)
        ],
    )
    return f"{head}\n\n{waits}"


def latency_table(rows: list[LatencyRow]) -> str:
    direct = rows[0]
    bare = next(r for r in rows if r.target.startswith("bare"))
    out = []
    for row in rows:
        added50 = (row.p(0.5) - direct.p(0.5)) * 1000
        added99 = (row.p(0.99) - direct.p(0.99)) * 1000
        out.append(
            (
                row.target,
                len(row.latencies_s),
                row.errors,
                row.p(0.5) * 1000,
                row.p(0.99) * 1000,
                added50,
                added99,
                row.p(0.5) / bare.p(0.5),
            )
        )
    return table(
        ["path", "calls", "errors", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "p50 / bare"], out
    )


async def run(args: argparse.Namespace) -> int:
    redis = RedisServer.find()
    if redis is None:
        print("o1pool bench: needs redis-server (apt-get install -y redis-server)", file=sys.stderr)
        return 2
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("o1pool bench: --plot needs matplotlib: pip install 'o1pool[bench]'", file=sys.stderr)
        return 2
    redis.start()
    result: OverloadResult | None = None
    rows: list[LatencyRow] | None = None
    try:
        if not args.skip_overload:
            settings = OverloadSettings(sidecars=args.sidecars, duration_s=args.duration)
            print(
                f"(a) quota utilisation: {settings.sidecars} sidecars, 2 accounts x {settings.rpm} RPM, "
                f"{settings.overload:.0f}x overload for {settings.duration_s:.0f}s ...",
                flush=True,
            )
            result = await run_overload(settings, redis)
            print(overload_table(result), "\n", flush=True)
            redis.flush()
        if not args.skip_latency:
            lat = LatencySettings(rate_rps=args.rate, duration_s=args.latency_duration)
            print(
                f"(b) added latency at {lat.rate_rps:.0f} rps, zero-latency emulator, "
                f"{lat.rounds} rounds of {lat.duration_s:.0f}s per path ...",
                flush=True,
            )
            rows = await run_latency(lat, redis)
            print(latency_table(rows), flush=True)
    finally:
        redis.close()
    if args.plot:
        from o1pool.plots import write_bench_plot

        print(f"\nplot: {write_bench_plot(Path(args.plot), result, rows)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="o1pool bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0, help="(a) seconds of overload")
    parser.add_argument("--sidecars", type=int, default=4, help="(a) sidecar processes")
    parser.add_argument("--rate", type=float, default=300.0, help="(b) requests per second")
    parser.add_argument("--latency-duration", type=float, default=10.0, help="(b) seconds per path and round")
    parser.add_argument("--skip-overload", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--plot", metavar="PNG", help="also write the results as a PNG (needs matplotlib)")
    return asyncio.run(run(parser.parse_args(argv)))
