"""``o1pool bench`` (f): the shared limiter at scale (issue 14). Hundreds of simulated sidecars in a few
processes against one redis-server and against a three-primary Redis Cluster.

A simulated sidecar is the limiter a sidecar runs, built the way the sidecar builds it
(``build_limiter(SidecarConfig)``: a ``SharedLimiter``, the wait queue over Redis, its own Redis
client, heartbeat and wake-up listener), without the HTTP proxy around it. Each one offers requests to
its pool (Poisson arrivals at priorities 2/5/8): acquire, hold a simulated upstream call for 50-250 ms,
release with the call's usage. The pools' offered load is ``overload`` times their capacity, so
waiters pile up to their deadline (thousands of them with 9 pools); it is the same at every number of
sidecars: only the number of clients sharing it grows (10 -> 100 -> 1000), spread over ``workers``
OS processes.

Measured, over the measured period only:

- **admission decisions**: the round trip of every admission attempt as the limiter makes it (the
  wait queue's one call to the store, ``QueueingLimiter._try``, timed around it): p50/p99. A queued
  request makes several; the time it spends queued is reported separately (``wait``).
- **Redis**: CPU of every redis-server primary (from /proc, summed; and the busiest one), commands per
  second (INFO ``total_commands_processed``, after CONFIG RESETSTAT), Redis's own time per EVALSHA,
  client connections.
- **the clients**: the CPU of the worker processes and their event loops' lag (they share the
  machine's cores with Redis).
- **correctness**: an independent checker (``check``) over the log of admissions (when each decisive
  attempt was sent and answered, account, tokens, when the grant was released): no account exceeded
  its RPM or TPM in any 60 s window, its burst bound (``ceil(RPM/60 * burst_s)`` in any ``burst_s``,
  limits.md "Pacing") or its concurrency. Every request's outcome is counted: admitted, timed out in
  the queue, refused, handed back when the run ends.

One pool's keys share one hash slot by design (keys.py): on a cluster one pool lives on one primary,
and a cluster spreads pools, not one pool. So each size runs with 1 pool and with 9 pools (3 per
primary), both against one Redis and the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis

from o1pool.loadgen import percentile, table
from o1pool.procs import TICKS, RedisServer, cpu_seconds
from o1pool.rediscluster import LocalCluster

MODEL = "o1-mini"
NAMESPACE = "scale"
PRIORITIES = ((2, 0.5), (5, 0.3), (8, 0.2))
CLUSTER_SLOTS = 16384
Topology = Literal["single", "cluster"]


@dataclass(frozen=True)
class ScaleSettings:
    """The run of ``o1pool bench`` (f); the load test runs a shorter one."""

    sidecars: tuple[int, ...] = (10, 100, 1000)
    pools: tuple[int, ...] = (1, 9)  # pools the sidecars are spread over (9: three per primary)
    topologies: tuple[Topology, ...] = ("single", "cluster")
    workers: int = 4  # OS processes the simulated sidecars run in
    accounts: int = 2  # per pool
    rpm: int = 600  # per account
    tpm: int = 1_000_000  # per account (does not bind: at most 600 x 1,000 tokens a minute)
    concurrency: int = 8  # per account
    burst_s: float = 1.0
    overload: float = 3.0  # offered / capacity, per pool
    deadline_s: float = 20.0  # each request's queue deadline
    hold_s: tuple[float, float] = (0.05, 0.25)  # the simulated upstream call (uniform)
    tokens: tuple[int, int] = (200, 1000)  # each request's charge (uniform)
    warmup_s: float = 10.0
    measure_s: float = 20.0
    seed: int = 14

    @property
    def capacity_rps(self) -> float:
        """Admissions per second one pool's accounts allow (RPM binds)."""
        return self.accounts * self.rpm / 60

    def offered_rps(self, pools: int) -> float:
        return pools * self.overload * self.capacity_rps

    def describe(self) -> str:
        return (
            f"{'/'.join(map(str, self.sidecars))} simulated sidecars in {self.workers} processes; "
            f"{' and '.join(map(str, self.pools))} pool(s) of {self.accounts} accounts x {self.rpm} RPM "
            f"(concurrency {self.concurrency}), offered {self.overload:g}x capacity "
            f"({self.capacity_rps:.0f} admissions/s per pool) at priorities 2/5/8, deadline "
            f"{self.deadline_s:.0f} s, calls held {self.hold_s[0] * 1000:.0f}-"
            f"{self.hold_s[1] * 1000:.0f} ms; "
            f"one redis-server and a 3-primary cluster; {self.warmup_s:.0f} s warm-up + "
            f"{self.measure_s:.0f} s measured per cell"
        )


