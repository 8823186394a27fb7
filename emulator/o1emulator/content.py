"""Deterministic answers and the real OpenAI response shapes built around them.

An answer depends only on the request's content (and the configured seed), so identical requests get
identical bytes: what a cache test needs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import struct
from dataclasses import dataclass
from typing import Any

from o1emulator.config import ModelSpec

WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly brew potent elixirs "
    "under amber skies and every careful reasoner checks each step before writing the final answer "
    "so that numbers line up tokens flow steadily limits hold queues drain caches stay warm as "
    "requests wait their turn in one fair line while nine patient workers count every token twice today"
).split()
assert len(WORDS) == 64  # one random byte picks a word
TOKENS = tuple(" " + word for word in WORDS)

_VOLATILE_FIELDS = ("stream", "stream_options", "user", "metadata", "store")


def request_seed(body: dict[str, Any], config_seed: int | None) -> int:
    """A 64-bit seed from the request content; fields that do not change the answer are left out."""
    stable = {k: v for k, v in body.items() if k not in _VOLATILE_FIELDS}
    digest = hashlib.blake2b(
        json.dumps(stable, sort_keys=True, separators=(",", ":")).encode() + str(config_seed).encode(),
        digest_size=8,
    ).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True)
class Answer:
    tokens: list[str]  # visible tokens, concatenated they form the text
    reasoning_tokens: int
    finish_reason: str  # "stop" or "length"

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) + self.reasoning_tokens


def plan_answer(seed: int, spec: ModelSpec, budget: int | None) -> Answer:
    """The answer for a request: lengths drawn from the model's ranges, cut to the budget."""
    rng = random.Random(seed)
    visible = rng.randint(*spec.output_tokens)
    reasoning = rng.randint(*spec.reasoning_tokens) if spec.reasoning else 0
    finish = "stop"
    limit = min(budget, spec.max_output_tokens) if budget is not None else spec.max_output_tokens
    if reasoning + visible > limit:
        finish = "length"
        reasoning = min(reasoning, limit)
        visible = limit - reasoning
    tokens = [TOKENS[b & 63] for b in rng.randbytes(visible)]
    if tokens:
        tokens[0] = tokens[0][1:]
    if tokens and finish == "stop":
        tokens[-1] += "."
    return Answer(tokens, reasoning, finish)


def chat_usage(prompt_tokens: int, answer: Answer, choices: int = 1) -> dict[str, Any]:
    """``usage`` of a chat completion with ``choices`` identical answers."""
    completion = answer.completion_tokens * choices
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": answer.reasoning_tokens * choices,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def fingerprint(model: str) -> str:
    return "fp_" + hashlib.blake2b(model.encode(), digest_size=5).hexdigest()


def chat_completion(
    id_: str, created: int, model: str, answer: Answer, usage: dict[str, Any], choices: int = 1
) -> dict[str, Any]:
    return {
        "id": id_,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": answer.text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
            for i in range(choices)
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": fingerprint(model),
    }


class ChunkWriter:
    """Builds the SSE lines of a streamed chat completion."""

    def __init__(self, id_: str, created: int, model: str, include_usage: bool) -> None:
        self.head = {
            "id": id_,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": fingerprint(model),
        }
        self.include_usage = include_usage

    def _event(self, choices: list[dict[str, Any]], usage: Any = None, with_usage: bool = False) -> bytes:
        chunk = {**self.head, "choices": choices}
        if self.include_usage or with_usage:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    def role(self) -> bytes:
        delta = {"role": "assistant", "content": "", "refusal": None}
        return self._event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def content(self, text: str) -> bytes:
        return self._event(
            [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}]
        )

    def finish(self, reason: str) -> bytes:
        return self._event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}])

    def usage(self, usage: dict[str, Any]) -> bytes:
        return self._event([], usage, with_usage=True)


DONE = b"data: [DONE]\n\n"


def response_usage(prompt_tokens: int, answer: Answer) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": answer.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
        "total_tokens": prompt_tokens + answer.completion_tokens,
    }


