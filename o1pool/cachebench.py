"""``o1pool bench`` (c): the response cache, layer by layer, side by side in one run.

- Hits: one sidecar process per layer (L1 memory; L2 Redis with L1 off; L3 the pool's cache service
  with L1 and L2 off; the service's semantic layer, asked the same questions in other words) answers a
  closed loop of cacheable requests. Reported: hits per second, and the sidecar's own CPU per hit
  (from ``/proc``), so "hits per second on one core" does not depend on how fast this machine's load
  generator is, and the cache service's CPU per hit (L3, semantic: the embedding is there).
- Lookup latency: the same sidecars at a fixed rate (open loop), p50/p99 of a hit as the client sees
  it, next to a miss that goes to a zero-latency upstream.
- Coalescing: a burst of identical requests (several prompts, many copies of each, spread over two
  sidecars sharing Redis) against an upstream whose answers take a while; the emulator's own counter
  says how many calls reached the model, with coalescing and with the cache bypassed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from o1pool.loadgen import Planned, percentile, plan_arrivals, table
from o1pool.procs import RedisServer, cpu_seconds, free_port, spawn_module, stop_all, wait_for_port
from o1pool.scenarios import MODEL, cluster, emulator_config, emulator_stats

BIG = 10_000_000
SEMANTIC_QUESTIONS = 1_000_000  # the semantic row's questions are numbered from here


@dataclass(frozen=True)
class CacheSettings:
    hit_seconds: float = 10.0
    concurrency: int = 16
    semantic_concurrency: int = 2
    prompts: int = 200
    rate_rps: float = 100.0
    rate_seconds: float = 10.0
    burst_prompts: int = 10
    burst_copies: int = 30
    burst_latency_s: float = 2.0  # how long the upstream takes to answer each call of the burst

    def describe(self) -> str:
        clients = f"{self.concurrency} clients ({self.semantic_concurrency} for the semantic layer)"
        loop = f"a closed loop of {clients} for {self.hit_seconds:.0f} s"
        rate = f"{self.rate_rps:.0f} rps for {self.rate_seconds:.0f} s"
        burst = f"a burst of {self.burst_prompts} prompts x {self.burst_copies} copies over 2 sidecars"
        return f"one sidecar per layer, {loop}, then {rate}; {burst}"


@dataclass
class LayerRow:
    layer: str
    hits: int
    others: int  # answers not from the layer measured (misses after a slow lookup, and the like)
    seconds: float
    cpu_s: float  # the sidecar process's CPU over the closed loop
    rate_hits_s: list[float]
    rate_miss_s: list[float]
    service_cpu_s: float = 0.0  # the cache service's CPU over the closed loop (L3, semantic)

    @property
    def hits_per_s(self) -> float:
        return self.hits / self.seconds

    @property
    def hits_per_cpu_s(self) -> float:
        return self.hits / self.cpu_s if self.cpu_s > 0 else float("nan")


@dataclass
class BurstRow:
    mode: str
    requests: int
    upstream_calls: int
    answered: int
    seconds: float


@dataclass
class CacheResults:
    settings: CacheSettings
    layers: list[LayerRow]
    burst: list[BurstRow]


def _body(prompt: int, layer: str = "", asked: bool = False, variant: int = 0) -> dict[str, object]:
    """A cacheable question. The semantic row has questions of its own (L3 keeps the other rows'
    answers), and ``asked`` them again in other words, which only the semantic layer can answer: each
    time in a ``variant`` of those words the service has not seen (``_spaced``), so that every lookup
    embeds its question, as a new wording does (the service keeps the vectors of recent questions)."""
    if layer == "semantic":
        prompt += SEMANTIC_QUESTIONS
    text = f"What is the plan for cached question {prompt}?"
    if asked and layer == "semantic":
        text = _spaced(f"What's the plan for cached question {prompt}?", variant)
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_completion_tokens": 16}


def _spaced(text: str, variant: int) -> str:
    """``text`` with each gap between its words one space or two, by the bits of ``variant``: another
    string, which the model's tokenizer reads as the same words."""
    words = text.split(" ")
    if not 0 <= variant < 2 ** (len(words) - 1):
        raise ValueError(f"{text!r} has only {2 ** (len(words) - 1)} spacings")
    return words[0] + "".join(("  " if variant >> i & 1 else " ") + w for i, w in enumerate(words[1:]))


class _Variants:
    """The next unused variant of each prompt's wording."""

    def __init__(self) -> None:
        self.used: dict[int, int] = {}

    def next(self, prompt: int) -> int:
        self.used[prompt] = self.used.get(prompt, -1) + 1
        return self.used[prompt]