# -- the checker -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """One admission as the client saw it: the decision was made in Redis between ``sent`` and
    ``received`` (epoch seconds, the same host clock as Redis's); the lease was freed after
    ``released`` (``None``: never released, held until it expires)."""

    sent: float
    received: float
    account: str  # "<pool>/<account>"
    tokens: int
    released: float | None = None
    shared: bool = True  # admitted through Redis (False: on the sidecar's local limits, Redis unreachable)


@dataclass(frozen=True)
class AccountLimits:
    rpm: float
    tpm: float
    concurrency: int | None = None
    burst_s: float = 1.0


@dataclass(frozen=True)
class Violation:
    account: str
    limit: str  # "RPM", "TPM", "burst", "concurrency"
    allowed: float
    seen: float
    at: float  # where (epoch seconds): the window's start, or the moment of the overlap
    local: int = 0  # admissions in that window (or leases held then) made on a sidecar's local limits

    def __str__(self) -> str:
        local = f" ({self.local} on local limits)" if self.local else ""
        return f"{self.account}: {self.limit} {self.seen:g} > {self.allowed:g} at {self.at:.3f}{local}"


def max_in_window(
    admissions: Sequence[Admission], window_s: float, weight: Callable[[Admission], float]
) -> tuple[float, float]:
    """The most ``weight`` that admissions certainly decided within one span shorter than ``window_s``
    carry, and where that span starts. An admission is certainly in ``[a, a + window_s)`` when it was
    sent at or after ``a`` and answered before ``a + window_s`` (its decision lies in between), so the
    count never blames the limiter for the client's own delays; the best ``a`` is a send time."""
    ordered = sorted(admissions, key=lambda x: x.sent)
    sends = [x.sent for x in ordered]
    best, where = 0.0, math.nan
    for i, first in enumerate(ordered):
        end = first.sent + window_s
        stop = bisect.bisect_left(sends, end, lo=i)
        total = sum(weight(x) for x in ordered[i:stop] if x.received < end)
        if total > best:
            best, where = total, first.sent
    return best, where


def max_overlap(admissions: Sequence[Admission]) -> tuple[int, float]:
    """The most leases certainly held at once, and when: a lease is held at least from when its grant
    was received until its release was sent."""
    events: list[tuple[float, int]] = []
    for x in admissions:
        events.append((x.received, 1))
        events.append((math.inf if x.released is None else x.released, -1))
    events.sort()  # (at a tie the release, -1, comes first)
    held, best, at = 0, 0, math.nan
    for when, step in events:
        held += step
        if held > best:
            best, at = held, when
    return best, at


def check(admissions: Sequence[Admission], limits: dict[str, AccountLimits]) -> list[Violation]:
    """Every limit an account exceeded, by the log alone: RPM and TPM in any 60 s (the limiter's window
    is 60.1 s: no tolerance), the burst bound (at most ``ceil(RPM/60 * burst_s)`` requests in any
    ``burst_s``) and concurrency."""
    by_account: dict[str, list[Admission]] = {}
    for x in admissions:
        by_account.setdefault(x.account, []).append(x)
    out = []
    for account, log in sorted(by_account.items()):
        lim = limits[account]
        burst = math.ceil(max(1.0, lim.rpm * lim.burst_s / 60))
        for name, window, allowed, weight in (
            ("RPM", 60.0, lim.rpm, _one),
            ("TPM", 60.0, lim.tpm, _tokens),
            ("burst", lim.burst_s, burst, _one),
        ):
            seen, at = max_in_window(log, window, weight)
            if seen > allowed:
                local = sum(not x.shared and at <= x.sent < at + window for x in log)
                out.append(Violation(account, name, allowed, seen, at, local))
        if lim.concurrency is not None:
            held, at = max_overlap(log)
            if held > lim.concurrency:
                local = sum(
                    not x.shared and x.received <= at < (math.inf if x.released is None else x.released)
                    for x in log
                )
                out.append(Violation(account, "concurrency", lim.concurrency, held, at, local))
    return out


def _one(_: Admission) -> float:
    return 1.0


def _tokens(x: Admission) -> float:
    return float(x.tokens)


# -- pools and their configs -------------------------------------------------------------------------


def pool_names(count: int, primaries: int = 3) -> list[str]:
    """``count`` pool names whose hash slots spread evenly over ``primaries`` (the slot ranges
    ``redis-cli --cluster create`` assigns): a cluster spreads pools by hash alone."""
    from redis.crc import key_slot

    from o1sidecar.limits.keys import PoolKeys

    per = [0] * primaries
    names: list[str] = []
    i = 0
    while len(names) < count:
        name = f"pool-{i}"
        i += 1
        owner = _slot_owner(key_slot(PoolKeys("o1pool", NAMESPACE, name).tag.encode()), primaries)
        if per[owner] < math.ceil(count / primaries):
            per[owner] += 1
            names.append(name)
    return names


def _slot_owner(slot: int, primaries: int) -> int:
    """The primary that ``redis-cli --cluster create`` gives ``slot`` (its even split)."""
    per, cursor, first = CLUSTER_SLOTS / primaries, 0.0, 0
    for i in range(primaries):
        last = CLUSTER_SLOTS - 1 if i == primaries - 1 else round(cursor + per - 1)
        if first <= slot <= last:
            return i
        cursor += per
        first = last + 1
    return primaries - 1


def sidecar_config(settings: ScaleSettings, url: str, cluster: bool, pool: str) -> dict[str, Any]:
    """The sidecar config (as the operator renders it) of one simulated sidecar of ``pool``."""
    limits = {"rpm": settings.rpm, "tpm": settings.tpm, "concurrency": settings.concurrency}
    return {
        "pool": {"namespace": NAMESPACE, "name": pool},
        "redis": {"url": url, "cluster": cluster},
        "accounts": [
            {
                "name": f"acct-{i}",
                "models": {MODEL: limits},
                "keys": [{"name": "k", "env": "UNUSED_KEY"}],
                "burst_s": settings.burst_s,
                # The configured limits stand (no slow start), so that capacity is what they say.
                "adaptive": False,
            }
            for i in range(settings.accounts)
        ],
    }


def account_limits(settings: ScaleSettings, pools: Sequence[str]) -> dict[str, AccountLimits]:
    one = AccountLimits(settings.rpm, settings.tpm, settings.concurrency, settings.burst_s)
    return {f"{pool}/acct-{i}": one for pool in pools for i in range(settings.accounts)}


# -- a worker process: hundreds of simulated sidecars ------------------------------------------------


@dataclass
class _Sidecar:
    """One simulated sidecar and what it saw."""

    pool: int
    limiter: Any  # a SharedLimiter
    rate: float  # requests offered per second
    attempts: list[tuple[float, float, int, int]] = field(default_factory=list)  # sent, rtt, admitted, shared
    admissions: dict[str, list[Any]] = field(default_factory=dict)  # lease -> sent, received, account, tokens
    released: dict[str, float] = field(default_factory=dict)  # lease -> when its release was sent
    requests: list[tuple[float, int, str, float]] = field(
        default_factory=list
    )  # arrived, prio, outcome, wait
    woken: list[float] = field(default_factory=list)  # when a wake-up message reached it


def _instrument(sim: _Sidecar) -> None:
    """Time each admission attempt of the limiter (its one call to the store) and note each release:
    the limiter's own methods, wrapped on this instance."""
    from o1sidecar.limits.backend import Admitted, Attempt, Denied

    limiter = sim.limiter
    attempt_once = limiter._try
    release_once = limiter.release
    wake_once = limiter._on_wake

    async def timed(attempt: Attempt) -> Admitted | Denied:
        shared = int(limiter.failover.mode == "shared")
        sent = time.time()
        result: Admitted | Denied = await attempt_once(attempt)
        received = time.time()
        admitted = isinstance(result, Admitted)
        sim.attempts.append((sent, received - sent, int(admitted), shared))
        if isinstance(result, Admitted):
            sim.admissions[result.lease_id] = [sent, received, result.account, attempt.demand.tokens, shared]
        return result

    async def noted(grant: Any, report: Any) -> None:
        sim.released.setdefault(grant.lease_id, time.time())
        await release_once(grant, report)

    def woken(message: str) -> None:
        sim.woken.append(time.time())
        wake_once(message)

    setattr(limiter, "_try", timed)  # noqa: B010  (an instance attribute, over the class's method)
    setattr(limiter, "release", noted)  # noqa: B010
    setattr(limiter, "_on_wake", woken)  # noqa: B010


async def _request(sim: _Sidecar, settings: ScaleSettings, rng: random.Random, accounts: list[str]) -> None:
    from o1sidecar.limits.api import Demand, QueueFull, QueueTimeout, UpstreamReport

    arrived = time.time()
    priority = rng.choices([p for p, _ in PRIORITIES], [w for _, w in PRIORITIES])[0]
    tokens = rng.randint(*settings.tokens)
    demand = Demand(MODEL, tokens, priority, arrived + settings.deadline_s)
    try:
        grant = await sim.limiter.acquire(demand, accounts)
    except QueueTimeout as exc:
        outcome = "handed back" if "shutting down" in exc.reason else "timed out"
        sim.requests.append((arrived, priority, outcome, exc.waited_s))
        return
    except QueueFull:
        sim.requests.append((arrived, priority, "queue full", 0.0))
        return
    except Exception as exc:  # (counted, never lost)
        sim.requests.append((arrived, priority, f"error {type(exc).__name__}", 0.0))
        return
    sim.requests.append((arrived, priority, "admitted", grant.waited_s))
    await asyncio.sleep(rng.uniform(*settings.hold_s))
    await sim.limiter.release(grant, UpstreamReport(status=200, usage_tokens=tokens))


async def _offer(
    sim: _Sidecar, settings: ScaleSettings, rng: random.Random, until: float, tasks: set[asyncio.Task[None]]
) -> None:
    accounts = [f"acct-{i}" for i in range(settings.accounts)]
    at = time.time()
    while True:
        at += rng.expovariate(sim.rate)
        if at >= until:
            return
        await asyncio.sleep(max(0.0, at - time.time()))
        task = asyncio.create_task(_request(sim, settings, rng, accounts))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _lag(samples: list[tuple[float, float]], stop: asyncio.Event, every_s: float = 0.05) -> None:
    """How late the event loop wakes a sleeper: the delay every waiter of this process sees too."""
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(every_s)
        samples.append((time.time(), time.monotonic() - before - every_s))


async def _chunked(coros: Iterator[Any], size: int = 25) -> None:
    batch: list[Any] = []
    for coro in coros:
        batch.append(coro)
        if len(batch) >= size:
            await asyncio.gather(*batch)
            batch = []
    if batch:
        await asyncio.gather(*batch)


async def worker(spec: dict[str, Any], out: Path) -> None:
    """Run the simulated sidecars of ``spec``: say ``ready`` once they all share through Redis, offer the
    load from the ``go <epoch>`` read on stdin until the measured period ends, wait for ``stop`` (the
    parent has read this process's CPU), hand back the waiters, close, write what they saw to ``out``
    and say ``done``."""
    from o1sidecar.config import SidecarConfig
    from o1sidecar.limits import build_limiter
    from o1sidecar.limits.shared import SharedLimiter

    settings = _settings_from(spec["settings"])
    pools: list[str] = spec["pools"]
    configs = [
        SidecarConfig.from_dict(sidecar_config(settings, spec["url"], spec["cluster"], p)) for p in pools
    ]
    sims = []
    for index, (pool, rate) in enumerate(spec["sidecars"]):
        limiter = build_limiter(configs[pool])  # (as the sidecar builds it)
        assert isinstance(limiter, SharedLimiter)
        limiter.sidecar_id = f"w{spec['worker']}-s{index}"
        sim = _Sidecar(pool, limiter, rate)
        _instrument(sim)
        sims.append(sim)
    await _chunked((s.limiter.start() for s in sims), size=10)
    # A limiter whose start timed out limits locally, as if alone, until its breaker lets a probe through
    # (limits.md): the run begins once every one shares through Redis.
    start_local = sum(s.limiter.failover.mode != "shared" for s in sims)
    for _ in range(600):  # (at most a minute)
        if all(s.limiter.failover.mode == "shared" for s in sims):
            break
        await asyncio.sleep(0.1)
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    start = float(line.split()[1])
    await asyncio.sleep(max(0.0, start - time.time()))
    until = start + settings.warmup_s + settings.measure_s
    switches_before = sum(s.limiter.failover.switches for s in sims)
    rng = random.Random(settings.seed * 1000 + spec["worker"])
    tasks: set[asyncio.Task[None]] = set()
    lag: list[tuple[float, float]] = []
    stop = asyncio.Event()
    lagging = asyncio.create_task(_lag(lag, stop))
    offers = [
        asyncio.create_task(_offer(s, settings, random.Random(rng.random()), until, tasks)) for s in sims
    ]
    await asyncio.gather(*offers)
    stop.set()
    await lagging
    # The parent reads this process's CPU at the end of the measured period: wait until it has.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await _chunked(s.limiter.drain() for s in sims)  # the run is over: waiting requests are handed back
    lost = 0
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=settings.hold_s[1] + 10)
        lost = len(pending)
        for task in pending:
            task.cancel()
    await _chunked((s.limiter.close() for s in sims), size=50)
    switches = sum(s.limiter.failover.switches for s in sims) - switches_before
    result = {
        "attempts": [a for s in sims for a in s.attempts],
        "admissions": [
            [sent, received, f"{pools[s.pool]}/{account}", tokens, s.released.get(lease), shared]
            for s in sims
            for lease, (sent, received, account, tokens, shared) in s.admissions.items()
        ],
        "requests": [r for s in sims for r in s.requests],
        "lag": lag,
        "woken": [t for s in sims for t in s.woken if start + settings.warmup_s <= t < until],
        "switches": switches,
        "start_local": start_local,
        "lost": lost,
    }
    await asyncio.to_thread(out.write_text, json.dumps(result))
    print("done", flush=True)


