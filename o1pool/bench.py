"""``o1pool bench``: the two things that say whether o1pool is worth running, each side by side.

(a) Limits against any upstream: the upstream matrix (matrix.py). Limit algorithm x rate-limit
    headers on/off x the real limit known or 20% lower than configured, and TPM bound by an estimate
    the sidecar does not know; four sidecar processes share two accounts through Redis under 3x
    overload from the openai SDK; the emulator's own counters judge. Two cells run the previous
    release (``--previous``, a git ref) against the same upstream.
(b) Added latency: at a fixed request rate against a zero-latency emulator, the latency of calls made
    directly, through a bare aiohttp pass-through proxy, and through an o1pool sidecar; and the CPU
    per call of each proxy process (and of redis-server meanwhile).
(c) The cache (cachebench.py): hits per second and per CPU-second of one sidecar from each layer (L1
    memory, L2 Redis, L3 the pool's cache service), hit and miss latency at a fixed rate, and the
    upstream calls a burst of identical requests makes with coalescing and with the cache bypassed.
(d) Fair share between clients (fairness_bench.py): three sidecar processes, one per client (weights
    1, 1, 2), share two accounts through Redis while the clients offer 10x, 1x and 3x their weighted
    share; what each is served against its max-min fair share. Then the cost of identity and
    budgets: Redis commands per request and p50 latency through a sidecar of no client and one of a
    client with a budget. ``--only-fairness`` runs only this part.
(e) What queueing costs Redis (queuebench.py): four sidecar processes at 3x overload, Redis MONITOR
    counting what they send per upstream call, at two deadlines (more waiters), with sidecars of
    ``--queue-previous`` (a git ref) beside this tree's. ``--only-queue`` runs only this part.
(f) Scale (scalebench.py): 10 -> 100 -> 1000 simulated sidecars (the sidecar's limiter, hundreds per
    process) against one redis-server and a 3-primary Redis Cluster, one pool and nine: admission
    round trips, queue waits, Redis CPU and commands, and a checker over the admission log (no limit
    exceeded). ``--only-scale`` runs only this part; docs/scale.md.
(g) Peers (peers.py), with ``--peers litellm``: LiteLLM's proxy (a pinned version in a venv of its
    own) as a fourth path in (b), and the quota scenario: four sidecars and four LiteLLM instances,
    one after the other, sharing two accounts through Redis at 3x overload. ``--only-peers`` runs
    (b) at 20, 100 and 300 rps with LiteLLM, and this quota section.
(h) One core (sustain.py): one sidecar pinned to one core, the rest of the machine on the others, the
    offered rate stepping up until the answers fall behind: the highest rate it sustains with every
    request answered and the p99 within 10 ms. ``--only-sustain`` runs only this part.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from o1pool.cachebench import CacheResults, CacheSettings, burst_table, layer_table, run_cache_bench
from o1pool.fairness_bench import (
    CostRow,
    FairnessResult,
    FairnessSettings,
    cost_table,
    fairness_table,
    run_cost,
    run_fairness,
)
from o1pool.loadgen import table
from o1pool.matrix import (
    UPSTREAMS,
    Cell,
    MatrixSettings,
    all_cells,
    machine,
    matrix_table,
    previous_release,
    run_matrix,
)
from o1pool.procs import RedisServer
from o1pool.queuebench import QueueSettings, queue_table, run_queue_bench
from o1pool.scalebench import CellResult
from o1pool.scenarios import LatencyRow, LatencySettings, run_latency


def latency_table(rows: list[LatencyRow], cpu_us: Mapping[str, float] | None = None) -> str:
    """The rows side by side, added latency against the first (direct), CPU against the bare proxy's:
    each row's CPU per call over all its calls, or ``cpu_us[target]`` when given (a median of rounds)."""
    direct = rows[0]
    bare = next(r for r in rows if r.target.startswith("bare"))

    def cpu_of(row: LatencyRow) -> float:
        return cpu_us[row.target] if cpu_us is not None else row.cpu_us_per_call()

    out = []
    for row in rows:
        added50 = (row.p(0.5) - direct.p(0.5)) * 1000
        added99 = (row.p(0.99) - direct.p(0.99)) * 1000
        cpu = cpu_of(row)
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
                cpu if row is not direct else math.nan,  # (no proxy)
                cpu / cpu_of(bare) if row is not direct and bare.cpu_s else math.nan,
                row.redis_cpu_us_per_call(),
            )
        )
    return table(
        [
            "path",
            "calls",
            "errors",
            "p50 ms",
            "p99 ms",
            "added p50 ms",
            "added p99 ms",
            "p50 / bare",
            "proxy CPU µs/call",
            "CPU / bare",
            "redis CPU µs/call",
        ],
        out,
    )


