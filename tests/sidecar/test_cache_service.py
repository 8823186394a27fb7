"""The pool's cache service (L3): the SQLite store on a real file, the service as a process, and
sidecars that use it after an L2 miss, on a real redis-server, with the openai SDK as the client. A
stopped, frozen or absent service is a miss within the lookup budget, never an error."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import numpy as np
import openai
import pytest
from aiohttp import web

from o1emulator.embedded import EmulatorHandle
from o1pool.procs import free_port, spawn_module, stop_all, wait_for_port
from o1sidecar.cache import Hit, ResponseCache
from o1sidecar.cachesvc.embedding import DIMENSIONS, F32
from o1sidecar.cachesvc.semantic import SemanticIndex
from o1sidecar.cachesvc.server import CacheService, build_app
from o1sidecar.cachesvc.store import TOUCH_S, EntryStore, Question
from o1sidecar.config import CachePolicy, CacheServiceConfig, PoolRef, RedisConfig
from o1sidecar.semantic import SemanticQuery
from tests.conftest import RedisServer
from tests.polling import until
from tests.sidecar.conftest import EmulatorFactory, SidecarFactory

POOL = PoolRef(name="pool", namespace="ns")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Opener = Callable[[Path, int, Clock], EntryStore]


def key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# The store, on a real SQLite file.


@pytest.fixture
def open_store() -> Iterator[Opener]:
    """Opens stores and closes them when the test ends: a store left to the garbage collector closes
    (and checkpoints its file) whenever it runs, perhaps on the event loop of a later test."""
    opened: list[EntryStore] = []

    def open_(path: Path, max_bytes: int, clock: Clock) -> EntryStore:
        opened.append(EntryStore(path, max_bytes, clock=clock))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


def test_entries_live_until_their_deadline_and_survive_a_reopen(tmp_path: Path, open_store: Opener) -> None:
    clock = Clock()
    store = open_store(tmp_path / "l3.db", 1000, clock)
    store.put("a", b"answer a", ttl_s=10)
    store.put("b", b"answer b", ttl_s=100)
    clock.now += 5
    assert store.get("a") == (b"answer a", 5.0)
    store.close()
    reopened = open_store(tmp_path / "l3.db", 1000, clock)
    assert (reopened.entries, reopened.bytes) == (2, 16)
    clock.now += 6
    assert reopened.get("a") is None  # expired, and dropped
    assert reopened.get("b") == (b"answer b", 89.0)
    assert (reopened.entries, reopened.bytes) == (1, 8)


def test_a_read_marks_its_entry_used_at_most_once_a_touch_interval(
    tmp_path: Path, open_store: Opener
) -> None:
    clock = Clock()
    store = open_store(tmp_path / "l3.db", 20, clock)
    store.put("x", b"0123456789", ttl_s=1000)
    clock.now += 1
    store.put("y", b"0123456789", ttl_s=1000)
    clock.now += TOUCH_S - 2
    assert store.get("x") is not None  # its mark is younger than TOUCH_S: not rewritten
    assert store.put("z", b"0123456789", ttl_s=1000).least_used == 1
    assert store.get("x") is None and store.get("y") is not None  # x was still the least recently used


def test_a_full_store_drops_expired_entries_then_the_least_used(tmp_path: Path, open_store: Opener) -> None:
    clock = Clock()
    store = open_store(tmp_path / "l3.db", 30, clock)
    for name, ttl in (("old", 1), ("x", 100), ("y", 100)):
        store.put(name, b"0123456789", ttl_s=ttl)
        clock.now += 2  # "old" has expired after this
    clock.now += TOUCH_S  # (a read marks an entry used once its mark is this old)
    assert store.get("x") is not None  # now the most recently used
    evicted = store.put("z", b"0123456789", ttl_s=100)
    assert (evicted.expired, evicted.least_used) == (1, 0)
    evicted = store.put("w", b"0123456789", ttl_s=100)
    assert (evicted.expired, evicted.least_used) == (0, 1)
    assert store.get("y") is None and store.get("x") is not None  # y was the least recently used
    assert (store.entries, store.bytes) == (3, 30)
    store.put("x", b"01234", ttl_s=100)  # a replacement counts its old size out
    assert (store.entries, store.bytes) == (3, 25)
    with pytest.raises(ValueError, match="larger than the store"):
        store.put("huge", b"x" * 31, ttl_s=100)


def test_the_semantic_layers_questions_are_kept_with_their_answers(
    tmp_path: Path, open_store: Opener
) -> None:
    clock = Clock()
    store = open_store(tmp_path / "l3.db", 100, clock)
    vector = np.arange(DIMENSIONS, dtype=np.float32).tobytes()

    def question(scope: str, key: str, expires: float = clock.now + 100) -> Question:
        return Question(scope, key, f"question of {key}", vector, expires)

    assert not store.put_question(question("s", "nowhere"), "m")  # no such answer: not kept
    for name in ("a", "b", "c", "d"):
        store.put(name, b"0123456789", ttl_s=100)
        assert store.put_question(question("s", name), "m")
        clock.now += 1
    assert store.put_question(question("t", "a"), "m")  # the same answer in another scope
    assert store.put_question(question("s", "b", expires=clock.now - 1), "m")  # (re-kept, expired now)
    store.put("c", b"0123456789", ttl_s=100)  # an answer stored again keeps its questions
    store.put_question(question("s", "d"), "another model")
    store.put("big", b"x" * 70, ttl_s=100)  # evicts a (least used) and, with it, its questions
    store.close()
    store = open_store(tmp_path / "l3.db", 100, clock)
    kept = store.questions("m", most=10)
    assert [(q.scope, q.key) for q in kept] == [("s", "c")]  # b expired, d of another model
    assert kept[0] == question("s", "c") and np.frombuffer(kept[0].vector, np.float32)[5] == 5.0
    assert store.questions("another model", most=10) == []  # dropped as the other model's were read
    for name in ("e", "f", "g"):
        store.put(name, b"0", ttl_s=100)
        store.put_question(question("s", name), "m")
        clock.now += 1
    assert [q.key for q in store.questions("m", most=2)] == ["f", "g"]  # the newest, oldest first


# The service, as a process.


@dataclass
class Service:
    path: Path
    port: int
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *args: str) -> None:
        self.proc = spawn_module(
            "o1pool.cli",
            "cache-service",
            *("--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", str(self.metrics_port)),
            *("--path", str(self.path), "--max-entry-bytes", "1000", *args),
        )
        wait_for_port(self.port, proc=self.proc)
        wait_for_port(self.metrics_port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_all([self.proc])
            self.proc = None


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path / "cache" / "l3.db", free_port(), free_port())
    svc.start()
    yield svc
    if svc.proc is not None:
        svc.proc.send_signal(signal.SIGCONT)  # in case a test froze it
    svc.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_the_service_stores_answers_and_keeps_them_across_a_restart(
    service: Service, http: aiohttp.ClientSession
) -> None:
    k = key("q")
    async with http.put(f"{service.url}/v1/entries/{k}?ttl_s=60", data=b"the answer") as resp:
        assert resp.status == 204
    service.stop()
    service.start()
    async with http.get(f"{service.url}/v1/entries/{k}") as resp:
        assert resp.status == 200 and await resp.read() == b"the answer"
        assert 0 < int(resp.headers["x-o1pool-ttl-s"]) <= 60
    async with http.get(f"{service.url}/healthz") as resp:
        assert await resp.json() == {"entries": 1, "bytes": 10}
    async with http.get(f"{service.url}/metrics") as resp:
        assert resp.status == 404  # on its own port, which a NetworkPolicy may leave open
    async with http.get(f"http://127.0.0.1:{service.metrics_port}/metrics") as resp:
        text = await resp.text()
    assert 'o1_cache_service_requests_total{op="get",result="hit"} 1.0' in text
    assert "o1_cache_service_bytes 10.0" in text


async def test_the_service_refuses_bad_requests_with_what_was_wrong(
    service: Service, http: aiohttp.ClientSession
) -> None:
    cases = [
        ("GET", "/v1/entries/not-a-key", b"", 400, "64 lowercase hex"),
        ("GET", f"/v1/entries/{key('absent')}", b"", 404, "no live entry"),
        ("PUT", f"/v1/entries/{key('q')}", b"x", 400, "ttl_s must be a positive whole number"),
        ("PUT", f"/v1/entries/{key('q')}?ttl_s=-3", b"x", 400, "ttl_s must be a positive whole number"),
        ("PUT", f"/v1/entries/{key('q')}?ttl_s=abc", b"x", 400, "ttl_s must be a positive whole number"),
        ("PUT", f"/v1/entries/{key('q')}?ttl_s=%C2%B2", b"x", 400, "ttl_s must be a positive whole number"),
        ("GET", f"/v1/entries/{key('q')}%0A", b"", 400, "64 lowercase hex"),
        ("PUT", f"/v1/entries/{key('q')}?ttl_s=60", b"x" * 1001, 413, "at most 1000 bytes"),
    ]
    for method, path, body, status, message in cases:
        async with http.request(method, service.url + path, data=body) as resp:
            assert resp.status == status, path
            assert message in (await resp.json())["error"]["message"]
    async with http.get(f"{service.url}/healthz") as resp:
        assert (await resp.json())["entries"] == 0  # nothing stored by any of them


def test_the_service_refuses_bad_options(tmp_path: Path) -> None:
    proc = spawn_module("o1sidecar.cachesvc", "--path", str(tmp_path / "x.db"), "--max-bytes", "0")
    assert proc.wait(timeout=30) == 2


# Sidecars using it.


def l3_policy(service: Service, **extra: int) -> CachePolicy:
    return CachePolicy(service=CacheServiceConfig(url=service.url, **extra))


async def test_l3_answers_after_redis_is_flushed_and_refills_l2(
    service: Service, redis_server: RedisServer
) -> None:
    redis = RedisConfig(url=redis_server.url, key_prefix="t")
    seen: list[tuple[str, str]] = []
    writer = ResponseCache(l3_policy(service), redis, POOL)
    reader = ResponseCache(
        l3_policy(service), redis, POOL, observe=lambda layer, result, _: seen.append((layer, result))
    )
    late = ResponseCache(l3_policy(service), redis, POOL)
    try:
        await writer.put(key("q"), b"answer")
        redis_server.flush()
        assert await reader.get(key("q")) == Hit(b"answer", "l3")
        assert seen == [("l2", "miss"), ("l3", "hit")]
        await reader.flush()
        assert await late.get(key("q")) == Hit(b"answer", "l2")  # the L3 hit was put back in Redis
        assert await reader.get(key("absent")) is None
        assert seen[-2:] == [("l2", "miss"), ("l3", "miss")]
    finally:
        for cache in (writer, reader, late):
            await cache.close()


async def test_a_frozen_or_stopped_service_is_a_miss_within_the_budget(service: Service) -> None:
    clock = Clock()
    seen: list[str] = []
    cache = ResponseCache(
        CachePolicy(l1_entries=0, service=CacheServiceConfig(url=service.url, budget_ms=50)),
        RedisConfig(),
        POOL,
        clock=clock,
        observe=lambda layer, result, seconds: seen.append(f"{layer} {result}"),
    )
    try:
        await cache.put(key("q"), b"answer")
        assert await cache.get(key("q")) == Hit(b"answer", "l3")
        assert service.proc is not None
        service.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
        lookups = [asyncio.create_task(cache.get(key("q"))) for _ in range(3)]
        done, _ = await asyncio.wait(lookups, timeout=5)
        assert len(done) == 3 and all(t.result() is None for t in done)
        assert seen[1:] == ["l3 error"] * 3
        assert await cache.get(key("q")) is None
        assert seen[-1] == "l3 skipped"  # the breaker opened: no more waiting on it
        service.proc.send_signal(signal.SIGCONT)
        clock.now += 10  # past the breaker's pause: one probe, which succeeds
        assert await cache.get(key("q")) == Hit(b"answer", "l3")
        service.stop()
        assert await cache.get(key("q")) is None
        assert seen[-1] == "l3 error"
    finally:
        await cache.close()


async def test_a_sidecar_answers_from_l3_through_the_sdk(
    service: Service,
    redis_server: RedisServer,
    make_emulator: EmulatorFactory,
    make_sidecar: SidecarFactory,
) -> None:
    emulator: EmulatorHandle = await make_emulator()
    options = {"redis": {"url": redis_server.url}, "cache": {"service": {"url": service.url}}}
    first = await make_sidecar(upstream=emulator, **options)
    messages = [{"role": "user", "content": "What is a pulsar?"}]

    async def ask(url: str) -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(model="o1", messages=messages)  # type: ignore[arg-type]
        return raw.headers["x-o1pool-cache"], raw.parse().choices[0].message.content or ""

    layer, text = await ask(first.url)
    assert layer == "miss"
    await first.close()  # waits for the background writes
    redis_server.flush()
    second = await make_sidecar(upstream=emulator, **options)  # an empty L1, an empty Redis
    assert await ask(second.url) == ("l3", text)
    assert int(emulator.stats()["totals"]["admitted"]) == 1
    async with aiohttp.ClientSession() as http, http.get(second.metrics_url) as resp:
        scrape = await resp.text()
    assert 'o1_api_cache_layer_lookups_total{layer="l3",result="hit"} 1.0' in scrape
    assert 'o1_api_cache_lookups_total{result="l3"} 1.0' in scrape
    assert 'o1_api_cache_lookup_seconds_count{layer="l3"} 1.0' in scrape


async def test_an_answer_too_large_for_the_service_is_not_held_against_it(service: Service) -> None:
    seen: list[str] = []
    cache = ResponseCache(
        CachePolicy(l1_entries=0, service=CacheServiceConfig(url=service.url)),
        RedisConfig(),
        POOL,
        observe=lambda layer, result, seconds: seen.append(result),
    )
    try:
        for i in range(5):  # more than the breaker's failures
            await cache.put(key(f"big {i}"), b"x" * 1001)  # the service keeps at most 1000 bytes
        await cache.put(key("small"), b"answer")
        assert await cache.get(key("big 0")) is None
        assert await cache.get(key("small")) == Hit(b"answer", "l3")
        assert seen == ["miss", "hit"]  # asked both times: the breaker stayed closed
    finally:
        await cache.close()


async def test_a_damaged_store_file_is_a_503_that_sidecars_take_as_a_miss(
    service: Service, http: aiohttp.ClientSession
) -> None:
    async with http.put(f"{service.url}/v1/entries/{key('q')}?ttl_s=60", data=b"the answer") as resp:
        assert resp.status == 204
    for part in service.path.parent.glob(service.path.name + "*"):  # the file and its WAL, overwritten
        with part.open("r+b") as damaged:
            damaged.write(b"\xff" * part.stat().st_size)
    async with http.get(f"{service.url}/v1/entries/{key('q')}") as resp:
        assert resp.status == 503
        assert "the cache store failed" in (await resp.json())["error"]["message"]
    cache = ResponseCache(
        CachePolicy(l1_entries=0, service=CacheServiceConfig(url=service.url)), RedisConfig(), POOL
    )
    try:
        assert await cache.get(key("q")) is None
    finally:
        await cache.close()


async def test_when_every_model_fails_the_cache_only_answer_may_come_from_l3(
    service: Service,
    http: aiohttp.ClientSession,
    make_emulator: EmulatorFactory,
    make_sidecar: SidecarFactory,
) -> None:
    emulator: EmulatorHandle = await make_emulator()
    cache = {"l1_entries": 0, "only_deterministic": True, "service": {"url": service.url}}  # no L1, no Redis
    handle = await make_sidecar(upstream=emulator, cache=cache)
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "What is kept when the model is down?"}]
    first = await client.chat.completions.create(model="o1", messages=messages)  # type: ignore[arg-type]

    async def stored() -> bool:
        async with http.get(f"http://127.0.0.1:{service.metrics_port}/healthz") as resp:
            return bool((await resp.json())["entries"] == 1)

    await until(stored, "the answer written to the cache service", timeout_s=10)
    emulator.set_faults([{"kind": "error_5xx", "model": "o1"}])
    raw = await client.chat.completions.with_raw_response.create(model="o1", messages=messages)  # type: ignore[arg-type]
    assert (raw.headers["x-o1pool-cache"], raw.headers["x-o1pool-degraded"]) == ("l3", "true")
    assert raw.parse().choices[0].message.content == first.choices[0].message.content


# The semantic layer (L4): the service with --semantic (the real model), and a sidecar using it.


@pytest.fixture
def semantic_service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path / "semantic" / "l3.db", free_port(), free_port())
    svc.start("--semantic")
    yield svc
    svc.stop()


async def test_the_semantic_endpoints_check_what_they_are_sent(
    semantic_service: Service, service: Service, http: aiohttp.ClientSession
) -> None:
    cases: list[tuple[object, str]] = [
        ("not json", "the body must be a JSON object"),
        ({"scope": "x", "text": "hi"}, "scope must be 64 lowercase hex digits"),
        ({"scope": key("s"), "text": ""}, "text must be a non-empty string"),
        ({"scope": key("s"), "text": 3}, "text must be a non-empty string"),
        ({"scope": key("s"), "text": "a \ud800 b"}, "no lone surrogates"),  # (json.dumps escapes it)
    ]
    for body, message in cases:
        data = body if isinstance(body, str) else json.dumps(body)
        async with http.post(f"{semantic_service.url}/v1/semantic/lookup", data=data) as resp:
            assert resp.status == 400 and message in (await resp.json())["error"]["message"]
    entry = {"scope": key("s"), "key": key("k"), "text": "hi", "ttl_s": True}
    async with http.post(f"{semantic_service.url}/v1/semantic/entries", json=entry) as resp:
        assert resp.status == 400 and "ttl_s must be" in (await resp.json())["error"]["message"]
    async with http.post(f"{service.url}/v1/semantic/lookup", json={"scope": key("s"), "text": "hi"}) as resp:
        assert resp.status == 501 and "--semantic" in (await resp.json())["error"]["message"]


async def test_a_sidecar_answers_a_paraphrase_from_the_semantic_layer_and_nothing_else(
    semantic_service: Service,
    http: aiohttp.ClientSession,
    make_emulator: EmulatorFactory,
    make_sidecar: SidecarFactory,
) -> None:
    emulator: EmulatorHandle = await make_emulator()
    cache = {"service": {"url": semantic_service.url, "semantic": {"requests": "opt_in"}}}
    handle = await make_sidecar(upstream=emulator, cache=cache)
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)

    async def ask(question: str, semantic: str | None = "on") -> tuple[str, str | None, str]:
        headers = {"x-o1pool-cache-semantic": semantic} if semantic else {}
        raw = await client.chat.completions.with_raw_response.create(
            model="o1", messages=[{"role": "user", "content": question}], extra_headers=headers
        )
        text = raw.parse().choices[0].message.content or ""
        return raw.headers["x-o1pool-cache"], raw.headers.get("x-o1pool-cache-similarity"), text

    layer, _, answer = await ask("How do I reset my password?")
    assert layer == "miss"

    async def indexed() -> bool:
        async with http.get(f"http://127.0.0.1:{semantic_service.metrics_port}/healthz") as resp:
            return bool((await resp.json())["questions"] == 1)

    await until(indexed, "the question indexed", timeout_s=10)
    layer, similarity, text = await ask("What is the way to reset my password?")
    assert (layer, text) == ("semantic", answer)
    assert similarity is not None and 0.95 <= float(similarity) <= 1.0
    assert int(emulator.stats()["totals"]["admitted"]) == 1
    # Not for a request that does not opt in, nor for a near miss, nor for the same words elsewhere.
    assert (await ask("What is the way to reset my password?", semantic=None))[0] == "miss"
    assert (await ask("How do I not reset my password?"))[0] == "miss"
    raw = await client.chat.completions.with_raw_response.create(
        model="o1-mini",
        messages=[{"role": "user", "content": "What is the way to reset my password?"}],
        extra_headers={"x-o1pool-cache-semantic": "on"},
    )
    assert raw.headers["x-o1pool-cache"] == "miss"  # another model: another scope
    with pytest.raises(openai.BadRequestError, match="x-o1pool-cache-semantic"):
        await ask("Hello?", semantic="maybe")
    async with http.get(handle.metrics_url) as resp:
        scrape = await resp.text()
    assert 'o1_api_cache_lookups_total{result="semantic"} 1.0' in scrape
    assert 'o1_api_cache_layer_lookups_total{layer="semantic",result="hit"} 1.0' in scrape


ASKED_AGAIN = (
    "What is the way to reset my password?",
    "How can I reset my password?",
    "How would I reset my password?",
    "How should I reset my password?",
    "What steps reset my password?",
)


async def test_lookups_asked_together_are_embedded_together_and_each_gets_its_own_answer(
    semantic_service: Service, http: aiohttp.ClientSession
) -> None:
    scope, empty = key("scope"), key("empty")
    answers = {key("password"): "How do I reset my password?", key("branch"): "How do I rename a git branch?"}
    for answer_key, question in answers.items():
        url = f"{semantic_service.url}/v1/entries/{answer_key}?ttl_s=60"
        async with http.put(url, data=question) as resp:
            assert resp.status == 204
        entry = {"scope": scope, "key": answer_key, "text": question, "ttl_s": 60}
        async with http.post(f"{semantic_service.url}/v1/semantic/entries", json=entry) as resp:
            assert resp.status == 204

    async def health() -> dict[str, int]:
        async with http.get(f"http://127.0.0.1:{semantic_service.metrics_port}/healthz") as resp:
            return dict(await resp.json())

    assert (await health())["embedded"] == 2
    asked = [(scope, words) for words in ASKED_AGAIN] + [
        (scope, "How can I rename a git branch?"),
        (scope, "How do I not rename a git branch?"),  # near, but a negation
        (empty, "How can I rename a git branch?"),  # nothing indexed there: not embedded
    ]

    async def lookup(scope: str, text: str) -> str:
        async with http.post(
            f"{semantic_service.url}/v1/semantic/lookup", json={"scope": scope, "text": text}
        ) as resp:
            return (await resp.read()).decode() if resp.status == 200 else str(resp.status)

    found = await asyncio.gather(*(lookup(s, t) for s, t in asked))  # 8: all wait (MAX_LOOKUPS)
    password, branch = answers.values()
    assert found[0] == password and found[5:] == [branch, "404", "404"]
    assert set(found[1:5]) <= {password, "404"}  # (paraphrases, some below the threshold)
    assert (await health())["embedded"] == 2 + 7
    assert await asyncio.gather(*(lookup(s, t) for s, t in asked)) == found  # again: from the memo
    assert (await health())["embedded"] == 9


async def test_the_semantic_index_survives_a_restart_without_embedding_again(
    semantic_service: Service, http: aiohttp.ClientSession
) -> None:
    scope, answer_key = key("scope"), key("password")
    async with http.put(
        f"{semantic_service.url}/v1/entries/{answer_key}?ttl_s=600", data=b"the answer"
    ) as resp:
        assert resp.status == 204
    entry = {"scope": scope, "key": answer_key, "text": "How do I reset my password?", "ttl_s": 600}
    async with http.post(f"{semantic_service.url}/v1/semantic/entries", json=entry) as resp:
        assert resp.status == 204
    semantic_service.stop()
    semantic_service.start("--semantic")

    async def health() -> dict[str, int]:
        async with http.get(f"http://127.0.0.1:{semantic_service.metrics_port}/healthz") as resp:
            return dict(await resp.json())

    assert (await health()) | {"indexing": 0} == {
        "entries": 1,
        "bytes": 10,
        "questions": 1,
        "indexing": 0,
        "embedded": 0,
    }
    asked = {"scope": scope, "text": "What is the way to reset my password?"}
    async with http.post(f"{semantic_service.url}/v1/semantic/lookup", json=asked) as resp:
        assert resp.status == 200 and await resp.read() == b"the answer"
    assert (await health())["embedded"] == 1  # the question asked, not the one restored


class HeldEmbedder:
    """A stand-in for the model (the batching logic is what is tested): every question is the same unit
    vector; while ``held`` a call waits for ``release``; ``embedded`` lists each call's questions."""

    tokenizer = SimpleNamespace(encode=lambda text: SimpleNamespace(ids=[101, 2000, 102]))

    def __init__(self) -> None:
        self.embedded: list[list[str]] = []
        self.held = False
        self.entered, self.release = threading.Event(), threading.Event()

    def embed(self, texts: list[str]) -> F32:
        if self.held:
            self.entered.set()
            self.release.wait(10)
        self.embedded.append(list(texts))
        vectors = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        vectors[:, 0] = 1.0
        return vectors