def _settings_from(data: dict[str, Any]) -> ScaleSettings:
    tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
    return ScaleSettings(**{**data, **tuples})


# -- the servers -------------------------------------------------------------------------------------


class Servers:
    """The Redis of a cell: one redis-server or a cluster, with what the bench reads of it. Given a
    running server or cluster (the tests' fixtures), it uses that one and leaves it running."""

    def __init__(
        self, topology: Topology, *, single: RedisServer | None = None, cluster: LocalCluster | None = None
    ) -> None:
        self.topology = topology
        self.single = single
        self.cluster = cluster
        self.owned = single is None and cluster is None

    def start(self) -> Servers:
        if not self.owned:
            return self
        if self.topology == "single":
            self.single = RedisServer.find()
            if self.single is None:
                raise RuntimeError("the scale bench needs redis-server (apt-get install -y redis-server)")
            self.single.start()
        else:
            self.cluster = LocalCluster.find()
            if self.cluster is None:
                raise RuntimeError(
                    "the scale bench needs redis-server and redis-cli (apt-get install -y redis-server)"
                )
            self.cluster.start()
        return self

    @property
    def url(self) -> str:
        if self.single is not None:
            return f"redis://127.0.0.1:{self.single.port}"
        assert self.cluster is not None
        return self.cluster.url

    def clients(self) -> list[redis.Redis]:
        """One client per primary."""
        if self.single is not None:
            return [redis.Redis(port=self.single.port, decode_responses=True, socket_timeout=10)]
        assert self.cluster is not None
        return [n.client() for n in self.cluster.primaries_now()]

    def pids(self) -> list[int]:
        if self.single is not None:
            assert self.single.proc is not None
            return [self.single.proc.pid]
        assert self.cluster is not None
        return [n.proc.pid for n in self.cluster.primaries_now() if n.proc is not None]

    def queue_lengths(self, pools: Sequence[str]) -> int:
        from o1sidecar.limits.keys import PoolKeys

        total = 0
        for client in self.clients():
            for pool in pools:
                with contextlib.suppress(redis.ResponseError):  # (MOVED: another primary's pool)
                    total += int(client.zcard(PoolKeys("o1pool", NAMESPACE, pool).queue(MODEL)))
        return total

    def flush(self) -> None:
        if self.single is not None:
            self.single.flush()
        elif self.cluster is not None:
            self.cluster.flush()

    def close(self) -> None:
        if not self.owned:
            return
        if self.single is not None:
            self.single.close()
        if self.cluster is not None:
            self.cluster.close()


