"""Multi-process scenarios shared by the benchmark and the load tests.

Every server runs as its own process, as in a cluster: the emulator, redis-server, N sidecars (and
for the latency comparison a bare pass-through proxy). The load comes from this process.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from o1pool.loadgen import Planned, chat_body, drive, percentile, plan_arrivals
from o1pool.procs import RedisServer, cpu_seconds, free_port, spawn_module, stop_all, wait_for_port

MODEL = "o1-mini"


@dataclass(frozen=True)
class Layout:
    """The accounts (name -> key names) that the emulator knows and the sidecars use, and the pool."""

    accounts: tuple[tuple[str, tuple[str, ...]], ...] = (("acct-a", ("k1",)), ("acct-b", ("k1",)))
    pool: str = "bench"

    def key_value(self, account: str, key: str) -> str:
        return f"sk-{self.pool}-{account}-{key}"

    def key_env(self, account: str, key: str) -> str:
        return f"O1POOL_KEY_{account}_{key}".upper().replace("-", "_")

    def env(self) -> dict[str, str]:
        return {self.key_env(a, k): self.key_value(a, k) for a, keys in self.accounts for k in keys}


DEFAULT_LAYOUT = Layout()
ACCOUNTS = tuple(name for name, _ in DEFAULT_LAYOUT.accounts)


@dataclass
class Cluster:
    """Running processes and where they listen."""

    workdir: Path
    emulator_url: str
    sidecar_urls: list[str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.workdir.glob("*.log")))


def emulator_config(
    rpm: int,
    tpm: int,
    latency_scale: float,
    *,
    concurrency: int | None = None,
    layout: Layout = DEFAULT_LAYOUT,
    **extra: Any,
) -> dict[str, Any]:
    """One model on every account of ``layout``; ``extra`` adds top-level fields (limiter, tokens)."""
    from o1emulator.config import DEFAULT_CONFIG

    limits: dict[str, Any] = {"rpm": rpm, "tpm": tpm}
    if concurrency:
        limits["concurrency"] = concurrency
    return {
        "latency_scale": latency_scale,
        "models": {MODEL: DEFAULT_CONFIG["models"][MODEL]},
        "accounts": [
            {
                "name": a,
                "keys": [{"name": k, "key": layout.key_value(a, k)} for k in keys],
                "models": {MODEL: limits},
            }
            for a, keys in layout.accounts
        ],
        **extra,
    }


def sidecar_config(
    emulator_url: str,
    port: int,
    metrics_port: int,
    redis_url: str | None,
    limits: dict[str, Any],
    cache: bool,
    layout: Layout = DEFAULT_LAYOUT,
    extra: dict[str, Any] | None = None,
    account_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A sidecar of ``layout``'s pool; ``extra`` adds or replaces top-level sections, ``account_extra``
    fields of every account."""
    return {
        "pool": {"name": layout.pool, "namespace": "default"},
        "listen": {"host": "127.0.0.1", "port": port},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "redis": {"url": redis_url} if redis_url else {},
        "cache": {"enabled": cache},
        "accounts": [
            {
                "name": a,
                "base_url": emulator_url + "/v1",
                "models": {MODEL: limits},
                "keys": [{"name": k, "env": layout.key_env(a, k)} for k in keys],
                **(account_extra or {}),
            }
            for a, keys in layout.accounts
        ],
        **(extra or {}),
    }


KEY_ENV = DEFAULT_LAYOUT.env()


