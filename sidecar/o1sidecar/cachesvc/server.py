"""``o1pool cache-service``: one pool's persistent cache (L3) over HTTP, for the pool's sidecars.

- ``GET /v1/entries/{key}``: 200 with the stored answer and ``x-o1pool-ttl-s`` (seconds left), or 404.
- ``PUT /v1/entries/{key}?ttl_s=N``: store the body for N seconds (capped by ``--max-ttl-s``); 204.
- With ``--semantic`` (the semantic layer, L4; needs ``o1pool[semantic]``):
  ``POST /v1/semantic/entries`` ``{"scope", "key", "text", "ttl_s"}`` indexes the question whose answer
  L3 holds under ``key``; ``POST /v1/semantic/lookup`` ``{"scope", "text"}`` answers 200 with the
  answer of the nearest such question of the scope (``x-o1pool-similarity``), or 404.
- ``GET /healthz`` (entries and bytes held); on ``--metrics-port`` (default: the same port) also
  ``GET /metrics`` (Prometheus). A separate port lets a NetworkPolicy keep the entries to the pool's
  pods and the metrics open to scrapers.

Keys are the sidecar's cache keys (64 hex digits). SQLite calls run on one worker thread, so the event
loop never waits on the disk and the store has a single writer. Bad requests get a 4xx that says what
was wrong; nothing a client sends can make a 500.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from o1sidecar.cachesvc import SIMILARITY_HEADER, TTL_HEADER
from o1sidecar.cachesvc.store import EntryStore, Question

if TYPE_CHECKING:
    from o1sidecar.cachesvc.semantic import Candidate, SemanticIndex

log = logging.getLogger("o1sidecar.cachesvc")

KEY = re.compile(r"[0-9a-f]{64}")  # (fullmatch)
TTL = re.compile(r"[0-9]{1,12}")
MAX_QUESTION_CHARS = 4000
MAX_INDEXING = 1024  # questions waiting to be indexed (about 10 s of work); past it, 429 and not indexed
# Lookups waiting for the model, embedded together in batches of up to MAX_BATCH: a sidecar waits 60 ms
# by default, and a lookup queued behind more than about two batches would answer no one. Past it,
# 429 at once: a miss, not a fault.
MAX_LOOKUPS = 8
MAX_BATCH = 4
DEFAULT_PORT = 8470
P = ParamSpec("P")
T = TypeVar("T")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Abandoned(Exception):
    """A lookup left unanswered: its client closed the connection while it waited for the model."""


@dataclass
class _Asked:
    """A semantic lookup waiting for the model."""

    scope: str
    text: str
    request: web.Request
    answer: asyncio.Future[list[Candidate]]

    def gone(self) -> bool:
        """Its client closed the connection (a sidecar whose budget ran out)."""
        transport = self.request.transport
        return transport is None or transport.is_closing()


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}}, status=status
    )


class CacheService:
    """The HTTP face of an ``EntryStore``."""

    def __init__(
        self, store: EntryStore, max_ttl_s: int, max_entry_bytes: int, index: SemanticIndex | None = None
    ) -> None:
        self.store = store
        self.max_ttl_s = max_ttl_s
        self.max_entry_bytes = max_entry_bytes
        self.index = index
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        # Lookups and indexing each on a thread of their own: a backlog of questions to index never
        # delays a lookup, and past MAX_INDEXING waiting ones new questions are not indexed (best effort).
        self._lookups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semantic-lookup")
        self._indexing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semantic-index")
        self._indexing_waiting = 0
        self._lookups_waiting = 0
        # Lookups not yet handed to the lookup thread; one task hands them over, MAX_BATCH at a time,
        # while any wait.
        self._asked: list[_Asked] = []
        self._batcher: asyncio.Task[None] | None = None
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "o1_cache_service_requests",
            "Requests to the cache service by operation and result (hit, miss, stored, refused, failed, "
            "dropped, abandoned)",
            ["op", "result"],
            registry=self.registry,
        )
        self.evictions = Counter(
            "o1_cache_service_evictions",
            "Entries dropped to make room, by reason (expired, least_used)",
            ["reason"],
            registry=self.registry,
        )
        entries = Gauge("o1_cache_service_entries", "Entries held", registry=self.registry)
        entries.set_function(lambda: self.store.entries)
        held = Gauge("o1_cache_service_bytes", "Bytes of answers held", registry=self.registry)
        held.set_function(lambda: self.store.bytes)
        limit = Gauge(
            "o1_cache_service_max_bytes", "Bytes of answers the store may hold", registry=self.registry
        )
        limit.set(store.max_bytes)
        questions = Gauge(
            "o1_cache_service_semantic_entries", "Questions in the semantic index", registry=self.registry
        )
        questions.set_function(lambda: self.index.entries if self.index is not None else 0)

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, lambda: fn(*args, **kwargs))

    async def _lookup(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """On the lookup thread: the model's CPU time away from the file's thread and the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._lookups, lambda: fn(*args, **kwargs))

    async def _candidates(
        self, index: SemanticIndex, request: web.Request, scope: str, text: str
    ) -> list[Candidate]:
        """``index.candidates``, embedded in one batch with the lookups waiting at the same time."""
        asked = _Asked(scope, text, request, asyncio.get_running_loop().create_future())
        self._asked.append(asked)
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._hand_over(index))
        return await asked.answer

    async def _hand_over(self, index: SemanticIndex) -> None:
        while self._asked:
            # A lookup whose sidecar stopped waiting (its budget ran out) is not worth the model's time:
            # under overload, embedding those would only make the next ones late too.
            for gone in (a for a in self._asked if a.gone()):
                gone.answer.set_exception(Abandoned())
            live = [a for a in self._asked if not a.answer.done()]
            batch, self._asked = live[:MAX_BATCH], live[MAX_BATCH:]
            if not batch:
                return
            try:
                found = await self._lookup(index.candidates_many, [(a.scope, a.text) for a in batch])
            except Exception as exc:  # (the model failing: each lookup says so, none waits forever)
                for asked in batch:
                    if not asked.answer.done():
                        asked.answer.set_exception(exc)
                continue
            for asked, candidates in zip(batch, found, strict=True):
                if not asked.answer.done():
                    asked.answer.set_result(candidates)

    async def _question(
        self, request: web.Request, op: str, fields: tuple[str, ...]
    ) -> dict[str, Any] | web.Response:
        """The checked JSON of a semantic request, or the 4xx that says what is wrong with it."""
        if self.index is None:
            self.requests.labels(op, "refused").inc()
            return _error(
                501, "this cache service has no semantic layer: start it with --semantic", "no_semantic"
            )
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        problems = []
        if not isinstance(body, dict):
            problems.append("the body must be a JSON object")
            body = {}
        for name in fields:
            value = body.get(name)
            if name in ("scope", "key") and not (isinstance(value, str) and KEY.fullmatch(value)):
                problems.append(f"{name} must be 64 lowercase hex digits")
            elif name == "text" and not (isinstance(value, str) and 0 < len(value) <= MAX_QUESTION_CHARS):
                problems.append(f"text must be a non-empty string of at most {MAX_QUESTION_CHARS} characters")
            elif name == "text" and isinstance(value, str) and not _is_unicode(value):
                problems.append("text must be valid Unicode (no lone surrogates)")
            elif name == "ttl_s" and not (
                isinstance(value, int) and not isinstance(value, bool) and value > 0
            ):
                problems.append("ttl_s must be a positive whole number of seconds")
        if problems:
            self.requests.labels(op, "refused").inc()
            return _error(400, "; ".join(problems), "bad_request")
        return body

    async def get(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        if not KEY.fullmatch(key):
            self.requests.labels("get", "refused").inc()
            return _error(400, "the key must be 64 lowercase hex digits (a sidecar cache key)", "bad_key")
        try:
            found = await self._run(self.store.get, key)
        except sqlite3.Error as exc:
            return self._store_failed("get", exc)
        if found is None:
            self.requests.labels("get", "miss").inc()
            return _error(404, "no live entry for this key", "not_cached")
        self.requests.labels("get", "hit").inc()
        body, left_s = found
        return web.Response(
            body=body, content_type="application/octet-stream", headers={TTL_HEADER: str(max(1, int(left_s)))}
        )

    async def put(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        if not KEY.fullmatch(key):
            self.requests.labels("put", "refused").inc()
            return _error(400, "the key must be 64 lowercase hex digits (a sidecar cache key)", "bad_key")
        raw = request.query.get("ttl_s", "")
        if not TTL.fullmatch(raw) or int(raw) <= 0:
            self.requests.labels("put", "refused").inc()
            return _error(400, f"ttl_s must be a positive whole number of seconds, got {raw!r}", "bad_ttl")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.requests.labels("put", "refused").inc()
            return _error(413, f"an entry may hold at most {self.max_entry_bytes} bytes", "too_large")
        try:
            evicted = await self._run(self.store.put, key, body, min(int(raw), self.max_ttl_s))
        except ValueError as exc:
            self.requests.labels("put", "refused").inc()
            return _error(413, str(exc), "too_large")
        except sqlite3.Error as exc:
            return self._store_failed("put", exc)
        self.requests.labels("put", "stored").inc()
        self.evictions.labels("expired").inc(evicted.expired)
        self.evictions.labels("least_used").inc(evicted.least_used)
        return web.Response(status=204)

    async def semantic_put(self, request: web.Request) -> web.StreamResponse:
        body = await self._question(request, "semantic_put", ("scope", "key", "text", "ttl_s"))
        if isinstance(body, web.Response):
            return body
        index = self.index
        assert index is not None  # (_question)
        if self._indexing_waiting >= MAX_INDEXING:
            self.requests.labels("semantic_put", "dropped").inc()
            return _error(429, f"{MAX_INDEXING} questions are waiting to be indexed: this one is not", "busy")
        ttl_s = min(body["ttl_s"], self.max_ttl_s)
        self._indexing_waiting += 1
        try:
            vector = await asyncio.get_running_loop().run_in_executor(
                self._indexing, lambda: index.add(body["scope"], body["key"], body["text"], ttl_s)
            )
        finally:
            self._indexing_waiting -= 1
        if vector is None:
            self.requests.labels("semantic_put", "refused").inc()
            return _error(422, "the question is too long for the semantic layer (256 tokens)", "too_long")
        # Kept with its answer in the file too, so that a restart finds it (SemanticIndex.restore).
        kept = Question(body["scope"], body["key"], body["text"], vector.tobytes(), time.time() + ttl_s)
        try:
            await self._run(self.store.put_question, kept, index.model)
        except sqlite3.Error as exc:
            return self._store_failed("semantic_put", exc)
        self.requests.labels("semantic_put", "stored").inc()
        return web.Response(status=204)

    async def semantic_lookup(self, request: web.Request) -> web.StreamResponse:
        body = await self._question(request, "semantic_get", ("scope", "text"))
        if isinstance(body, web.Response):
            return body
        assert self.index is not None  # (_question)
        if self._lookups_waiting >= MAX_LOOKUPS:
            self.requests.labels("semantic_get", "dropped").inc()
            return _error(429, f"{MAX_LOOKUPS} questions are waiting for the model: ask again later", "busy")
        self._lookups_waiting += 1
        try:
            candidates = await self._candidates(self.index, request, body["scope"], body["text"])
        except Abandoned:
            self.requests.labels("semantic_get", "abandoned").inc()
            return _error(499, "the client closed the connection before the model was free", "abandoned")
        finally:
            self._lookups_waiting -= 1
        for candidate in candidates:
            try:
                found = await self._run(self.store.get, candidate.key)
            except sqlite3.Error as exc:
                return self._store_failed("semantic_get", exc)
            if found is None:  # the answer is gone from L3: so is the question
                await self._lookup(self.index.forget, body["scope"], candidate.key)
                continue
            self.requests.labels("semantic_get", "hit").inc()
            answer, left_s = found
            headers = {TTL_HEADER: str(max(1, int(left_s))), SIMILARITY_HEADER: f"{candidate.similarity:.4f}"}
            return web.Response(body=answer, content_type="application/octet-stream", headers=headers)
        self.requests.labels("semantic_get", "miss").inc()
        return _error(404, "no question of this scope is near enough", "not_cached")

    def _store_failed(self, op: str, exc: sqlite3.Error) -> web.Response:
        """The file failed (full disk, damage): 503, which the sidecars treat as a miss."""
        self.requests.labels(op, "failed").inc()
        log.warning("cache store %s failed on %s: %s", op, self.store.path, exc)
        return web.json_response(
            {
                "error": {
                    "message": f"the cache store failed: {exc}",
                    "type": "server_error",
                    "code": "store_failed",
                }
            },
            status=503,
        )

    async def health(self, request: web.Request) -> web.StreamResponse:
        held = {"entries": self.store.entries, "bytes": self.store.bytes}
        if self.index is not None:
            held |= {
                "questions": self.index.entries,
                "indexing": self._indexing_waiting,
                "embedded": self.index.embedded,
            }
        return web.json_response(held)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def close(self) -> None:
        await self._run(self.store.close)
        self._worker.shutdown()
        self._lookups.shutdown()
        self._indexing.shutdown()


def build_app(service: CacheService, with_metrics: bool) -> web.Application:
    """The entries (and health); with ``with_metrics`` also ``/metrics``. Closing it closes the store."""
    app = web.Application(client_max_size=service.max_entry_bytes)
    app.router.add_get("/v1/entries/{key}", service.get)
    app.router.add_put("/v1/entries/{key}", service.put)
    app.router.add_post("/v1/semantic/entries", service.semantic_put)
    app.router.add_post("/v1/semantic/lookup", service.semantic_lookup)
    app.router.add_get("/healthz", service.health)
    if with_metrics:
        app.router.add_get("/metrics", service.metrics)

    async def close(_: web.Application) -> None:
        await service.close()

    app.on_cleanup.append(close)
    return app


def build_metrics_app(service: CacheService) -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", service.health)
    app.router.add_get("/metrics", service.metrics)
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="o1pool cache-service",
        description="Serve one pool's persistent answer cache (L3) to its sidecars, from a SQLite file.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the entries")
    parser.add_argument("--metrics-port", type=int, help="port of /metrics and /healthz (default: --port)")
    parser.add_argument("--path", type=Path, required=True, help="the SQLite file (created if absent)")
    parser.add_argument("--max-bytes", type=int, default=1 << 30, help="bytes of answers the file may hold")
    parser.add_argument("--max-entry-bytes", type=int, default=8 << 20, help="the largest answer stored")
    parser.add_argument("--max-ttl-s", type=int, default=30 * 86_400, help="the longest an entry lives")
    parser.add_argument(
        "--semantic", action="store_true", help="also serve the semantic layer (L4; needs o1pool[semantic])"
    )
    parser.add_argument(
        "--semantic-threshold", type=float, default=0.95, help="similarity a match needs (default 0.95)"
    )
    parser.add_argument(
        "--semantic-max-entries", type=int, default=50_000, help="questions the index holds (oldest go first)"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


async def _serve(args: argparse.Namespace) -> None:
    store = EntryStore(args.path, args.max_bytes)
    index, held = None, f"{store.entries} entries, {store.bytes} bytes"
    if args.semantic:
        from o1sidecar.cachesvc.embedding import Embedder
        from o1sidecar.cachesvc.semantic import SemanticIndex

        index = SemanticIndex(Embedder(), args.semantic_threshold, args.semantic_max_entries)
        restored = index.restore(store.questions(index.model, args.semantic_max_entries))
        held += f", {restored} questions"
    service = CacheService(store, args.max_ttl_s, args.max_entry_bytes, index)
    separate = args.metrics_port is not None and args.metrics_port != args.port
    runners = [web.AppRunner(build_app(service, with_metrics=not separate), access_log=None)]
    if separate:
        runners.append(web.AppRunner(build_metrics_app(service), access_log=None))
    for runner, port in zip(runners, (args.port, args.metrics_port), strict=False):
        await runner.setup()
        await web.TCPSite(runner, args.host, port).start()
    print(
        f"o1pool cache-service: serving http://{args.host}:{args.port} from {args.path} ({held})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in reversed(runners):
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Before numpy loads: the index's products are small, and BLAS threads only contend for the cores
    # the model runs on (with two threads, numpy's own embeddings ran 3.7x slower here).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    limits = ("max_bytes", "max_entry_bytes", "max_ttl_s", "semantic_max_entries")
    problems = [f"--{name.replace('_', '-')} must be positive" for name in limits if getattr(args, name) <= 0]
    if not 0 < args.semantic_threshold <= 1:
        problems.append("--semantic-threshold must be above 0 and at most 1")
    if problems:
        print("o1pool cache-service: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(args))
    except (OSError, sqlite3.Error) as exc:
        print(f"o1pool cache-service: cannot serve from {args.path}: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # the semantic layer without its model
        print(f"o1pool cache-service: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