# -- one cell ----------------------------------------------------------------------------------------


@dataclass
class CellResult:
    topology: str
    pools: int
    sidecars: int
    workers: int
    offered_rps: float
    requests: int  # arrived over the whole run
    outcomes: dict[str, int]
    lost: int  # requests with no outcome when the run ended
    admitted: int  # in the measured period
    utilisation: float  # admitted / (capacity x measured seconds), all pools
    attempts_per_s: float
    rtt_p50_ms: float  # admission decisions through Redis (shared mode), the measured period
    rtt_p99_ms: float
    rtt_max_ms: float
    wait_p50_s: float  # admitted requests' time in the queue, the measured period
    wait_p99_s: float
    waiters_mean: float  # tickets in the pools' queues, sampled each second
    waiters_max: int
    redis_cpu: float  # cores, summed over the primaries
    redis_cpu_busiest: float  # cores, the busiest primary
    client_cpu: float  # cores, the worker processes
    commands_per_s: float  # every command Redis ran, those inside the scripts included
    evalsha_per_s: float  # script calls: the limiter's round trips
    wakeups_per_s: float  # PUBLISH of a wake-up (naming a queue's head)
    evalsha_us: float  # Redis's own time per EVALSHA (INFO commandstats)
    connections: int  # clients connected, summed over the primaries (the most seen)
    loop_lag_p99_ms: float  # the workers' event loops
    local_attempts: int  # attempts made on local limits (Redis unreachable to a sidecar)
    switches: int  # failover switches (to local and back) during the run
    start_local: int  # limiters whose start timed out (local until their breaker let a probe through)
    checked: int  # admissions the checker read (the whole run)
    violations: list[str]
    most_in_window: dict[str, float]  # the busiest account's most requests in 60 s, in a burst, ...
    machine_cpu: float = math.nan  # cores busy on the whole machine (/proc/stat): ours and anyone's
    delivered_per_s: float = math.nan  # wake-up messages the sidecars received (counted where they arrive)

    @property
    def label(self) -> str:
        return f"{self.topology}, {self.pools} pool{'s' if self.pools > 1 else ''}"


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (every core, every process), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


