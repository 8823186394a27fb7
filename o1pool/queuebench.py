"""``o1pool bench`` (e): what queueing costs Redis under overload, per upstream call.

Four sidecar processes share two accounts (300 RPM each, the limit known, headers on) through one
redis-server while the openai SDK offers three times the pool's capacity at priorities 2, 5 and 8,
each request with a deadline. Redis ``MONITOR`` sees every command in the measured period: those the
sidecars send (round trips: EVALSHA of each script, told apart by its SHA, and anything else) and
those the scripts run inside Redis. The emulator counts the upstream calls. Each run is made twice
with the same load: sidecars from a git ref (``--queue-previous``, the code before event-driven
queueing) and from this tree; and at two deadlines, because a longer deadline means more waiters,
and the cost per upstream call should not grow with them.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from o1pool.loadgen import Outcome, Planned, chat_body, drive, percentile, plan_arrivals, table
from o1pool.procs import RedisServer
from o1pool.scenarios import MODEL, Layout, cluster, emulator_config, emulator_stats

PRIORITIES = ((2, 0.5), (5, 0.3), (8, 0.2))
# The sidecars' scripts (o1sidecar/limits/scripts.py), by name; the previous ref's are told apart by
# their own sources.
SCRIPTS = ("admit", "release", "heartbeat", "eta", "forget")
# (counters and hash_and_time: an older ref's, since folded into sync)
SIDECAR_SCRIPTS = ("sync", "quarantine", "outage_sync", "counters", "hash_and_time")


@dataclass(frozen=True)
class QueueSettings:
    """The benchmark's run; ``SHORT`` is the load test's."""

    sidecars: int = 4
    rpm: int = 300  # per account
    accounts: int = 2
    overload: float = 3.0
    warmup_s: float = 20.0
    measure_s: float = 60.0
    deadlines_ms: tuple[int, ...] = (15_000, 45_000)
    latency_scale: float = 0.05
    max_tokens: int = 64

    @property
    def capacity_rps(self) -> float:
        return self.rpm * self.accounts / 60

    @property
    def offered_rps(self) -> float:
        return self.overload * self.capacity_rps

    def describe(self) -> str:
        return (
            f"{self.sidecars} sidecars, {self.accounts} accounts x {self.rpm} RPM ({self.capacity_rps:.0f} "
            f"calls/s), offered {self.offered_rps:.0f}/s ({self.overload:g}x) at priorities 2/5/8 "
            f"(50/30/20%), {self.warmup_s:.0f} s warm-up + {self.measure_s:.0f} s measured"
        )


@dataclass
class QueueRun:
    version: str  # "this tree" or the ref
    deadline_ms: int
    upstream_calls: int
    requests: int  # client requests sent in the measured period
    answered: int
    refused: int
    sent: Counter[str] = field(default_factory=Counter)  # round trips by command (EVALSHA by script)
    in_scripts: int = 0  # commands the scripts ran inside Redis
    waiters_p50: float = 0.0  # requests waiting in the pool's queue, sampled each second
    waiters_max: int = 0
    wait_p95_s: dict[int, float] = field(default_factory=dict)  # by priority, answered requests

    @property
    def round_trips(self) -> int:
        return sum(self.sent.values())

    @property
    def limiter_round_trips(self) -> int:
        """The limiter's scripts (admission attempts, releases, estimates, forgets, heartbeats)."""
        return sum(self.sent[f"EVALSHA {name}"] for name in SCRIPTS)

    @property
    def errors(self) -> int:
        return self.requests - self.answered - self.refused

    def per_call(self, count: float) -> float:
        return count / self.upstream_calls if self.upstream_calls else float("nan")


