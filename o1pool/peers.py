"""``o1pool bench --peers litellm``: another proxy beside the sidecar, on the same emulator and load.

LiteLLM's proxy is installed into a virtual environment of its own (``~/.cache/o1pool/peers/``, a
pinned version, reused once made) and configured from the same pool description the sidecars get:
one deployment per account of the emulator, each with its account's key (an ``os.environ/...``
reference: no key is written to a file) and its RPM/TPM, ``usage-based-routing-v2`` with the
instances' usage shared through the same redis-server. No database, no logging callbacks, and
nothing downloaded at run time (the model cost map is the package's own copy).

Two parts use it: a fourth path in the latency comparison (b), and the quota scenario (g): four
o1pool sidecars, then four LiteLLM instances (without and with LiteLLM's ``priority`` field), each on
a fresh emulator of two accounts at 3x overload, judged by the emulator's counters. LiteLLM runs with
no client authentication (``LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY``), as the bench's
sidecar has none. Configuration and results: docs/performance.md, "Peers: LiteLLM".
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from o1pool.loadgen import Outcome, Planned, chat_body, drive, plan_arrivals, table
from o1pool.procs import RedisServer, free_port
from o1pool.queuebench import PRIORITIES, QueueSettings
from o1pool.scenarios import (
    DEFAULT_LAYOUT,
    MODEL,
    Cluster,
    ExtraTargets,
    LatencyRow,
    Layout,
    cluster,
    emulator_config,
    emulator_stats,
)

PEERS = ("litellm",)
LITELLM_VERSION = "1.110.2"
# ``litellm[proxy]==1.110.2`` does not resolve on this machine's registry: the extra pins
# ``litellm-proxy==1.110.2``, ``litellm-proxy-extras==0.4.114.post1`` and
# ``litellm-enterprise==0.1.83.post1``, which it does not carry. The proxy's code ships in the
# ``litellm`` wheel itself, so the extra's other requirements are listed here (its version ranges),
# with the nearest published proxy-extras and enterprise releases, and ``redis`` for the router's
# shared usage (also a dependency of ``rq``).
LITELLM_REQUIREMENTS: tuple[str, ...] = (
    f"litellm=={LITELLM_VERSION}",
    "uvicorn>=0.33.0,<1.0",
    "gunicorn>=23.0.0,<24.0",
    "uvloop>=0.22.1,<1.0",
    "fastapi>=0.136.3,<1.0",
    "starlette>=1.0.1,<2.0",
    "backoff>=2.2.1,<3.0",
    "rq>=2.7.0,<3.0",
    "orjson>=3.11.6,<4.0",
    "hiredis>=3.0.0,<4.0",
    "apscheduler>=3.11.2,<4.0",
    "fastapi-sso>=0.19.0,<1.0",
    "pyjwt>=2.13.0,<3.0",
    "python-multipart>=0.0.27,<1.0",
    "cryptography>=49.0.0,<51.0",
    "pynacl>=1.6.2,<2.0",
    "websockets>=15.0.1,<16.0",
    "azure-identity>=1.25.2,<2.0",
    "azure-storage-blob>=12.28.0,<13.0",
    "mcp>=2.3.0,<3",
    "httpx2>=2.10.0,<3",
    "litellm-proxy-extras==0.4.110",
    "litellm-enterprise==0.1.83",
    "restrictedpython>=8.5,<9.0",
    "rich>=13.9.4,<14.0",
    "inquirerpy>=0.3.4,<1.0",
    "tomlkit>=0.13.3,<1.0",
    "polars>=1.38.1,<2.0",
    "soundfile>=0.12.1,<1.0",
    "pyroscope-io>=0.8.16,<1.0",
    "expression>=5.6.0,<6.0",
    "backports-zstd>=1.0.0,<2.0",
    "semver>=3.0.4,<4",
    "redis",
)
# Keeps LiteLLM offline and quiet: the model cost map from the package (not GitHub), no other
# catalog, tokenizer or telemetry fetched, errors only in its log, no Hugging Face downloads.
LITELLM_ENV: dict[str, str] = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_LOG": "ERROR",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    # No client authentication, as the sidecar on loopback has none: LiteLLM refuses to start without
    # a master key unless told this is meant (a master key would add its check to every request).
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
}
TIMEOUT_S = 15  # the router's call timeout: the sidecars' queue deadline in the quota scenario
NUM_RETRIES = 2  # LiteLLM's default: a failed call (an upstream 429) is tried again on a deployment


def peer_home(version: str = LITELLM_VERSION, cache: Path | None = None) -> Path:
    base = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "o1pool" / "peers" / f"litellm-{version}"


def base_python() -> str:
    """The interpreter a new venv is made from (this one's base, not this venv's)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def venv_command(home: Path, python: str | None = None) -> list[str]:
    return [python or base_python(), "-m", "venv", str(home)]