def _info(clients: Sequence[redis.Redis]) -> tuple[int, float, float, int, float]:
    """Commands processed, EVALSHA calls and microseconds, connected clients, PUBLISH calls (from the
    scripts: wake-ups): summed over ``clients``."""
    commands, calls, usec, connected, published = 0, 0.0, 0.0, 0, 0.0
    for c in clients:
        info = c.info("all")
        commands += int(info.get("total_commands_processed", 0))
        connected += int(info.get("connected_clients", 0))
        evalsha = info.get("cmdstat_evalsha") or {}
        calls += float(evalsha.get("calls", 0))
        usec += float(evalsha.get("usec", 0))
        published += float((info.get("cmdstat_publish") or {}).get("calls", 0))
    return commands, calls, usec, connected, published


async def run_cell(
    settings: ScaleSettings,
    servers: Servers,
    sidecars: int,
    pools: int,
    *,
    log_dir: Path,
    progress: bool = False,
) -> CellResult:
    """``sidecars`` simulated sidecars over ``pools`` pools against ``servers`` (flushed first)."""
    servers.flush()
    names = pool_names(pools)
    per_pool = Counter(i % pools for i in range(sidecars))
    rate = settings.overload * settings.capacity_rps
    workers = max(1, min(settings.workers, sidecars))
    specs: list[dict[str, Any]] = [
        {
            "settings": asdict(settings),
            "url": servers.url,
            "cluster": servers.topology == "cluster",
            "pools": names,
            "worker": w,
            "sidecars": [],
        }
        for w in range(workers)
    ]
    for i in range(sidecars):
        specs[i % workers]["sidecars"].append([i % pools, rate / per_pool[i % pools]])
    procs = []
    outs: list[Path] = []
    logs: list[Any] = []
    try:
        for w, spec in enumerate(specs):
            path = log_dir / f"worker-{w}.json"
            spec_path = log_dir / f"spec-{w}.json"
            spec_path.write_text(json.dumps(spec))
            outs.append(path)
            logs.append(await asyncio.to_thread(open, log_dir / f"worker-{w}.log", "wb"))
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "o1pool.scalebench",
                    "worker",
                    str(spec_path),
                    str(path),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=logs[-1],
                )
            )
        started = time.monotonic()
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 300)
            if line.strip() != b"ready":
                raise RuntimeError(f"a scale bench worker did not start; see {log_dir}")
        if progress:
            print(f"    {sidecars} sidecars started in {time.monotonic() - started:.1f}s", flush=True)
        go = time.time() + 1.0
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"go {go!r}\n".encode())
            await proc.stdin.drain()
        measure_from = go + settings.warmup_s
        measure_to = measure_from + settings.measure_s
        await asyncio.sleep(max(0.0, measure_from - time.time()))
        clients = servers.clients()
        for c in clients:
            c.config_resetstat()
        pids = servers.pids()
        busy0 = _machine_busy_s()
        cpu0 = [cpu_seconds(p) for p in pids]
        work0 = [cpu_seconds(p.pid) for p in procs]
        wall0 = time.monotonic()
        waiters: list[int] = []
        connections = 0
        while time.time() < measure_to - 0.5:
            waiters.append(await asyncio.to_thread(servers.queue_lengths, names))
            connections = max(connections, (await asyncio.to_thread(_info, clients))[3])
            await asyncio.sleep(max(0.0, min(1.0, measure_to - time.time() - 0.5)))
        await asyncio.sleep(max(0.0, measure_to - time.time()))
        wall = time.monotonic() - wall0
        cpu = [(cpu_seconds(p) - c0) / wall for p, c0 in zip(pids, cpu0, strict=True)]
        gone = [p.pid for p in procs if p.returncode is not None]
        if gone:
            raise RuntimeError(f"scale bench worker(s) {gone} exited during the run; see {log_dir}")
        client_cpu = sum(cpu_seconds(p.pid) - w0 for p, w0 in zip(procs, work0, strict=True)) / wall
        machine_cpu = (_machine_busy_s() - busy0) / wall
        commands, calls, usec, _, published = await asyncio.to_thread(_info, clients)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            if line.strip() != b"done":
                await proc.wait()
                raise RuntimeError(f"a scale bench worker exited with {proc.returncode}; see {log_dir}")
            await proc.wait()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for log in logs:
            log.close()
    data = [json.loads(p.read_text()) for p in outs]
    return _result(
        settings,
        servers.topology,
        sidecars,
        names,
        workers,
        data,
        measure_from,
        measure_to,
        {
            "redis_cpu": sum(cpu),
            "redis_cpu_busiest": max(cpu),
            "client_cpu": client_cpu,
            "commands_per_s": commands / wall,
            "evalsha_per_s": calls / wall,
            "wakeups_per_s": published / wall,
            "evalsha_us": usec / calls if calls else math.nan,
            "connections": connections,
            "waiters": waiters,
            "machine_cpu": machine_cpu,
        },
    )


