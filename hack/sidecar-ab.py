"""Two (or more) versions of the sidecar side by side in one run, against one zero-latency emulator and
one redis-server: each sidecar's added latency and CPU per request next to the direct path and the bare
aiohttp pass-through (o1pool/passthrough.py), the paths measured in turn, in alternating order, round
after round (docs/performance.md). On a busy machine, only numbers from one such run compare.

Each sidecar is ``NAME=PYTHONPATH`` (a directory holding the ``o1sidecar`` package to run), optionally
followed by ``;ARGS`` for ``o1pool sidecar``. To compare a change with the tree before it, copy
``sidecar/`` somewhere and put the changed files back as they were there. For example:

    .venv/bin/python hack/sidecar-ab.py --rate 300 --rounds 4 --bare-uvloop \\
        --sidecar "before=/tmp/before/sidecar" --sidecar "after=sidecar" \\
        --sidecar "after on asyncio=sidecar;--loop asyncio"

Not part of any install; needs redis-server. Every request is a different one (the cache answers none).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import yaml

import o1pool.scenarios as scenarios
from o1pool.bench import latency_table
from o1pool.loadgen import Planned
from o1pool.procs import RedisServer, cpu_seconds, free_port, spawn_module, stop_all, wait_for_port
from o1pool.scenarios import (
    DEFAULT_LAYOUT,
    LatencyRow,
    LatencySettings,
    Layout,
    emulator_config,
    sidecar_config,
)

BIG = 10_000_000
FILLER = "Lorem ipsum dolor sit amet, consectetur adipiscing elit 2024. "


def with_body(completion: int, prompt_bytes: int) -> None:
    """Requests with ``completion`` as their ``max_completion_tokens`` (0: none), and ``prompt_bytes``
    more of prompt."""
    plain = scenarios.chat_body

    def chat_body(
        planned: Planned, model: str, max_tokens: int, unique: bool = True, sender: str = ""
    ) -> Any:
        body = plain(planned, model, max_tokens, unique, sender)
        if completion <= 0:
            body.pop("max_completion_tokens")
        else:
            body["max_completion_tokens"] = completion
        if prompt_bytes:
            body["messages"][0]["content"] += FILLER * (prompt_bytes // len(FILLER))
        return body

    scenarios.chat_body = chat_body


async def run(args: argparse.Namespace) -> None:
    redis = RedisServer.find()
    if redis is None:
        raise SystemExit("needs redis-server")
    redis.start()
    assert redis.proc is not None
    workdir = Path(tempfile.mkdtemp(prefix="o1pool-ab-"))
    procs = []
    try:
        (workdir / "emulator.yaml").write_text(
            yaml.safe_dump(emulator_config(BIG, BIG * 100, latency_scale=0.0))
        )
        port = free_port()
        emulator = spawn_module(
            "o1pool.cli", "emulator", "--config", str(workdir / "emulator.yaml"), "--port", str(port)
        )
        procs.append(emulator)
        wait_for_port(port, proc=emulator)
        upstream = f"http://127.0.0.1:{port}"
        api_key = DEFAULT_LAYOUT.key_value("acct-a", "k1")
        targets: dict[str, tuple[str, dict[str, str], int | None]] = {
            "direct": (upstream + "/v1", {"authorization": f"Bearer {api_key}"}, None)
        }
        for name, loop in [("bare", "asyncio")] + ([("bare uvloop", "uvloop")] if args.bare_uvloop else []):
            port = free_port()
            bare = spawn_module(
                "o1pool.passthrough",
                *("--upstream", upstream + "/v1", "--api-key", api_key, "--port", str(port), "--loop", loop),
            )
            procs.append(bare)
            wait_for_port(port, proc=bare)
            targets[name] = (f"http://127.0.0.1:{port}/v1", {}, bare.pid)
        for spec in args.sidecar:
            name, rest = spec.split("=", 1)
            path, _, extra = rest.partition(";")
            port, metrics_port = free_port(), free_port()
            config = sidecar_config(
                upstream,
                port,
                metrics_port,
                None if args.no_redis else redis.url,
                {"rpm": BIG, "tpm": BIG * 100},
                not args.no_cache,
                Layout(pool=name.replace(" ", "-")),  # (a pool each: no shared cache, queue or limits)
            )
            config_path = workdir / f"{len(procs)}.yaml"
            config_path.write_text(yaml.safe_dump(config))
            env = {**DEFAULT_LAYOUT.env(), "PYTHONPATH": str(Path.cwd() / path)}
            sidecar = spawn_module(
                "o1pool.cli", "sidecar", "--config", str(config_path), *extra.split(), env=env
            )
            procs.append(sidecar)
            wait_for_port(port, proc=sidecar)
            targets[name] = (f"http://127.0.0.1:{port}/v1", {}, sidecar.pid)
        with_body(args.max_tokens, args.prompt_bytes)
        settings = LatencySettings(rate_rps=args.rate, duration_s=args.duration)
        for name, (url, headers, _) in targets.items():
            warm = LatencySettings(rate_rps=args.rate, duration_s=2.0)
            await scenarios._measure(url, warm, headers, sender=f"warm-up {name} ")
        rows = {name: LatencyRow(name, [], 0) for name in targets}
        per_round: dict[str, list[float]] = {name: [] for name in targets}
        names = list(targets)
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                url, headers, pid = targets[name]
                cpu, redis_cpu = cpu_seconds(pid) if pid else 0.0, cpu_seconds(redis.proc.pid)
                latencies, errors = await scenarios._measure(
                    url, settings, headers, sender=f"{round_} {name} "
                )
                row = rows[name]
                if pid:
                    used = cpu_seconds(pid) - cpu
                    row.cpu_s += used
                    per_round[name].append(used / max(1, len(latencies) + errors) * 1e6)
                row.redis_cpu_s += cpu_seconds(redis.proc.pid) - redis_cpu
                row.latencies_s += latencies
                row.errors += errors
    finally:
        stop_all(procs)
        redis.close()
        shutil.rmtree(workdir, ignore_errors=True)
    redis_mode = "Redis limiter" if not args.no_redis else "local limiter"
    print(
        f"{args.rate:.0f} rps, {args.rounds} rounds of {args.duration:.0f} s per path, {redis_mode}, cache "
        f"{'off' if args.no_cache else 'on'}; CPU: the median of the rounds ({rows['bare'].target}: "
        + ", ".join(f"{v:.0f}" for v in per_round["bare"])
        + ")"
    )
    medians = {name: statistics.median(v) if v else math.nan for name, v in per_round.items()}
    print(latency_table(list(rows.values()), medians))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sidecar", action="append", default=[], metavar="NAME=PYTHONPATH[;ARGS]")
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per path and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--bare-uvloop", action="store_true", help="also the bare pass-through on uvloop")
    parser.add_argument("--no-redis", action="store_true", help="the sidecars' local limiter (no L2)")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_completion_tokens (0: none)")
    parser.add_argument("--prompt-bytes", type=int, default=0, help="this much more prompt per request")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