@contextmanager
def cluster(
    emulator_cfg: dict[str, Any],
    sidecars: int,
    sidecar_limits: dict[str, Any],
    redis: RedisServer | None,
    cache: bool = False,
    layout: Layout = DEFAULT_LAYOUT,
    sidecar_extra: dict[str, Any] | None = None,
    account_extra: dict[str, Any] | None = None,
    sidecar_env: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    """Start the emulator and ``sidecars`` sidecar processes (with ``sidecar_env`` added to their
    environment); stop them all on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="o1pool-scenario-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        (workdir / "emulator.yaml").write_text(yaml.safe_dump(emulator_cfg))
        emu_port = free_port()
        emu = spawn_module(
            "o1pool.cli",
            "emulator",
            "--config",
            str(workdir / "emulator.yaml"),
            "--port",
            str(emu_port),
            log=workdir / "emulator.log",
        )
        procs.append(emu)
        wait_for_port(emu_port, proc=emu)
        emulator_url = f"http://127.0.0.1:{emu_port}"
        urls = []
        for i in range(sidecars):
            port, metrics_port = free_port(), free_port()
            cfg = sidecar_config(
                emulator_url,
                port,
                metrics_port,
                redis.url if redis else None,
                sidecar_limits,
                cache,
                layout,
                sidecar_extra,
                account_extra,
            )
            path = workdir / f"sidecar-{i}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            proc = spawn_module(
                "o1pool.cli",
                "sidecar",
                "--config",
                str(path),
                log=workdir / f"sidecar-{i}.log",
                env={**layout.env(), **(sidecar_env or {})},
            )
            procs.append(proc)
            urls.append((port, proc))
        for port, proc in urls:
            wait_for_port(port, proc=proc)
        yield Cluster(workdir, emulator_url, [f"http://127.0.0.1:{p}/v1" for p, _ in urls], procs)
    finally:
        stop_all(procs)
        shutil.rmtree(workdir, ignore_errors=True)


async def emulator_stats(
    url: str, attempts: int = 3, session: aiohttp.ClientSession | None = None
) -> dict[str, Any]:
    """The emulator's counters (``GET /admin/stats``), on ``session`` when given (a kept-alive
    connection: no new connect at a measurement's edge). A connection not made within 10 s is tried
    again (twice): with a dozen processes on two cores, a connect can lose its first SYNs for a while."""
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
    for attempt in range(attempts):
        try:
            if session is not None:
                async with session.get(url + "/admin/stats", timeout=timeout) as resp:
                    return dict(await resp.json())
            async with (
                aiohttp.ClientSession(timeout=timeout) as fresh,
                fresh.get(url + "/admin/stats") as resp,
            ):
                return dict(await resp.json())
        except aiohttp.ClientConnectionError:
            if attempt + 1 == attempts:
                raise
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


# --- added latency at a fixed rate --------------------------------------------------------------


@dataclass(frozen=True)
class LatencySettings:
    rate_rps: float = 300.0
    duration_s: float = 10.0
    rounds: int = 2


@dataclass
class LatencyRow:
    target: str
    latencies_s: list[float]
    errors: int
    cpu_s: float = 0.0  # the proxy process's CPU over the measured calls (0 for direct)
    redis_cpu_s: float = 0.0  # redis-server's CPU over them

    def p(self, q: float) -> float:
        return percentile(self.latencies_s, q)

    def cpu_us_per_call(self) -> float:
        return self.cpu_s / max(1, len(self.latencies_s) + self.errors) * 1e6

    def redis_cpu_us_per_call(self) -> float:
        return self.redis_cpu_s / max(1, len(self.latencies_s) + self.errors) * 1e6


async def _measure(
    url: str, settings: LatencySettings, headers: dict[str, str], sender: str = ""
) -> tuple[list[float], int]:
    """``sender`` tells this run's requests from every other run's: none repeats an earlier one, so
    the sidecar's cache answers none of them (each takes the whole path: admission, upstream call)."""
    plan = plan_arrivals(settings.rate_rps, settings.duration_s, ((5, 1.0),), seed=7)

    def body(p: Planned) -> dict[str, object]:
        return chat_body(p, MODEL, max_tokens=16, sender=sender)

    outcomes = await drive([url], plan, body, headers_for=lambda _p: headers)
    return [o.latency_s for o in outcomes if o.status == 200], sum(o.status != 200 for o in outcomes)


# Starts other proxies in a latency cluster (given its sidecars' limits): name -> (base URL, headers, pid)
ExtraTargets = Callable[[Cluster, dict[str, int]], dict[str, tuple[str, dict[str, str], int]]]


async def run_latency(
    settings: LatencySettings, redis: RedisServer, extra: ExtraTargets | None = None
) -> list[LatencyRow]:
    """Latency at ``rate_rps`` to the emulator directly, through a bare proxy, through a sidecar (and
    ``extra``'s proxies, o1pool/peers.py); and the CPU each proxy process (and redis-server) spent on
    the measured calls."""
    big = 10_000_000
    emu_cfg = emulator_config(big, big * 100, latency_scale=0.0)
    rows = {name: LatencyRow(name, [], 0) for name in ("direct", "bare aiohttp proxy", "o1pool sidecar")}
    api_key = DEFAULT_LAYOUT.key_value("acct-a", "k1")
    with cluster(emu_cfg, 1, {"rpm": big, "tpm": big * 100}, redis, cache=True) as c:
        bare_port = free_port()
        bare = spawn_module(
            "o1pool.passthrough",
            "--upstream",
            c.emulator_url + "/v1",
            "--api-key",
            api_key,
            "--port",
            str(bare_port),
            log=c.workdir / "bare.log",
        )
        c.procs.append(bare)
        wait_for_port(bare_port, proc=bare)
        targets = {
            "direct": (c.emulator_url + "/v1", {"authorization": f"Bearer {api_key}"}),
            "bare aiohttp proxy": (f"http://127.0.0.1:{bare_port}/v1", {}),
            "o1pool sidecar": (c.sidecar_urls[0], {}),
        }
        pids = {"direct": None, "bare aiohttp proxy": bare.pid, "o1pool sidecar": c.procs[1].pid}
        others = extra(c, {"rpm": big, "tpm": big * 100}) if extra else {}
        for name, (url, headers, other) in others.items():
            targets[name], pids[name], rows[name] = (url, headers), other, LatencyRow(name, [], 0)
        redis_pid = redis.proc.pid if redis.proc is not None else None
        warm = LatencySettings(rate_rps=settings.rate_rps, duration_s=1.0)
        for name, (url, headers) in targets.items():
            await _measure(url, warm, headers, sender=f"warm-up {name} ")
        for round_ in range(settings.rounds):
            for name, (url, headers) in targets.items():
                pid = pids[name]
                cpu = cpu_seconds(pid) if pid is not None else 0.0
                redis_cpu = cpu_seconds(redis_pid) if redis_pid is not None else 0.0
                latencies, errors = await _measure(url, settings, headers, sender=f"round {round_} {name} ")
                if pid is not None:
                    rows[name].cpu_s += cpu_seconds(pid) - cpu
                if redis_pid is not None:
                    rows[name].redis_cpu_s += cpu_seconds(redis_pid) - redis_cpu
                rows[name].latencies_s += latencies
                rows[name].errors += errors
    return list(rows.values())