class ResponseBuilder:
    """The Responses API object and its typed stream events for one answer."""

    def __init__(self, id_: str, created: int, model: str, body: dict[str, Any], spec: ModelSpec) -> None:
        self.id = id_
        self.created = created
        self.model = model
        self.body = body
        self.spec = spec
        self.message_id = "msg_" + id_[5:]
        self.reasoning_id = "rs_" + id_[5:]
        self.sequence = 0

    def response(self, status: str, answer: Answer | None, usage: dict[str, Any] | None) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        if answer is not None:
            output = self.output_items(answer)
        incomplete = None
        if answer is not None and answer.finish_reason == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        body = self.body
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": (body.get("reasoning") or {}).get("effort", "medium"), "summary": None}
            if self.spec.reasoning
            else {"effort": None, "summary": None},
            "service_tier": "default",
            "store": bool(body.get("store", True)),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": usage,
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }

    def reasoning_item(self) -> dict[str, Any]:
        return {"id": self.reasoning_id, "type": "reasoning", "summary": []}

    def message_item(self, text: str | None, status: str) -> dict[str, Any]:
        content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def output_items(self, answer: Answer) -> list[dict[str, Any]]:
        items = [self.reasoning_item()] if self.spec.reasoning else []
        status = "completed" if answer.finish_reason == "stop" else "incomplete"
        return [*items, self.message_item(answer.text, status)]

    def event(self, type_: str, **fields: Any) -> bytes:
        payload = {"type": type_, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return (
            f"event: {type_}\ndata: ".encode() + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
        )

    def opening_events(self) -> list[bytes]:
        events = [
            self.event("response.created", response=self.response("in_progress", None, None)),
            self.event("response.in_progress", response=self.response("in_progress", None, None)),
        ]
        index = 0
        if self.spec.reasoning:
            events.append(
                self.event("response.output_item.added", output_index=0, item=self.reasoning_item())
            )
            events.append(self.event("response.output_item.done", output_index=0, item=self.reasoning_item()))
            index = 1
        self.message_index = index
        events.append(
            self.event(
                "response.output_item.added", output_index=index, item=self.message_item(None, "in_progress")
            )
        )
        events.append(
            self.event(
                "response.content_part.added",
                item_id=self.message_id,
                output_index=index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            )
        )
        return events

    def delta_event(self, text: str) -> bytes:
        return self.event(
            "response.output_text.delta",
            item_id=self.message_id,
            output_index=self.message_index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def closing_events(self, answer: Answer, usage: dict[str, Any]) -> list[bytes]:
        index = self.message_index
        text = answer.text
        status = "completed" if answer.finish_reason == "stop" else "incomplete"
        final = self.response("completed", answer, usage)
        return [
            self.event(
                "response.output_text.done",
                item_id=self.message_id,
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            ),
            self.event(
                "response.content_part.done",
                item_id=self.message_id,
                output_index=index,
                content_index=0,
                part={"type": "output_text", "text": text, "annotations": []},
            ),
            self.event("response.output_item.done", output_index=index, item=self.message_item(text, status)),
            self.event(
                "response." + ("completed" if final["status"] == "completed" else "incomplete"),
                response=final,
            ),
        ]


def embedding_vector(seed: int, dimensions: int) -> list[float]:
    """A unit-length vector determined by ``seed``."""
    rng = random.Random(seed)
    vector = [rng.random() - 0.5 for _ in range(dimensions)]
    norm = sum(x * x for x in vector) ** 0.5 or 1.0
    return [x / norm for x in vector]


def embeddings_response(
    model: str, inputs: list[Any], config_seed: int | None, dimensions: int, encoding: str, prompt_tokens: int
) -> dict[str, Any]:
    data = []
    for index, item in enumerate(inputs):
        item_seed = request_seed({"input": item, "model": model, "dimensions": dimensions}, config_seed)
        vector = embedding_vector(item_seed, dimensions)
        value: Any = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