def script_names(root: Path | None) -> dict[str, str]:
    """SHA1 -> script name for the sidecars' scripts as the tree at ``root`` (None: this one) builds
    them: its rule, fair share and limits files, then the script."""
    package = Path(str(files("o1sidecar"))) if root is None else root / "sidecar" / "o1sidecar"
    own = {  # (the sidecar's other scripts, each a file of its own)
        hashlib.sha1((package / f"{name}.lua").read_text().encode()).hexdigest(): name
        for name in SIDECAR_SCRIPTS
        if (package / f"{name}.lua").exists()
    }
    if root is None:
        from o1sidecar.limits.scripts import script_source
        from o1sidecar.poolsync import SCRIPT as SYNC

        own[hashlib.sha1(SYNC.encode()).hexdigest()] = "sync"  # (when no heartbeat carries it)
        return own | {hashlib.sha1(script_source(n).encode()).hexdigest(): n for n in SCRIPTS}
    lua = package / "limits" / "lua"
    parts = [p for p in ("rule", "fair", "caps", "queue") if (lua / f"{p}.lua").exists()]
    out = own
    for name in SCRIPTS:
        if (lua / f"{name}.lua").exists():
            source = "\n".join((lua / f"{p}.lua").read_text() for p in (*parts, name))
            out[hashlib.sha1(source.encode()).hexdigest()] = name
    return out


class _Monitor:
    """Counts, from Redis MONITOR, the commands clients send and those scripts run."""

    def __init__(self, url: str, shas: dict[str, str]) -> None:
        self.url, self.shas = url, shas
        self.sent: Counter[str] = Counter()
        self.in_scripts = 0
        self.counting = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Monitor:
        from redis.asyncio import Redis

        self._client = Redis.from_url(self.url)
        self._monitor = await self._client.monitor().__aenter__()  # type: ignore[no-untyped-call]
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        while True:
            command = await self._monitor.next_command()
            if not self.counting:
                continue
            words = str(command["command"]).split(" ")
            if command.get("client_type") == "lua":
                self.in_scripts += 1
            elif words[0].upper() == "EVALSHA":
                self.sent[f"EVALSHA {self.shas.get(words[1].lower(), 'other')}"] += 1
            elif words[0].upper() not in ("MONITOR", "INFO", "ZCARD"):  # (this bench's own)
                self.sent[words[0].upper()] += 1

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._monitor.__aexit__()
        await self._client.aclose()


def _admitted(stats: dict[str, Any]) -> int:
    return sum(a["models"][MODEL]["admitted"] for a in stats["accounts"].values())


async def run_queue_cost(
    settings: QueueSettings,
    redis: RedisServer,
    deadline_ms: int,
    *,
    version: str = "this tree",
    env: dict[str, str] | None = None,
    root: Path | None = None,
) -> QueueRun:
    """One run on a flushed ``redis``: sidecars of this tree, or (``env``/``root``) of another ref."""
    from redis.asyncio import Redis

    from o1sidecar.limits.keys import PoolKeys

    redis.flush()
    layout = Layout(pool="queue")
    emu_cfg = emulator_config(settings.rpm, 100 * settings.rpm * 1000, settings.latency_scale, layout=layout)
    limits = {"rpm": settings.rpm, "tpm": 100 * settings.rpm * 1000}
    plan = plan_arrivals(settings.offered_rps, settings.warmup_s + settings.measure_s, PRIORITIES)
    headers = {"x-o1pool-deadline-ms": str(deadline_ms)}
    queue_key = PoolKeys("o1pool", "default", layout.pool).queue(MODEL)
    with cluster(emu_cfg, settings.sidecars, limits, redis, layout=layout, sidecar_env=env) as c:
        probe = Redis.from_url(redis.url)
        waiters: list[int] = []
        async with _Monitor(redis.url, script_names(root)) as monitor:
            start = time.monotonic()

            async def measure() -> tuple[int, int]:
                await asyncio.sleep(max(0.0, start + settings.warmup_s - time.monotonic()))
                before = _admitted(await emulator_stats(c.emulator_url))
                monitor.counting = True
                end = start + settings.warmup_s + settings.measure_s
                while time.monotonic() < end:
                    waiters.append(int(await probe.zcard(queue_key)))
                    await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
                monitor.counting = False
                return before, _admitted(await emulator_stats(c.emulator_url))

            window = asyncio.create_task(measure())

            def body(p: Planned) -> dict[str, object]:
                return chat_body(p, MODEL, max_tokens=settings.max_tokens, sender=f"{version}{deadline_ms}")

            outcomes = await drive(
                c.sidecar_urls, plan, body, headers_for=lambda _p: headers, client="openai"
            )
            before, after = await window
            sent, in_scripts = Counter(monitor.sent), monitor.in_scripts
        await probe.aclose()
    measured = [
        o for o in outcomes if settings.warmup_s <= o.planned.at_s < settings.warmup_s + settings.measure_s
    ]
    return QueueRun(
        version,
        deadline_ms,
        after - before,
        len(measured),
        sum(o.status == 200 for o in measured),
        sum(o.status == 429 for o in measured),
        sent,
        in_scripts,
        percentile([float(w) for w in waiters], 0.5) if waiters else 0.0,
        max(waiters, default=0),
        _wait_p95(measured),
    )