def _result(
    settings: ScaleSettings,
    topology: str,
    sidecars: int,
    names: list[str],
    workers: int,
    data: list[dict[str, Any]],
    measure_from: float,
    measure_to: float,
    server: dict[str, Any],
) -> CellResult:
    def measured(t: float) -> bool:
        return measure_from <= t < measure_to

    attempts = [a for d in data for a in d["attempts"]]
    shared_rtts = [a[1] * 1000 for a in attempts if measured(a[0]) and a[3]]
    admissions = [
        Admission(a[0], a[1], a[2], int(a[3]), a[4], bool(a[5])) for d in data for a in d["admissions"]
    ]
    requests = [r for d in data for r in d["requests"]]
    waits = [r[3] for r in requests if r[2] == "admitted" and measured(r[0] + r[3])]
    lag = [x[1] * 1000 for d in data for x in d["lag"] if measured(x[0])]
    limits = account_limits(settings, names)
    violations = check(admissions, limits)
    admitted = sum(measured(a.received) for a in admissions)
    seconds = measure_to - measure_from
    busiest: dict[str, float] = {}
    for account in limits:
        log = [a for a in admissions if a.account == account]
        for name, window in (("60 s", 60.0), ("burst", settings.burst_s)):
            busiest[name] = max(busiest.get(name, 0.0), max_in_window(log, window, _one)[0])
        busiest["concurrency"] = max(busiest.get("concurrency", 0.0), float(max_overlap(log)[0]))
    waiters: list[int] = server["waiters"]
    return CellResult(
        topology=topology,
        pools=len(names),
        sidecars=sidecars,
        workers=workers,
        offered_rps=settings.offered_rps(len(names)),
        requests=len(requests),
        outcomes=dict(Counter(r[2] for r in requests)),
        lost=sum(d["lost"] for d in data),
        admitted=admitted,
        utilisation=admitted / (settings.capacity_rps * len(names) * seconds),
        attempts_per_s=sum(measured(a[0]) for a in attempts) / seconds,
        rtt_p50_ms=percentile(shared_rtts, 0.5),
        rtt_p99_ms=percentile(shared_rtts, 0.99),
        rtt_max_ms=max(shared_rtts, default=math.nan),
        wait_p50_s=percentile(waits, 0.5),
        wait_p99_s=percentile(waits, 0.99),
        waiters_mean=statistics.fmean(waiters) if waiters else math.nan,
        waiters_max=max(waiters, default=0),
        redis_cpu=server["redis_cpu"],
        redis_cpu_busiest=server["redis_cpu_busiest"],
        client_cpu=server["client_cpu"],
        commands_per_s=server["commands_per_s"],
        evalsha_per_s=server["evalsha_per_s"],
        wakeups_per_s=server["wakeups_per_s"],
        evalsha_us=server["evalsha_us"],
        connections=server["connections"],
        loop_lag_p99_ms=percentile(lag, 0.99),
        local_attempts=sum(not a[3] for a in attempts),
        switches=sum(d["switches"] for d in data),
        start_local=sum(d["start_local"] for d in data),
        checked=len(admissions),
        violations=[str(v) for v in violations],
        most_in_window=busiest,
        machine_cpu=server["machine_cpu"],
        delivered_per_s=sum(len(d["woken"]) for d in data) / seconds,
    )