# The semantic row asks its questions again with no-store: a miss (the service too busy) must not put
# that wording in L3, where the next ask would be an exact hit and no longer measure the semantic layer.
ASKED_AGAIN = {"cache-control": "no-store"}


async def _ask(
    session: aiohttp.ClientSession, url: str, body: dict[str, object], headers: dict[str, str] | None = None
) -> tuple[int, str, float]:
    started = time.monotonic()
    async with session.post(url + "/chat/completions", json=body, headers=headers or {}) as resp:
        await resp.read()
        return resp.status, resp.headers.get("x-o1pool-cache", ""), time.monotonic() - started


async def _closed_loop(
    session: aiohttp.ClientSession, url: str, layer: str, settings: CacheSettings, variants: _Variants
) -> tuple[int, int, float]:
    hits = others = 0
    # The semantic layer is CPU-bound in the service (an embedding per lookup): more clients than it
    # can serve only measure its overload (lookups past the budget are misses).
    clients = settings.semantic_concurrency if layer == "semantic" else settings.concurrency
    deadline = time.monotonic() + settings.hit_seconds
    started = time.monotonic()

    async def worker(offset: int) -> None:
        nonlocal hits, others
        i = offset
        while time.monotonic() < deadline:
            prompt = i % settings.prompts
            body = _body(prompt, layer, asked=True, variant=variants.next(prompt))
            status, served, _ = await _ask(session, url, body, ASKED_AGAIN if layer == "semantic" else None)
            if status == 200 and served == layer:
                hits += 1
            else:
                others += 1
            i += clients

    await asyncio.gather(*(worker(n) for n in range(clients)))
    return hits, others, time.monotonic() - started


async def _open_loop(
    session: aiohttp.ClientSession,
    url: str,
    settings: CacheSettings,
    fresh: bool,
    layer: str = "",
    variants: _Variants | None = None,
) -> list[float]:
    """Latencies of answers at ``rate_rps``: repeated prompts (hits), or ``fresh`` ones (misses)."""
    plan = plan_arrivals(settings.rate_rps, settings.rate_seconds, ((5, 1.0),))
    start = time.monotonic()

    async def fire(p: Planned) -> float | None:
        await asyncio.sleep(max(0.0, start + p.at_s - time.monotonic()))
        prompt = BIG + p.index if fresh else p.index % settings.prompts
        headers = ASKED_AGAIN if layer == "semantic" and not fresh else None
        variant = variants.next(prompt) if variants is not None and not fresh else 0
        body = _body(prompt, layer, asked=not fresh, variant=variant)
        status, served, latency = await _ask(session, url, body, headers)
        return latency if status == 200 and (fresh or served == layer) else None  # hits: from that layer

    return [x for x in await asyncio.gather(*(fire(p) for p in plan)) if x is not None]


def _cache_service(workdir: Path, stack: ExitStack) -> tuple[str, int]:
    """The cache service with its semantic layer: its URL and process id."""
    port = free_port()
    proc = spawn_module(
        "o1pool.cli",
        "cache-service",
        *("--host", "127.0.0.1", "--port", str(port), "--path", str(workdir / "l3.db"), "--semantic"),
        log=workdir / "cache-service.log",
    )
    stack.callback(stop_all, [proc])
    wait_for_port(port, proc=proc, timeout_s=120)
    return f"http://127.0.0.1:{port}", proc.pid


LAYERS = ("l1", "l2", "l3", "semantic")


async def _settled(session: aiohttp.ClientSession, service_url: str, questions: int = 0) -> None:
    """Let the background writes land: half a second, then until the semantic index holds ``questions``
    and has none waiting."""
    await asyncio.sleep(0.5)
    for _ in range(600):
        async with session.get(service_url + "/healthz") as resp:
            held = await resp.json()
        if held.get("questions", 0) >= questions and held.get("indexing", 0) == 0:
            return
        await asyncio.sleep(0.1)