def install_command(home: Path, requirements: Sequence[str] = LITELLM_REQUIREMENTS) -> list[str]:
    return [
        str(home / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        *requirements,
    ]


class PeerInstallError(RuntimeError):
    pass


def _marker(home: Path) -> Path:
    return home / ".o1pool-installed"


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise PeerInstallError(f"installing LiteLLM failed ({done.returncode}): {' '.join(command)}\n{tail}")


def ensure_litellm(home: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """The ``litellm`` executable of the pinned version's venv, made (``python -m venv``, pip) when it
    is not there yet; raises PeerInstallError with the command and pip's last lines if that fails."""
    home = home or peer_home()
    binary = home / "bin" / "litellm"
    wanted = "\n".join(LITELLM_REQUIREMENTS)
    if binary.exists() and _marker(home).exists() and _marker(home).read_text() == wanted:
        return binary
    log(f"  installing LiteLLM {LITELLM_VERSION} into {home} (once; a few minutes) ...")
    if not (home / "bin" / "python").exists():
        home.parent.mkdir(parents=True, exist_ok=True)
        _run(venv_command(home))
    _run(install_command(home))
    if not binary.exists():
        raise PeerInstallError(f"installed, but there is no {binary}")
    _marker(home).write_text(wanted)
    return binary


# --- configuration -------------------------------------------------------------------------------


def litellm_config(
    emulator_url: str,
    layout: Layout,
    limits: Mapping[str, int],
    redis_host: str,
    redis_port: int,
    *,
    timeout_s: float = TIMEOUT_S,
    num_retries: int = NUM_RETRIES,
) -> dict[str, Any]:
    """LiteLLM's proxy config for ``layout``'s pool on the emulator: one deployment of the model per
    account (its first key, by environment reference; its RPM and TPM), routed by usage that the
    instances share through Redis. Nothing that writes, logs or calls anywhere else."""
    deployments = []
    for account, keys in layout.accounts:
        deployments.append(
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": emulator_url.rstrip("/") + "/v1",
                    "api_key": f"os.environ/{layout.key_env(account, keys[0])}",
                    "rpm": int(limits["rpm"]),
                    "tpm": int(limits["tpm"]),
                },
                "model_info": {"id": account},
            }
        )
    return {
        "model_list": deployments,
        "router_settings": {
            "routing_strategy": "usage-based-routing-v2",
            "redis_host": redis_host,
            "redis_port": redis_port,
            "num_retries": num_retries,
            "timeout": timeout_s,
        },
        "litellm_settings": {
            "request_timeout": timeout_s,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "turn_off_message_logging": True,
            "cache": False,
            "telemetry": False,
        },
        "general_settings": {
            "disable_spend_logs": True,
            "disable_error_logs": True,
            "background_health_checks": False,
        },
    }


def render_config(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False)


def launch_command(binary: Path, config_path: Path, port: int) -> list[str]:
    return [
        str(binary),
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]


def launch_env(layout: Layout, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment: the accounts' keys (the config refers to them) and ``LITELLM_ENV``."""
    env = dict(os.environ if base is None else base)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "DATABASE_URL"):
        env.pop(name, None)
    return {**env, **layout.env(), **LITELLM_ENV}