async def test_a_lookup_whose_client_left_while_it_waited_is_not_embedded(tmp_path: Path) -> None:
    model = HeldEmbedder()
    index = SemanticIndex(model, 0.95, max_entries=10)  # type: ignore[arg-type]
    service = CacheService(EntryStore(tmp_path / "l3.db", 1 << 20), 3600, 1 << 20, index)
    scope = key("scope")
    service.store.put(key("answer"), b"the answer", ttl_s=600)
    assert index.add(scope, key("answer"), "the question", ttl_s=600) is not None
    runner = web.AppRunner(build_app(service, with_metrics=True))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/v1/semantic/lookup"
    try:
        async with aiohttp.ClientSession() as http:
            model.held = True
            first = asyncio.create_task(http.post(url, json={"scope": scope, "text": "a paraphrase"}))
            assert await asyncio.to_thread(model.entered.wait, 10)  # its batch holds the model
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):  # a sidecar's budget running out: it hangs up
                    await http.post(url, json={"scope": scope, "text": "another paraphrase"})
            await asyncio.sleep(0.2)  # (the service sees the connection close)
            model.release.set()
            answered = await first
            assert (answered.status, await answered.read()) == (200, b"the answer")
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                scrape = await resp.text()
        assert model.embedded == [["the question"], ["a paraphrase"]]  # not the abandoned one
        assert 'o1_cache_service_requests_total{op="semantic_get",result="abandoned"} 1.0' in scrape
    finally:
        await runner.cleanup()