PREVIOUS = "7b0a68e"  # the release before pacing and adaptive limits
QUEUE_PREVIOUS = "120a52e"  # the last before event-driven queueing
PARALLEL = max(1, os.cpu_count() or 1)


def chosen_cells(args: argparse.Namespace, previous: bool) -> list[Cell]:
    cells = all_cells(baseline=previous)
    if args.upstream:
        cells = [c for c in cells if c.upstream in args.upstream]
    return cells


async def run(args: argparse.Namespace) -> int:
    redis = RedisServer.find()
    if redis is None:
        print("o1pool bench: needs redis-server (apt-get install -y redis-server)", file=sys.stderr)
        return 2
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("o1pool bench: --plot needs matplotlib: pip install 'o1pool[bench]'", file=sys.stderr)
        return 2
    if args.only_fairness:
        args.skip_matrix = args.skip_latency = args.skip_cache = args.skip_queue = True
    if args.only_queue:
        args.skip_matrix = args.skip_latency = args.skip_cache = args.skip_fairness = True
    if args.only_fairness or args.only_queue:
        args.skip_scale = True
    if args.only_sustain:
        for name in vars(args):
            if name.startswith("skip_") and name != "skip_sustain":
                setattr(args, name, True)
    elif args.only_fairness or args.only_queue or args.only_scale or args.only_peers:
        args.skip_sustain = True
    if args.only_scale:
        for name in vars(args):
            if name.startswith("skip_") and name != "skip_scale":
                setattr(args, name, True)
    if args.only_peers:  # every other part off ((b) stays unless --skip-latency)
        for name in vars(args):
            if name.startswith("skip_") and name not in ("skip_latency", "skip_peer_quota"):
                setattr(args, name, True)
        args.peers = args.peers or ["litellm"]
    litellm = None
    if args.peers:
        from o1pool.peers import PeerInstallError, ensure_litellm

        try:
            litellm = ensure_litellm()
        except PeerInstallError as exc:
            print(f"o1pool bench: {exc}", file=sys.stderr)
            return 2
    print(f"machine: {machine()}", flush=True)
    redis.start()
    results = None
    rows: list[LatencyRow] | None = None
    cached: CacheResults | None = None
    fair: FairnessResult | None = None
    cost: list[CostRow] | None = None
    scaled: list[CellResult] | None = None
    try:
        if not args.skip_matrix:
            settings = MatrixSettings(
                sidecars=args.sidecars, rpm=args.rpm, warmup_s=args.warmup, measure_s=args.measure
            )
            previous_env = None
            if args.previous:
                previous_env = previous_release(
                    args.previous, Path(tempfile.mkdtemp(prefix="o1pool-previous-"))
                )
                if previous_env is None:
                    print(f"  (no git ref {args.previous} here: the previous-release cells are skipped)")
            cells = chosen_cells(args, previous=previous_env is not None)
            print(
                f"(a) upstream matrix: {len(cells)} cells, {settings.sidecars} sidecars each, 2 accounts x "
                f"{settings.rpm} RPM configured, {settings.overload:.0f}x overload, "
                f"{settings.warmup_s:.0f} s warm-up + {settings.measure_s:.0f} s measured, "
                f"{args.parallel} cells at a time ...",
                flush=True,
            )
            started = time.monotonic()
            results = await run_matrix(
                cells, settings, redis, parallel=args.parallel, previous_env=previous_env
            )
            print(matrix_table(results), flush=True)
            met = sum(not r.misses() for r in results if r.cell.client == "o1pool")
            total = sum(r.cell.client == "o1pool" for r in results)
            print(f"targets met in {met} of {total} cells ({time.monotonic() - started:.0f} s)\n", flush=True)
            redis.flush()
        if not args.skip_latency:
            from o1pool.peers import PEER_RATES, latency_peer, peer_summary

            extra = latency_peer(litellm, redis) if litellm else None
            for rate in (args.peer_rate or PEER_RATES) if args.only_peers else (args.rate,):
                lat = LatencySettings(rate_rps=rate, duration_s=args.latency_duration)
                print(
                    f"(b) added latency at {lat.rate_rps:.0f} rps, zero-latency emulator, "
                    f"{lat.rounds} rounds of {lat.duration_s:.0f}s per path ...",
                    flush=True,
                )
                rows = await run_latency(lat, redis, extra)
                print(latency_table(rows), flush=True)
                if extra:
                    print(peer_summary(rows), flush=True)
        if not args.skip_cache:
            cache_settings = CacheSettings()
            print(f"\n(c) cache: {cache_settings.describe()} ...", flush=True)
            redis.flush()
            cached = await run_cache_bench(
                cache_settings, redis, Path(tempfile.mkdtemp(prefix="o1pool-cache-"))
            )
            print(layer_table(cached.layers, cache_settings), flush=True)
            print(burst_table(cached.burst), flush=True)
        if not args.skip_fairness:
            fair_settings = FairnessSettings(
                warmup_s=args.fairness_warmup,
                measure_s=args.fairness_measure,
                deadline_ms=args.fairness_deadline_ms or None,
            )
            print(f"\n(d) fair share: {fair_settings.describe()} ...", flush=True)
            redis.flush()
            fair = await run_fairness(fair_settings, redis, progress=True)
            print(fairness_table(fair), flush=True)
            print(
                f"\n(d) the cost of identity and budgets: {fair_settings.cost_rate_rps:.0f} rps for "
                f"{fair_settings.cost_load_s:.0f} s through each sidecar alone, zero-latency emulator ...",
                flush=True,
            )
            cost = await run_cost(fair_settings, redis)
            print(cost_table(cost), flush=True)
        if not args.skip_queue:
            queue_settings = QueueSettings()
            print(f"\n(e) what queueing costs Redis: {queue_settings.describe()} ...", flush=True)
            queued = await run_queue_bench(queue_settings, redis, args.queue_previous, progress=True)
            print(queue_table(queued), flush=True)
        if not args.skip_scale:
            from o1pool.scalebench import ScaleSettings, outcome_table, run_scale, scale_table

            scale_settings = ScaleSettings()
            if args.scale_sidecars:
                scale_settings = ScaleSettings(sidecars=tuple(args.scale_sidecars))
            print(f"\n(f) scale: {scale_settings.describe()} ...", flush=True)
            scaled = await run_scale(scale_settings, progress=True)
            print(scale_table(scaled), flush=True)
            print(outcome_table(scaled), flush=True)
        if litellm and not args.skip_peer_quota:
            from o1pool.peers import quota_settings, quota_table, run_peer_quota

            peer_settings = quota_settings()
            print(f"\n(g) peers: quota: {peer_settings.describe()}; sidecars, then LiteLLM instances ...")
            peer_runs = await run_peer_quota(peer_settings, redis, litellm, progress=True)
            print(quota_table(peer_runs), flush=True)
        if not args.skip_sustain:
            from o1pool.sustain import SustainSettings, run_sustain, sustain_table

            sustain_settings = SustainSettings()
            print(f"\n(h) one core: {sustain_settings.describe()} ...", flush=True)
            redis.flush()
            print(sustain_table(await run_sustain(sustain_settings, redis)), flush=True)
    finally:
        redis.close()
    if args.plot:
        from o1pool.plots import write_cache_plot, write_latency_plot, write_matrix_plot

        path = Path(args.plot)
        if results:
            print(f"\nplot: {write_matrix_plot(path, results)}")
        if rows:
            print(f"plot: {write_latency_plot(path.with_name(path.stem + '-latency.png'), rows)}")
        if cached:
            print(f"plot: {write_cache_plot(path.with_name(path.stem + '-cache.png'), cached)}")
        if fair:
            from o1pool.fairness_bench import write_fairness_plot

            where = path if args.only_fairness else path.with_name(path.stem + "-fairness.png")
            print(f"plot: {write_fairness_plot(where, fair)}")
        if scaled:
            from o1pool.scalebench import write_scale_plot

            where = path if args.only_scale else path.with_name(path.stem + "-scale.png")
            print(f"plot: {write_scale_plot(where, scaled)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="o1pool bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warmup", type=float, default=60.0, help="(a) seconds before measuring")
    parser.add_argument("--measure", type=float, default=300.0, help="(a) seconds measured")
    parser.add_argument("--sidecars", type=int, default=4, help="(a) sidecar processes per cell")
    parser.add_argument("--rpm", type=int, default=300, help="(a) configured RPM per account")
    parser.add_argument(
        "--parallel",
        type=int,
        default=PARALLEL,
        help="(a) cells run at the same time (default: one per core, %(default)s here; a cell keeps about "
        "half a core busy, and a busier machine delays the sidecars' dispatch, which shows as queue wait)",
    )
    parser.add_argument(
        "--upstream", action="append", choices=sorted(UPSTREAMS), help="(a) only these upstreams (repeatable)"
    )
    parser.add_argument(
        "--previous",
        default=PREVIOUS,
        metavar="REF",
        help="(a) git ref of the release to run side by side ('' to skip; default: %(default)s)",
    )
    parser.add_argument("--rate", type=float, default=300.0, help="(b) requests per second")
    parser.add_argument("--latency-duration", type=float, default=10.0, help="(b) seconds per path and round")
    parser.add_argument("--fairness-warmup", type=float, default=60.0, help="(d) seconds before measuring")
    parser.add_argument("--fairness-measure", type=float, default=180.0, help="(d) seconds measured")
    parser.add_argument(
        "--fairness-deadline-ms",
        type=int,
        default=FairnessSettings.deadline_ms,
        help="(d) each request's queue deadline (0: the sidecars' default, 120 s; default: %(default)s)",
    )
    parser.add_argument("--skip-matrix", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-cache", action="store_true")
    parser.add_argument("--skip-fairness", action="store_true")
    parser.add_argument("--skip-queue", action="store_true")
    parser.add_argument("--only-queue", action="store_true", help="run only (e)")
    parser.add_argument("--skip-sustain", action="store_true")
    parser.add_argument("--only-sustain", action="store_true", help="run only (h)")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument(
        "--only-scale", action="store_true", help="run only (f); --plot then writes its plot to PNG itself"
    )
    parser.add_argument(
        "--scale-sidecars",
        type=int,
        action="append",
        help="(f) simulated sidecars per cell (repeatable; default: 10, 100, 1000)",
    )
    parser.add_argument(
        "--peers",
        action="append",
        choices=["litellm"],
        help="(g) run these proxies beside the sidecar: a path in (b) and the quota section (repeatable)",
    )
    parser.add_argument(
        "--only-peers", action="store_true", help="run only (b) at 20, 100, 300 rps with the peers, and (g)"
    )
    parser.add_argument("--skip-peer-quota", action="store_true", help="(g) only the peers' path in (b)")
    parser.add_argument(
        "--peer-rate",
        type=float,
        action="append",
        metavar="RPS",
        help="(b) with --only-peers: this rate instead of 20, 100 and 300 rps (repeatable)",
    )
    parser.add_argument(
        "--queue-previous",
        default=QUEUE_PREVIOUS,
        metavar="REF",
        help="(e) git ref whose sidecars run beside this tree's ('' to skip; default: %(default)s)",
    )
    parser.add_argument(
        "--only-fairness", action="store_true", help="run only (d); --plot then writes its plot to PNG itself"
    )
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="also write PNG plots (needs matplotlib): (a) to PNG, the others beside it (<PNG>-latency.png, "
        "...)",
    )
    return asyncio.run(run(parser.parse_args(argv)))