def start_litellm(
    binary: Path,
    emulator_url: str,
    layout: Layout,
    limits: Mapping[str, int],
    redis: RedisServer,
    workdir: Path,
    name: str = "litellm",
) -> tuple[subprocess.Popen[bytes], int]:
    """One LiteLLM proxy process (not yet ready: see ``wait_ready``) and its port. Its config holds
    no key; it is written 0600 all the same."""
    port = free_port()
    path = workdir / f"{name}.yaml"
    path.write_text(render_config(litellm_config(emulator_url, layout, limits, "127.0.0.1", redis.port)))
    path.chmod(0o600)
    with open(workdir / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(
            launch_command(binary, path, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=launch_env(layout),
            cwd=workdir,
        )
    return proc, port


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    """Poll LiteLLM's readiness endpoint until it answers 200."""
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}/health/readiness"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"LiteLLM exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"LiteLLM was not ready on port {port} within {timeout_s:.0f} s")


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a live process and its live descendants (a LiteLLM worker may be a child)."""
    from o1pool.procs import cpu_seconds

    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def latency_peer(binary: Path, redis: RedisServer) -> ExtraTargets:
    """``run_latency``'s hook: a LiteLLM beside the latency cluster's sidecar, of the same pool (its
    accounts and limits) and on the same Redis."""

    def start(c: Cluster, limits: dict[str, int]) -> dict[str, tuple[str, dict[str, str], int]]:
        proc, port = start_litellm(binary, c.emulator_url, DEFAULT_LAYOUT, limits, redis, c.workdir)
        c.procs.append(proc)
        wait_ready(port, proc)
        return {f"LiteLLM {LITELLM_VERSION}": (f"http://127.0.0.1:{port}/v1", {}, proc.pid)}

    return start


# --- the latency comparison: ratios ---------------------------------------------------------------

PEER_RATES = (20.0, 100.0, 300.0)  # (b) with --only-peers
TARGET_RATIO = 15.0  # the issue's: >= 15x less CPU per request and >= 15x lower added p99 than LiteLLM


def peer_ratios(rows: Sequence[LatencyRow], peer: str, ours: str = "o1pool sidecar") -> tuple[float, float]:
    """(peer's CPU per call / ours, peer's added p99 / ours) from one latency run's rows."""
    direct = rows[0]
    by_name = {r.target: r for r in rows}
    theirs, mine = by_name[peer], by_name[ours]
    cpu = theirs.cpu_us_per_call() / mine.cpu_us_per_call() if mine.cpu_s else math.nan
    added_mine = mine.p(0.99) - direct.p(0.99)
    added_theirs = theirs.p(0.99) - direct.p(0.99)
    return cpu, (added_theirs / added_mine if added_mine > 0 else math.nan)


# --- the quota scenario ---------------------------------------------------------------------------


@dataclass
class QuotaRun:
    proxy: str
    instances: int
    measure_s: float
    capacity_calls: float  # what the accounts allow in the measured period
    admitted: int  # upstream calls answered, measured period
    upstream_429s: int
    outcomes: list[Outcome]  # client requests planned in the measured period
    cpu_s: list[float] = field(default_factory=list)  # per instance, measured period

    @property
    def upstream_calls(self) -> int:
        return self.admitted + self.upstream_429s

    @property
    def utilisation(self) -> float:
        return self.admitted / self.capacity_calls if self.capacity_calls else math.nan

    def by_priority(self, priority: int) -> tuple[int, int, int]:
        """(answered, refused with 429, errors) of the client's requests at ``priority``."""
        group = [o for o in self.outcomes if o.planned.priority == priority]
        ok = sum(o.status == 200 for o in group)
        refused = sum(o.status == 429 for o in group)
        return ok, refused, len(group) - ok - refused

    def cpu_ms_per_request(self) -> float:
        return sum(self.cpu_s) / len(self.outcomes) * 1000 if self.outcomes else math.nan


def _calls(stats: dict[str, Any]) -> tuple[int, int]:
    models = [a["models"][MODEL] for a in stats["accounts"].values()]
    return sum(m["admitted"] for m in models), sum(m["rejected_total"] for m in models)


def quota_body(planned: Planned, sender: str, litellm_priority: bool) -> dict[str, object]:
    body = chat_body(planned, MODEL, max_tokens=QueueSettings.max_tokens, sender=sender)
    if litellm_priority:
        # LiteLLM's scheduler: 0 is the highest priority; o1pool's 8 (high) is LiteLLM's 2.
        body["extra_body"] = {"priority": 10 - planned.priority}
    return body