async def test_a_semantic_layer_too_slow_for_its_budget_is_a_miss_and_leaves_l3_open(
    semantic_service: Service,
) -> None:
    seen: list[str] = []
    slow = {"url": semantic_service.url, "semantic": {"budget_ms": 1}}  # an embedding takes ~10 ms
    cache = ResponseCache(
        CachePolicy(l1_entries=0, service=CacheServiceConfig.model_validate(slow)),
        RedisConfig(),
        POOL,
        observe=lambda layer, result, seconds: seen.append(f"{layer} {result}"),
    )
    question = SemanticQuery("a" * 64, "How do I reset my password?")
    try:
        await cache.put(key("q"), b"answer", question)  # indexed: a lookup in its scope embeds
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{semantic_service.url}/healthz") as resp:
                assert (await resp.json())["questions"] == 1
        for i, words in enumerate(ASKED_AGAIN):  # (each new: a question embedded is remembered)
            other = SemanticQuery(question.scope, words)
            assert await cache.get(key(f"other {i}"), other) is None
        semantic = [s for s in seen if s.startswith("semantic")]
        assert len(semantic) == 5 and set(semantic) <= {"semantic error", "semantic busy"}  # late, or queued
        assert "l3 skipped" not in seen  # its breaker stayed closed
        assert await cache.get(key("q"), question) == Hit(b"answer", "l3")  # L3 still asked
    finally:
        await cache.close()