async def run_scale(
    settings: ScaleSettings, *, progress: bool = False, log_dir: Path | None = None
) -> list[CellResult]:
    """Every cell of ``settings``: by topology, then pools, then sidecars (servers started once per
    topology, flushed between cells)."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="o1pool-scale-"))
    results = []
    for topology in settings.topologies:
        servers = await asyncio.to_thread(Servers(topology).start)
        try:
            for pools in settings.pools:
                for sidecars in settings.sidecars:
                    if progress:
                        print(f"  {topology}, {pools} pool(s), {sidecars} sidecars ...", flush=True)
                    cell_dir = log_dir / f"{topology}-{pools}-{sidecars}"
                    cell_dir.mkdir(parents=True, exist_ok=True)
                    result = await run_cell(
                        settings, servers, sidecars, pools, log_dir=cell_dir, progress=progress
                    )
                    results.append(result)
                    if progress:
                        print(_one_line(result), flush=True)
        finally:
            await asyncio.to_thread(servers.close)
    return results


def _one_line(r: CellResult) -> str:
    return (
        f"    admission p50/p99 {r.rtt_p50_ms:.2f}/{r.rtt_p99_ms:.1f} ms, Redis {r.redis_cpu:.2f} cores, "
        f"clients {r.client_cpu:.2f} cores, {r.waiters_max} waiters, use {r.utilisation:.0%}, "
        f"{len(r.violations)} violations, {r.local_attempts} local attempts"
    )


# -- reporting ---------------------------------------------------------------------------------------


def scale_table(results: Sequence[CellResult]) -> str:
    """Latency, load and correctness of every cell, as a markdown table."""
    rows = [
        (
            r.label,
            r.sidecars,
            f"{r.rtt_p50_ms:.2f}",
            f"{r.rtt_p99_ms:.1f}",
            f"{r.wait_p50_s:.1f}",
            f"{r.wait_p99_s:.1f}",
            f"{r.waiters_mean:.0f}",
            f"{r.redis_cpu:.2f}",
            f"{r.redis_cpu_busiest:.2f}",
            f"{r.client_cpu:.2f}",
            f"{r.machine_cpu:.2f}",
            f"{r.evalsha_per_s:,.0f}",
            f"{r.evalsha_us:.0f}",
            f"{r.commands_per_s:,.0f}",
            f"{r.wakeups_per_s:,.0f}",
            f"{r.delivered_per_s:,.0f}",
            r.connections,
            f"{r.loop_lag_p99_ms:.0f}",
            f"{r.utilisation:.0%}",
            r.local_attempts,
            len(r.violations),
        )
        for r in results
    ]
    return _markdown(
        [
            "Redis, pools",
            "sidecars",
            "admission p50 ms",
            "admission p99 ms",
            "queue wait p50 s",
            "queue wait p99 s",
            "waiters",
            "Redis CPU cores",
            "busiest primary",
            "client CPU cores",
            "machine busy cores",
            "EVALSHA/s",
            "µs/EVALSHA",
            "commands/s in all",
            "wake-ups/s",
            "delivered/s",
            "connections",
            "loop lag p99 ms",
            "use of capacity",
            "local attempts",
            "violations",
        ],
        rows,
    )


def outcome_table(results: Sequence[CellResult]) -> str:
    """What became of every request, and what the checker saw."""
    rows = []
    for r in results:
        o = r.outcomes
        others = sum(v for k, v in o.items() if k not in ("admitted", "timed out", "handed back"))
        rows.append(
            (
                r.label,
                r.sidecars,
                r.requests,
                o.get("admitted", 0),
                o.get("timed out", 0),
                o.get("handed back", 0),
                others,
                r.lost,
                r.checked,
                f"{r.most_in_window.get('60 s', 0):.0f}",
                f"{r.most_in_window.get('burst', 0):.0f}",
                f"{r.most_in_window.get('concurrency', 0):.0f}",
                "; ".join(r.violations[:3]) or "none",
            )
        )
    return _markdown(
        [
            "Redis, pools",
            "sidecars",
            "requests",
            "admitted",
            "timed out",
            "handed back at the end",
            "refused/errors",
            "no outcome",
            "admissions checked",
            "most in 60 s (one account)",
            "most in 1 s",
            "most in flight",
            "limits exceeded",
        ],
        rows,
    )


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """``loadgen.table``'s columns as a markdown table (a ``|`` on each side, ``---`` under the headers)."""
    lines = table(headers, rows).splitlines()
    widths = [len(part) for part in lines[1].split("  ")]
    out = []
    for i, line in enumerate(lines):
        cells, at = [], 0
        for w in widths:
            cells.append(line[at : at + w])
            at += w + 2
        out.append("| " + " | ".join(cells) + " |")
        if i == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(o for i, o in enumerate(out) if i != 2)


