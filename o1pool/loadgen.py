"""Open-loop load for the demo, the benchmark and the load tests.

The plan (when each request starts, at which priority) is a pure function of its inputs; ``drive``
replays a plan against one or more OpenAI-compatible base URLs and records what each request got.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import aiohttp


@dataclass(frozen=True)
class Planned:
    at_s: float  # offset from the start of the run
    priority: int
    index: int


@dataclass(frozen=True)
class Outcome:
    planned: Planned
    status: int
    latency_s: float
    queue_wait_s: float
    model: str | None = None
    account: str | None = None
    degraded: bool = False
    cache: str | None = None
    error: str | None = None


def plan_arrivals(
    rate_rps: float, duration_s: float, priority_mix: Sequence[tuple[int, float]], seed: int = 1
) -> list[Planned]:
    """Evenly spaced arrivals at ``rate_rps`` for ``duration_s``, priorities drawn by weight."""
    rng = random.Random(seed)
    levels = [p for p, _ in priority_mix]
    weights = [w for _, w in priority_mix]
    count = math.floor(rate_rps * duration_s)
    return [
        Planned(at_s=i / rate_rps, priority=rng.choices(levels, weights)[0], index=i) for i in range(count)
    ]


def chat_body(
    planned: Planned, model: str, max_tokens: int, unique: bool = True, sender: str = ""
) -> dict[str, object]:
    """A chat completion request; ``unique`` ones differ by the planned index (and ``sender``, for
    load from several processes), so no cache answers them."""
    text = f"Request {sender}{planned.index}: summarise the plan." if unique else "Summarise the plan."
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_completion_tokens": max_tokens,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Progress:
    total: int
    sent: int = 0
    done: int = 0
    ok: int = 0
    rejected: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        return (
            f"[{elapsed:6.1f}s] sent {self.sent}/{self.total}  answered {self.done}  ok {self.ok}  "
            f"429 {self.rejected}  errors {self.failed}  waiting {self.sent - self.done}"
        )


Sender = Callable[[str, Planned, dict[str, object], dict[str, str]], Awaitable[Outcome]]
CLIENT_KEY = "any-key-the-sidecar-supplies-the-real-one"


def _outcome(planned: Planned, status: int, started: float, h: Mapping[str, str]) -> Outcome:
    return Outcome(
        planned=planned,
        status=status,
        latency_s=time.monotonic() - started,
        queue_wait_s=float(h.get("x-o1pool-queue-wait-ms", 0) or 0) / 1000,
        model=h.get("x-o1pool-model"),
        account=h.get("x-o1pool-account"),
        degraded=h.get("x-o1pool-degraded", "false") == "true",
        cache=h.get("x-o1pool-cache"),
    )


@asynccontextmanager
async def aiohttp_sender(timeout_s: float) -> AsyncIterator[Sender]:
    """Plain HTTP with aiohttp: the lightest client, for latency measurements."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(
            base_url: str, planned: Planned, body: dict[str, object], extra: dict[str, str]
        ) -> Outcome:
            headers = {
                "x-o1pool-priority": str(planned.priority),
                "authorization": f"Bearer {CLIENT_KEY}",
                **extra,
            }
            started = time.monotonic()
            try:
                async with session.post(base_url + "/chat/completions", json=body, headers=headers) as resp:
                    await resp.read()
                    return _outcome(planned, resp.status, started, resp.headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                return Outcome(planned, 0, time.monotonic() - started, 0.0, error=type(exc).__name__)

        yield send


@asynccontextmanager
async def openai_sender(timeout_s: float) -> AsyncIterator[Sender]:
    """The official ``openai`` SDK, as an app would use it, with its own retries off (``max_retries=0``):
    every answer the sidecar gives reaches the outcome as it is."""
    import openai

    clients: dict[str, openai.AsyncOpenAI] = {}
    try:

        async def send(
            base_url: str, planned: Planned, body: dict[str, object], extra: dict[str, str]
        ) -> Outcome:
            client = clients.get(base_url)
            if client is None:
                client = clients[base_url] = openai.AsyncOpenAI(
                    base_url=base_url, api_key=CLIENT_KEY, max_retries=0, timeout=timeout_s
                )
            headers = {"x-o1pool-priority": str(planned.priority), **extra}
            started = time.monotonic()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    **body,  # type: ignore[call-overload]  # a plain dict, as an app would build it
                    extra_headers=headers,
                )
                raw.parse()
                return _outcome(planned, raw.status_code, started, raw.headers)
            except openai.APIStatusError as exc:
                return _outcome(planned, exc.status_code, started, exc.response.headers)
            except openai.APIConnectionError as exc:
                return Outcome(planned, 0, time.monotonic() - started, 0.0, error=type(exc).__name__)

        yield send
    finally:
        for client in clients.values():
            await client.close()


async def drive(
    base_urls: Sequence[str],
    plan: Sequence[Planned],
    body_for: Callable[[Planned], dict[str, object]],
    on_progress: Callable[[Progress], None] | None = None,
    timeout_s: float = 600.0,
    headers_for: Callable[[Planned], dict[str, str]] | None = None,
    client: Literal["aiohttp", "openai"] = "aiohttp",
) -> list[Outcome]:
    """Send each planned request at its time to ``base_urls`` in turn; return every outcome."""
    progress = Progress(total=len(plan))
    outcomes: list[Outcome] = []
    sender = openai_sender if client == "openai" else aiohttp_sender
    async with sender(timeout_s) as send:
        start = time.monotonic()

        async def fire(planned: Planned) -> None:
            delay = start + planned.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            url = base_urls[planned.index % len(base_urls)].rstrip("/")
            progress.sent += 1
            extra = headers_for(planned) if headers_for else {}
            outcome = await send(url, planned, body_for(planned), extra)
            outcomes.append(outcome)
            progress.done += 1
            if outcome.status == 200:
                progress.ok += 1
            elif outcome.status == 429:
                progress.rejected += 1
            else:
                progress.failed += 1

        async def report() -> None:
            while True:
                if on_progress:
                    on_progress(progress)
                await asyncio.sleep(0.5)

        reporter = asyncio.create_task(report())
        try:
            await asyncio.gather(*(fire(p) for p in plan))
        finally:
            reporter.cancel()
        if on_progress:
            on_progress(progress)
    return outcomes


@dataclass(frozen=True)
class PrioritySummary:
    priority: int
    sent: int
    ok: int
    rejected: int
    failed: int
    wait_p50_s: float
    wait_p95_s: float
    latency_p95_s: float


def summarize_by_priority(outcomes: Sequence[Outcome]) -> list[PrioritySummary]:
    rows = []
    for priority in sorted({o.planned.priority for o in outcomes}, reverse=True):
        group = [o for o in outcomes if o.planned.priority == priority]
        waits = [o.queue_wait_s for o in group if o.status == 200]
        rows.append(
            PrioritySummary(
                priority=priority,
                sent=len(group),
                ok=sum(o.status == 200 for o in group),
                rejected=sum(o.status == 429 for o in group),
                failed=sum(o.status not in (200, 429) for o in group),
                wait_p50_s=percentile(waits, 0.50),
                wait_p95_s=percentile(waits, 0.95),
                latency_p95_s=percentile([o.latency_s for o in group], 0.95),
            )
        )
    return rows


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with right-aligned numbers, for terminals and the README."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        pairs = enumerate(zip(row, widths, strict=True))
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in pairs))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