async def run_quota(
    settings: QueueSettings,
    redis: RedisServer,
    litellm: Path | None = None,
    *,
    litellm_priority: bool = False,
    progress: bool = False,
) -> QuotaRun:
    """``settings.sidecars`` o1pool sidecars (``litellm`` None) or as many LiteLLM instances, on a
    fresh emulator of two accounts and a flushed Redis, under the queue bench's load (its priorities,
    overload and first deadline); the emulator's counters and /proc judge the measured period."""
    redis.flush()
    layout = Layout(pool="peers")
    tpm = 100 * settings.rpm * 1000
    emu_cfg = emulator_config(settings.rpm, tpm, settings.latency_scale, layout=layout)
    limits = {"rpm": settings.rpm, "tpm": tpm}
    sidecars = 0 if litellm is not None else settings.sidecars
    name = "o1pool sidecar" if litellm is None else f"LiteLLM {LITELLM_VERSION}"
    if litellm is not None and litellm_priority:
        name += " + priority"
    headers = {"x-o1pool-deadline-ms": str(settings.deadlines_ms[0])}
    plan = plan_arrivals(settings.offered_rps, settings.warmup_s + settings.measure_s, PRIORITIES)
    with cluster(emu_cfg, sidecars, limits, redis, layout=layout) as c:
        urls, pids = list(c.sidecar_urls), [p.pid for p in c.procs[1:]]
        if litellm is not None:
            started = [
                start_litellm(litellm, c.emulator_url, layout, limits, redis, c.workdir, f"litellm-{i}")
                for i in range(settings.sidecars)
            ]
            c.procs += [proc for proc, _ in started]
            for proc, port in started:
                wait_ready(port, proc)
            urls = [f"http://127.0.0.1:{port}/v1" for _, port in started]
            pids = [proc.pid for proc, _ in started]
        if progress:
            print(f"  {name}: {len(urls)} instances ready, load for {plan[-1].at_s:.0f} s ...", flush=True)

        async def window() -> tuple[tuple[int, int], tuple[int, int], list[float]]:
            await asyncio.sleep(settings.warmup_s)
            cpu = [tree_cpu_seconds(p) for p in pids]
            before = _calls(await emulator_stats(c.emulator_url))
            await asyncio.sleep(settings.measure_s)
            after = _calls(await emulator_stats(c.emulator_url))
            return before, after, [tree_cpu_seconds(p) - was for p, was in zip(pids, cpu, strict=True)]

        measuring = asyncio.create_task(window())
        outcomes = await drive(
            urls,
            plan,
            lambda p: quota_body(p, name, litellm is not None and litellm_priority),
            headers_for=lambda _p: headers,
            client="openai",
        )
        before, after, cpu_s = await measuring
    measured = [
        o for o in outcomes if settings.warmup_s <= o.planned.at_s < settings.warmup_s + settings.measure_s
    ]
    return QuotaRun(
        name,
        len(urls),
        settings.measure_s,
        settings.rpm * settings.accounts * settings.measure_s / 60,
        after[0] - before[0],
        after[1] - before[1],
        measured,
        cpu_s,
    )


def quota_table(runs: Sequence[QuotaRun]) -> str:
    rows = []
    for r in runs:
        rows.append(
            (
                r.proxy,
                r.instances,
                r.upstream_calls,
                r.upstream_429s,
                f"{r.utilisation:.1%}",
                *("{} / {} / {}".format(*r.by_priority(p)) for p, _ in sorted(PRIORITIES, reverse=True)),
                " ".join(f"{s:.1f}" for s in r.cpu_s),
                r.cpu_ms_per_request(),
            )
        )
    return table(
        (
            "proxy",
            "instances",
            "upstream calls",
            "upstream 429s",
            "utilisation",
            *(f"p{p} answered / refused / errors" for p, _ in sorted(PRIORITIES, reverse=True)),
            "CPU s per instance",
            "CPU ms/request",
        ),
        rows,
    )


def quota_settings() -> QueueSettings:
    """The quota scenario: the queue bench's instances, accounts, load and first deadline (4 instances,
    2 accounts x 300 RPM, 3x overload, priorities 2/5/8, 15 s), with a 60 s warm-up: the emulator's
    token bucket starts full (a minute's burst), which a proxy that does not pace spends in the first
    seconds; after a minute of 3x overload, the measured period sees the bucket's refill."""
    return QueueSettings(warmup_s=60.0, measure_s=60.0)


async def run_peer_quota(
    settings: QueueSettings,
    redis: RedisServer,
    litellm: Path,
    *,
    with_priority: bool = True,
    progress: bool = False,
) -> list[QuotaRun]:
    """The quota scenario for o1pool's sidecars, then LiteLLM's instances (and, ``with_priority``,
    LiteLLM again with its ``priority`` request field), one after another on identical setups."""
    runs = [await run_quota(settings, redis, None, progress=progress)]
    runs.append(await run_quota(settings, redis, litellm, progress=progress))
    if with_priority:
        runs.append(await run_quota(settings, redis, litellm, litellm_priority=True, progress=progress))
    return runs


def peer_summary(rows: Sequence[LatencyRow], ours: str = "o1pool sidecar") -> str:
    """One line per peer in ``rows``: its CPU per call and added p99 over the sidecar's."""
    known = {"direct", ours} | {r.target for r in rows if r.target.startswith("bare")}
    lines = []
    for row in rows:
        if row.target in known:
            continue
        cpu, p99 = peer_ratios(rows, row.target, ours)
        verdict = "met" if cpu >= TARGET_RATIO and p99 >= TARGET_RATIO else "not met"
        lines.append(
            f"{row.target} / {ours}: CPU per call {cpu:.1f}x, added p99 {p99:.1f}x "
            f"(target >= {TARGET_RATIO:g}x each: {verdict})"
        )
    return "\n".join(lines)