def write_scale_plot(path: Path, results: Sequence[CellResult]) -> Path:
    """Admission p50/p99 and Redis CPU against simulated sidecars, one line per Redis and pool count."""
    from o1pool.plots import _pyplot, _save

    plt = _pyplot()
    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(12, 4.6))
    labels = sorted({r.label for r in results}, key=lambda x: (x.split(",")[0], x))
    for i, label in enumerate(labels):
        rows = sorted((r for r in results if r.label == label), key=lambda r: r.sidecars)
        xs = [r.sidecars for r in rows]
        color = f"C{i}"
        lat.plot(xs, [r.rtt_p99_ms for r in rows], "o-", color=color, label=f"{label}: p99")
        lat.plot(xs, [r.rtt_p50_ms for r in rows], "o:", color=color, label=f"{label}: p50")
        cpu.plot(xs, [r.redis_cpu for r in rows], "o-", color=color, label=f"{label}: Redis, all primaries")
        if label.startswith("cluster"):
            cpu.plot(
                xs, [r.redis_cpu_busiest for r in rows], "s--", color=color, label=f"{label}: busiest primary"
            )
    for ax in (lat, cpu):
        ax.set_xscale("log")
        ax.set_xlabel("simulated sidecars (log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    lat.set_yscale("log")
    lat.axhline(5.0, color="grey", linewidth=0.8, linestyle="--")
    lat.set_ylabel("admission decision round trip, ms (log)")
    lat.set_title("admission decisions (dashed: the 5 ms target)")
    cpu.set_ylabel("redis-server CPU, cores")
    cpu.set_title("Redis CPU (2 shared cores, clients included)")
    return _save(fig, path)


def save_results(path: Path, results: Sequence[CellResult]) -> None:
    path.write_text(json.dumps([asdict(r) for r in results], indent=1))


def load_results(path: Path) -> list[CellResult]:
    return [CellResult(**r) for r in json.loads(path.read_text())]


def main(argv: list[str] | None = None) -> int:
    """``python -m o1pool.scalebench worker SPEC OUT`` (a worker process), or a part of the run:
    ``python -m o1pool.scalebench run --topology single --pools 1 --json out.json``, and
    ``python -m o1pool.scalebench report a.json b.json ... [--plot PNG]`` to print the tables of
    parts run one by one."""
    parser = argparse.ArgumentParser(prog="python -m o1pool.scalebench")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker")
    w.add_argument("spec", type=Path)
    w.add_argument("out", type=Path)
    r = sub.add_parser("run")
    r.add_argument("--topology", action="append", choices=["single", "cluster"])
    r.add_argument("--pools", type=int, action="append")
    r.add_argument("--sidecars", type=int, action="append")
    r.add_argument("--json", type=Path, required=True)
    rep = sub.add_parser("report")
    rep.add_argument("parts", type=Path, nargs="+")
    rep.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    if args.command == "worker":
        _run_loop(worker(json.loads(args.spec.read_text()), args.out))
        return 0
    if args.command == "run":
        settings = ScaleSettings()
        if args.topology:
            settings = _replace(settings, topologies=tuple(args.topology))
        if args.pools:
            settings = _replace(settings, pools=tuple(args.pools))
        if args.sidecars:
            settings = _replace(settings, sidecars=tuple(args.sidecars))
        print(f"(f) scale: {settings.describe()}", flush=True)
        results = asyncio.run(run_scale(settings, progress=True))
        save_results(args.json, results)
        print(scale_table(results))
        return 0
    results = [r for part in args.parts for r in load_results(part)]
    print(scale_table(results))
    print()
    print(outcome_table(results))
    if args.plot:
        print(f"plot: {write_scale_plot(args.plot, results)}")
    return 0


def _replace(settings: ScaleSettings, **changes: Any) -> ScaleSettings:
    from dataclasses import replace

    return replace(settings, **changes)


def _run_loop(coro: Any) -> None:
    """On uvloop when installed, as the sidecar runs (``o1pool sidecar --loop auto``)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


if __name__ == "__main__":
    os.environ.setdefault("UNUSED_KEY", "sk-scale-bench")
    sys.exit(main())