async def _layers(settings: CacheSettings, redis: RedisServer, workdir: Path) -> list[LayerRow]:
    rows = []
    emu_cfg = emulator_config(BIG, BIG * 100, latency_scale=0.0)
    limits = {"rpm": BIG, "tpm": BIG * 100}
    with ExitStack() as stack:
        service_url, service_pid = _cache_service(workdir, stack)
        l3 = {"url": service_url}
        semantic = {**l3, "semantic": {"requests": "all"}}
        caches = {
            "l1": {"enabled": True},
            "l2": {"enabled": True, "l1_entries": 0},
            "l3": {"enabled": True, "l1_entries": 0, "l2_ttl_s": 0, "service": l3},
            "semantic": {"enabled": True, "l1_entries": 0, "l2_ttl_s": 0, "service": semantic},
        }
        for layer in LAYERS:
            redis.flush()
            extra = {"cache": caches[layer]}
            with cluster(emu_cfg, 1, limits, redis, cache=True, sidecar_extra=extra) as c:
                url, pid = c.sidecar_urls[0], c.procs[1].pid
                connector = aiohttp.TCPConnector(limit=settings.concurrency * 2)
                async with aiohttp.ClientSession(connector=connector) as session:
                    for prompt in range(settings.prompts):  # fill the layers (and warm the connections)
                        await _ask(session, url, _body(prompt, layer))
                    await _settled(session, service_url, settings.prompts if layer == "semantic" else 0)
                    cpu_before, service_before = cpu_seconds(pid), cpu_seconds(service_pid)
                    variants = _Variants()
                    hits, others, seconds = await _closed_loop(session, url, layer, settings, variants)
                    cpu = cpu_seconds(pid) - cpu_before
                    service_cpu = cpu_seconds(service_pid) - service_before
                    await _settled(session, service_url)  # what the closed loop left to index
                    rate_hits = await _open_loop(session, url, settings, False, layer, variants)
                    rate_miss = await _open_loop(session, url, settings, fresh=True)
                service_cpu = service_cpu if layer in ("l3", "semantic") else 0.0
                rows.append(LayerRow(layer, hits, others, seconds, cpu, rate_hits, rate_miss, service_cpu))
    return rows


async def _burst(settings: CacheSettings, redis: RedisServer) -> list[BurstRow]:
    # The model's answer takes burst_latency_s: long enough that the copies arrive while it is in flight.
    emu_cfg = emulator_config(BIG, BIG * 100, latency_scale=1.0)
    emu_cfg["models"][MODEL] = {
        **emu_cfg["models"][MODEL],
        "latency": {"ttft_ms": int(settings.burst_latency_s * 1000), "tokens_per_s": 1000},
    }
    rows = []
    for mode, headers in (
        ("coalesced (cache on)", {}),
        ("cache bypassed", {"x-o1pool-cache-mode": "bypass"}),
    ):
        redis.flush()
        with cluster(emu_cfg, 2, {"rpm": BIG, "tpm": BIG * 100}, redis, cache=True) as c:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                before = (await emulator_stats(c.emulator_url))["totals"].get("admitted", 0)
                started = time.monotonic()
                asks = [
                    _ask(session, c.sidecar_urls[copy % 2], _body(BIG * 2 + prompt), headers)
                    for prompt in range(settings.burst_prompts)
                    for copy in range(settings.burst_copies)
                ]
                answers = await asyncio.gather(*asks)
                seconds = time.monotonic() - started
                after = (await emulator_stats(c.emulator_url))["totals"].get("admitted", 0)
        ok = sum(status == 200 for status, _, _ in answers)
        rows.append(BurstRow(mode, len(answers), int(after - before), ok, seconds))
    return rows


async def run_cache_bench(settings: CacheSettings, redis: RedisServer, workdir: Path) -> CacheResults:
    return CacheResults(settings, await _layers(settings, redis, workdir), await _burst(settings, redis))


def layer_table(rows: Sequence[LayerRow], settings: CacheSettings) -> str:
    l1 = rows[0]
    return table(
        [
            "layer",
            "hits/s (closed loop)",
            "other answers",
            "sidecar CPU µs/hit",
            "service CPU µs/hit",
            "hits per CPU-s",
            "vs L1",
            f"hits @{settings.rate_rps:.0f}/s",
            "hit p50 ms",
            "hit p99 ms",
            "miss p50 ms",
            "miss p99 ms",
        ],
        [
            (
                r.layer,
                r.hits_per_s,
                r.others,
                r.cpu_s / max(1, r.hits) * 1e6,
                r.service_cpu_s / max(1, r.hits) * 1e6,
                r.hits_per_cpu_s,
                r.hits_per_cpu_s / l1.hits_per_cpu_s,
                f"{len(r.rate_hits_s) / (settings.rate_rps * settings.rate_seconds):.0%}",
                percentile(r.rate_hits_s, 0.5) * 1000,
                percentile(r.rate_hits_s, 0.99) * 1000,
                percentile(r.rate_miss_s, 0.5) * 1000,
                percentile(r.rate_miss_s, 0.99) * 1000,
            )
            for r in rows
        ],
    )


def burst_table(rows: Sequence[BurstRow]) -> str:
    base = rows[-1]
    return table(
        ["burst", "requests", "answered", "upstream calls", "calls saved", "seconds"],
        [
            (
                r.mode,
                r.requests,
                r.answered,
                r.upstream_calls,
                f"{1 - r.upstream_calls / max(1, base.upstream_calls):.1%}",
                r.seconds,
            )
            for r in rows
        ],
    )
