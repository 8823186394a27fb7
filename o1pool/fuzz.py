"""``o1pool fuzz``: hostile requests against a sidecar process, judged by what a user would see.

Requests are drawn by hypothesis: the OpenAI surface's fields filled with any JSON (wrong types,
NaN, lone UTF-16 surrogates, empty and huge values), then sometimes mutated into what no JSON
library writes (numbers of thousands of digits, nesting thousands deep, cut short, random bytes,
gzip bodies valid or broken), with junk in the sidecar's own headers. The verdict: no 5xx, no
traceback in the sidecar's log, and the sidecar's memory after the run against after a warm-up.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from o1pool.procs import RedisServer
from o1pool.scenarios import MODEL, cluster, emulator_config

PATHS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/models", "/v1/nope")

_text = st.text(st.characters(categories=["L", "N", "P", "Zs", "Cc", "Cs", "So"]), max_size=40)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    _text,
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=16,
)
_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "input_text", "image_url", "input_image"]) | _values},
    optional={"text": _text | _values, "image_url": _values},
)
_content = _text | st.lists(_part, max_size=3) | _values
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool"]) | _values},
    optional={"content": _content, "name": _values, "tool_calls": _values},
)
_prompt = st.lists(_message, max_size=4) | _text | _values
_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL, "gpt-unknown", ""]) | _values},
    optional={
        "messages": _prompt,
        "input": _prompt,
        "max_tokens": _values,
        "max_completion_tokens": st.integers(-5, 10**6) | _values,
        "max_output_tokens": _values,
        "temperature": _values,
        "seed": _values,
        "n": _values,
        "stream": st.booleans() | _values,
        "stream_options": _values,
        "tools": _values,
        "response_format": _values,
        "reasoning_effort": _values,
        "dimensions": _values,
    },
)
# A valid request with hostile extras: the part of the surface reached only once the basics are right.
_valid = st.builds(
    lambda messages, extra: {"model": MODEL, "messages": messages, **extra},
    st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": _text}),
        min_size=1,
        max_size=3,
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "max_completion_tokens": st.integers(-5, 50),
            "temperature": _values,
            "seed": _values,
            "n": st.integers(-1, 3) | _values,
            "stream": st.booleans(),
            "stream_options": _values,
            "tools": _values,
            "metadata": _values,
        },
    ),
)
_header_values = st.sampled_from(["", "9", "-1", "high", "urgent", "1e9", "5" * 400, "\x7f", "nan", "0"])


def _mutate(raw: bytes, how: str, draw: Any) -> bytes:
    if how == "huge number":
        digits: int = draw(st.integers(100, 6000))
        return raw[:-1] + b',"max_tokens":' + b"9" * digits + b"}"
    if how == "deep":
        depth: int = draw(st.integers(60, 5000))
        return raw[:-1] + b',"tools":' + b"[" * depth + b"]" * depth + b"}"
    if how == "cut short":
        cut: int = draw(st.integers(0, max(0, len(raw) - 1)))
        return raw[:cut]
    if how == "random bytes":
        junk: bytes = draw(st.binary(max_size=200))
        return junk
    return raw


@dataclass(frozen=True)
class Hostile:
    path: str
    headers: dict[str, str]
    body: bytes

    def describe(self) -> str:
        return f"POST {self.path} {self.headers} {self.body[:160]!r}"


@st.composite
def hostile_requests(draw: Any) -> Hostile:
    """One hostile request: a path, junk in the sidecar's headers, a body as bytes."""
    body = draw(_bodies | _valid)
    raw = json.dumps(body, ensure_ascii=draw(st.booleans()), allow_nan=True).encode("utf-8", "surrogatepass")
    raw = _mutate(
        raw, draw(st.sampled_from(["none", "none", "huge number", "deep", "cut short", "random bytes"])), draw
    )
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", ""]))}
    for name in ("x-o1pool-priority", "x-o1pool-deadline-ms", "x-o1pool-max-wait-ms"):
        if draw(st.booleans()):
            headers[name] = draw(_header_values)
    encoding = draw(st.sampled_from(["", "", "", "gzip", "broken gzip", "deflate"]))
    if encoding == "gzip":
        raw, headers["Content-Encoding"] = gzip.compress(raw), "gzip"
    elif encoding == "broken gzip":
        headers["Content-Encoding"] = "gzip"
    elif encoding == "deflate":
        headers["Content-Encoding"] = "deflate"  # not deflate-encoded: must be a clear 400
    return Hostile(draw(st.sampled_from(PATHS)), headers, raw)