def _wait_p95(outcomes: Sequence[Outcome]) -> dict[int, float]:
    out = {}
    for priority, _ in PRIORITIES:
        waits = [o.queue_wait_s for o in outcomes if o.status == 200 and o.planned.priority == priority]
        if waits:
            out[priority] = percentile(waits, 0.95)
    return out


def previous_tree(ref: str) -> tuple[dict[str, str], Path] | None:
    """The environment and extracted tree of git ``ref`` (None: not in this repository)."""
    from o1pool.matrix import previous_release

    into = Path(tempfile.mkdtemp(prefix="o1pool-queue-previous-"))
    env = previous_release(ref, into)
    return None if env is None else (env, into)


async def run_queue_bench(
    settings: QueueSettings, redis: RedisServer, previous: str | None, progress: bool = False
) -> list[QueueRun]:
    runs = []
    versions: list[tuple[str, dict[str, str] | None, Path | None]] = []
    if previous:
        tree = previous_tree(previous)
        if tree is None:
            print(f"  (ref {previous!r} is not in this repository: only this tree runs)", flush=True)
        else:
            versions.append((previous, tree[0], tree[1]))
    versions.append(("this tree", None, None))
    for deadline in settings.deadlines_ms:
        for version, env, root in versions:
            if progress:
                print(f"  {version}, deadline {deadline / 1000:g} s ...", flush=True)
            runs.append(await run_queue_cost(settings, redis, deadline, version=version, env=env, root=root))
    return runs


def queue_table(runs: Sequence[QueueRun]) -> str:
    rows = []
    for r in runs:
        by_script = ", ".join(
            f"{k.removeprefix('EVALSHA ')} {r.per_call(v):.2f}" for k, v in r.sent.most_common()
        )
        rows.append(
            (
                r.version,
                f"{r.deadline_ms / 1000:g}",
                f"{r.waiters_p50:.0f} / {r.waiters_max}",
                r.upstream_calls,
                r.requests,
                f"{r.per_call(r.limiter_round_trips):.2f}",
                f"{r.per_call(r.round_trips):.2f}",
                f"{r.per_call(r.in_scripts):.1f}",
                " / ".join(f"{r.wait_p95_s.get(p, float('nan')):.2f}" for p, _ in PRIORITIES),
                by_script,
            )
        )
    return table(
        (
            "sidecars",
            "deadline s",
            "waiters p50 / max",
            "upstream calls",
            "requests",
            "limiter round trips/call",
            "round trips/call",
            "in-script cmds/call",
            "wait p95 s (p2 / p5 / p8)",
            "round trips/call by command",
        ),
        rows,
    )


SHORT = QueueSettings(warmup_s=10.0, measure_s=30.0, deadlines_ms=(10_000, 30_000))
