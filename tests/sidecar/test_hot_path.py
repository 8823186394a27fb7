"""The hot path's shortcuts change nothing a request sees (docs/performance.md): the prompt is counted
only when the charge or the context window depends on it, a cheap scan finds the long numbers the
parser must check, a cache miss that leads its identical requests costs two Redis round trips for
the cache and coalescing (its lookup takes the pool's in-flight key; its answer's write lets it go),
and ``o1pool sidecar`` runs on uvloop when it is installed."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from o1sidecar.cli import loop_factory
from o1sidecar.coalescing import Coalescer
from o1sidecar.config import ConfigError, QueuePolicy, TokenPolicy
from o1sidecar.controls import DEFAULT_CACHE, parse_controls
from o1sidecar.inbound import _LONG_DIGITS, MAX_NUMBER_CHARS, has_long_digits
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.tokens import TokenCounter, prompt_bound
from tests.conftest import RedisServer
from tests.sidecar.conftest import SidecarFactory

# -- the prompt is counted only when that can change something ---------------------------------

COUNTER = TokenCounter()
COUNTER.load()
MODELS = ("o1", "gpt-4", "a-model-of-unknown-encoding")  # o200k_base, cl100k_base, bytes / 4

text = st.text(max_size=200)  # any Unicode: a token covers one UTF-8 byte or more
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": text}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": json_value}),
    st.dictionaries(text, json_value, max_size=2),
    text,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"])},
    optional={
        "content": st.one_of(st.none(), text, st.lists(part, max_size=3), json_value),
        "name": st.one_of(text, json_value),
        "tool_calls": json_value,
        "refusal": text,
    },
)
budget = {
    "max_completion_tokens": st.integers(1, 2000),
    "max_tokens": st.integers(1, 2000),
    "n": st.integers(1, 3),
}
chat_body = st.fixed_dictionaries(
    {"model": st.just("o1"), "messages": st.lists(st.one_of(message, json_value), min_size=1, max_size=4)},
    optional={"tools": json_value, "functions": json_value, "response_format": json_value, **budget},
)
responses_body = st.fixed_dictionaries(
    {"model": st.just("o1"), "input": st.one_of(text, st.lists(st.one_of(message, json_value), max_size=4))},
    optional={
        "instructions": st.one_of(text, json_value),
        "tools": json_value,
        "max_output_tokens": st.integers(1, 2000),
    },
)


@given(
    st.one_of(
        chat_body.map(lambda b: ("chat/completions", b)), responses_body.map(lambda b: ("responses", b))
    )
)
def test_the_bound_is_never_below_the_count_of_any_model(case: tuple[str, dict[str, Any]]) -> None:
    endpoint, body = case
    bound = prompt_bound(endpoint, body)
    for model in MODELS:
        assert COUNTER.prompt(endpoint, model, body) <= bound


@given(
    st.one_of(
        chat_body.map(lambda b: ("chat/completions", b)), responses_body.map(lambda b: ("responses", b))
    ),
    st.sampled_from(["max", "sum"]),
    st.integers(1, 3000),
)
def test_the_charge_is_the_same_whether_or_not_the_prompt_was_counted(
    case: tuple[str, dict[str, Any]], rule: str, default_max_tokens: int
) -> None:
    endpoint, body = case
    policy = TokenPolicy(charge=rule, default_max_tokens=default_max_tokens)  # type: ignore[arg-type]
    for model in MODELS:
        counted = COUNTER.prompt(endpoint, model, body)
        assert COUNTER.charge(endpoint, model, body, policy) == COUNTER.charge(
            endpoint, model, body, policy, prompt_tokens=counted
        )


def test_a_short_prompt_under_a_large_budget_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = TokenCounter()
    counted: list[str] = []

    def counter_for(model: str) -> Callable[[str], int]:
        counted.append(model)
        return len

    monkeypatch.setattr(counter, "counter_for", counter_for)
    body = {"model": "o1", "messages": [{"role": "user", "content": "Hi"}]}
    assert counter.charge("chat/completions", "o1", body, TokenPolicy()) == TokenPolicy().default_max_tokens
    assert counted == []
    small = {**body, "max_completion_tokens": 4}  # (the prompt may be longer: counted)
    assert counter.charge("chat/completions", "o1", small, TokenPolicy()) == 3 + 3 + len("user") + len("Hi")
    assert counted == ["o1"]


# -- long numbers ----------------------------------------------------------------------------------

digit_rich = st.lists(
    st.one_of(
        st.binary(max_size=30),
        st.integers(0, 3 * MAX_NUMBER_CHARS).map(lambda n: b"7" * n),
        st.sampled_from([b",", b" ", b"[", b"."]),
    ),
    max_size=12,
).map(b"".join)


@given(digit_rich)
def test_the_scan_for_long_numbers_finds_what_the_regex_finds(raw: bytes) -> None:
    assert has_long_digits(raw) == (_LONG_DIGITS.search(raw) is not None)


def test_the_scan_for_long_numbers_at_every_offset_and_length() -> None:
    for length in (MAX_NUMBER_CHARS, MAX_NUMBER_CHARS + 1, MAX_NUMBER_CHARS + 2, 2 * MAX_NUMBER_CHARS + 3):
        for at in range(0, 160):
            raw = b"x" * at + b"1" * length + b"y" * 7
            assert has_long_digits(raw) == (length > MAX_NUMBER_CHARS), (length, at)


# -- headers ------------------------------------------------------------------------------------------


def test_requests_without_controls_share_the_default_cache_controls() -> None:
    assert parse_controls({}, QueuePolicy()).cache is DEFAULT_CACHE
    semantic = parse_controls({"x-o1pool-cache-semantic": "off"}, QueuePolicy()).cache
    assert (semantic.read, semantic.store, semantic.only, semantic.semantic) == (True, True, False, False)


# -- the event loop ------------------------------------------------------------------------------------


def test_the_sidecar_runs_on_uvloop_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory("auto") == (uvloop.new_event_loop, "uvloop")
    assert loop_factory("uvloop") == (uvloop.new_event_loop, "uvloop")
    assert loop_factory("asyncio") == (None, "asyncio")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # (not installed)
    assert loop_factory("auto") == (None, "asyncio")
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        loop_factory("uvloop")


# -- Redis round trips of a cache miss ----------------------------------------------------------------

KEYS = PoolKeys("o1pool", "tests", "test")  # the sidecar fixture's pool


def count_round_trips(client: Any, name: str, trips: list[str]) -> None:
    """Record each round trip ``client`` makes: a command, or a pipeline of several."""
    execute_command, pipeline = client.execute_command, client.pipeline

    async def counted_command(*args: Any, **options: Any) -> Any:
        trips.append(f"{name} {args[0]}")
        return await execute_command(*args, **options)

    def counted_pipeline(*args: Any, **options: Any) -> Any:
        pipe = pipeline(*args, **options)
        execute = pipe.execute

        async def counted_execute(*a: Any, **kw: Any) -> Any:
            trips.append(f"{name} pipeline " + " ".join(str(c[0][0]) for c in pipe.command_stack))
            return await execute(*a, **kw)

        pipe.execute = counted_execute
        return pipe

    client.execute_command, client.pipeline = counted_command, counted_pipeline


@pytest.mark.redis
async def test_a_miss_takes_and_lets_go_of_the_pools_key_with_its_cache_round_trips(
    make_sidecar: SidecarFactory, redis_server: RedisServer
) -> None:
    one = await make_sidecar(redis={"url": redis_server.url})
    two = await make_sidecar(redis={"url": redis_server.url})
    client = openai.AsyncOpenAI(base_url=one.url, api_key="x", max_retries=0)

    async def ask(client: openai.AsyncOpenAI, question: str) -> str:
        raw = await client.chat.completions.with_raw_response.create(
            model="o1", messages=[{"role": "user", "content": question}]
        )
        return raw.headers["x-o1pool-cache"]

    assert await ask(client, "warm-up: the scripts loaded") == "miss"
    await one.proxy.cache.flush()
    trips: list[str] = []
    count_round_trips(one.proxy.cache._redis, "cache", trips)
    count_round_trips(one.proxy.coalescer._client, "coalescer", trips)
    question = f"What is {uuid.uuid4().hex}?"
    assert await ask(client, question) == "miss"
    await one.proxy.cache.flush()
    await asyncio.gather(*one.proxy.coalescer._pending)  # (a release in the background, if any)
    assert trips == ["cache EVALSHA", "cache pipeline SET DEL"]
    direct = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await direct.keys(KEYS.inflight("*")) == []  # let go
        assert len(await direct.keys(KEYS.cached("*"))) == 2
        # The other sidecar finds it in L2, and its lookup takes no key.
        assert await ask(openai.AsyncOpenAI(base_url=two.url, api_key="x", max_retries=0), question) == "l2"
        assert await direct.keys(KEYS.inflight("*")) == []
    finally:
        await direct.aclose()


@pytest.mark.redis
async def test_a_claim_the_cache_answers_lets_go_of_the_key_it_took(
    make_sidecar: SidecarFactory, redis_server: RedisServer
) -> None:
    """(An L3 or semantic hit after the L2 lookup took the key.)"""
    handle = await make_sidecar(redis={"url": redis_server.url})
    coalescer: Coalescer = handle.proxy.coalescer
    claim = coalescer.claim("a-cache-key", time.time() + 5)
    assert claim is not None and coalescer.claim("a-cache-key", time.time() + 5) is None  # (it leads)
    direct = aioredis.Redis.from_url(redis_server.url)
    try:
        await direct.set(claim.inflight, claim.owner, px=claim.hold_ms)
        claim.taken = True
        coalescer.drop(claim)
        assert claim.event.is_set()
        await asyncio.gather(*coalescer._pending)
        assert await direct.exists(claim.inflight) == 0
        assert coalescer.claim("a-cache-key", time.time() + 5) is not None  # (no one leads now)
    finally:
        await direct.aclose()