def send(port: int, request: Hostile, timeout_s: float = 30.0) -> tuple[int, bytes]:
    """Status and body (a stream read to its end) of one request; 0 when the connection failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("POST", request.path, body=request.body, headers=request.headers)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, repr(exc).encode()
    finally:
        conn.close()


@dataclass
class FuzzResult:
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[tuple[int, str, bytes]] = field(default_factory=list)  # 5xx or no answer
    tracebacks: int = 0
    error_lines: int = 0
    log_sample: str = ""  # the first traceback or ERROR line of the sidecar's log
    rss_warm_kib: int = 0
    rss_end_kib: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def rss_growth(self) -> float:
        return self.rss_end_kib / self.rss_warm_kib - 1 if self.rss_warm_kib else float("nan")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fuzz(port: int, count: int, result: FuzzResult, seed: int | None = None) -> None:
    """Send ``count`` hostile requests to a sidecar on ``port``, recording into ``result``."""

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=seed is not None,
    )
    @given(hostile_requests())
    def one(request: Hostile) -> None:
        status, body = send(port, request)
        result.statuses[status] += 1
        if status == 0 or status >= 500:
            result.failures.append((status, request.describe(), body[:300]))

    one()


def run_fuzz(count: int, redis: RedisServer | None, warmup: int = 300, seed: int | None = None) -> FuzzResult:
    """An emulator and one sidecar process (shared limiter on ``redis``, cache on), ``warmup``
    requests, then ``count`` more with the sidecar's memory measured before and after."""
    big = 10_000_000
    emu = emulator_config(big, big * 100, latency_scale=0.0)
    extra = {"timeouts": {"request_body_s": 5.0}}
    result = FuzzResult()
    with cluster(emu, 1, {"rpm": big, "tpm": big * 100}, redis, cache=True, sidecar_extra=extra) as c:
        port = int(c.sidecar_urls[0].rsplit(":", 1)[1].split("/")[0])
        sidecar = c.procs[1]
        fuzz(port, warmup, FuzzResult(), seed)
        result.rss_warm_kib = _rss_kib(sidecar.pid)
        started = time.monotonic()
        fuzz(port, count, result, seed)
        result.seconds = time.monotonic() - started
        result.rss_end_kib = _rss_kib(sidecar.pid)
        log = (c.workdir / "sidecar-0.log").read_text()
        result.tracebacks = log.count("Traceback (most recent call last)")
        result.error_lines = sum(" ERROR " in line for line in log.splitlines())
        first = min((i for i in (log.find("Traceback"), log.find(" ERROR ")) if i >= 0), default=-1)
        result.log_sample = log[max(0, first - 300) : first + 3000] if first >= 0 else ""
    return result


def report(result: FuzzResult) -> str:
    statuses = ", ".join(f"{s or 'no answer'}: {n}" for s, n in sorted(result.statuses.items()))
    lines = [
        f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        f"{result.total} hostile requests in {result.seconds:.0f} s ({statuses})",
        f"5xx or no answer: {len(result.failures)}; tracebacks in the sidecar log: {result.tracebacks}; "
        f"ERROR lines: {result.error_lines}",
        f"sidecar RSS: {result.rss_warm_kib / 1024:.1f} MiB after the warm-up, "
        f"{result.rss_end_kib / 1024:.1f} MiB at the end ({result.rss_growth:+.1%})",
    ]
    lines += [f"  {status}: {what}\n    -> {body!r}" for status, what, body in result.failures[:10]]
    if result.log_sample:
        lines += ["first trouble in the sidecar's log:", result.log_sample]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="o1pool fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=300)
    args = parser.parse_args(argv)
    redis = RedisServer.find()
    if redis is None:
        print("o1pool fuzz: redis-server not found; install it with: apt-get install -y redis-server")
        return 2
    redis.start()
    try:
        result = run_fuzz(args.requests, redis, args.warmup)
    finally:
        redis.close()
    print(report(result))
    ok = not result.failures and not result.tracebacks and result.rss_growth < 0.10
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
