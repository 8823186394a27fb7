"""Server-sent-event relay: pass the upstream's events to the client one by one, read the usage on
the way, and drop what the sidecar itself asked for (the extra usage chunk of a chat stream)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,?\s*')
_HAS_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"([a-z_]{1,40})"')


async def sse_events(lines: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Whole events (lines up to and including the blank line) from an upstream's line stream."""
    pending: list[bytes] = []
    async for line in lines:
        pending.append(line)
        if line in (b"\n", b"\r\n"):
            yield b"".join(pending)
            pending = []
    if pending and any(p.strip() for p in pending):
        yield b"".join(pending)


def _data_of(event: bytes) -> bytes:
    return b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))


class ChatStreamRelay:
    """Chat-completions chunks. With ``strip_usage`` (the client did not ask for usage, the sidecar did)
    the usage-only chunk is dropped and ``"usage": null`` removed from the others. With ``watch`` (the
    request is traced) the choices' finish reasons are read on the way too."""

    def __init__(self, strip_usage: bool, watch: bool = False) -> None:
        self.strip_usage = strip_usage
        self.watch = watch
        self.usage: dict[str, Any] | None = None
        self.head: dict[str, Any] = {}  # the usage chunk's id and model
        self.finish_reasons: list[str] = []
        self.finished = False

    def feed(self, event: bytes) -> bytes | None:
        """Bytes to forward for ``event``, or ``None`` to drop it."""
        if b"[DONE]" in event and _data_of(event) == b"[DONE]":
            self.finished = True
            return event
        if self.watch:
            self.finish_reasons += (m.decode() for m in _FINISH_REASON.findall(event))
        if _HAS_USAGE.search(event):
            try:
                chunk = json.loads(_data_of(event))
            except ValueError:
                return event
            usage = chunk.get("usage") if isinstance(chunk, dict) else None
            if isinstance(usage, dict):
                self.usage = usage
                self.head = {k: chunk[k] for k in ("id", "model") if k in chunk}
                if self.strip_usage:
                    if not chunk.get("choices"):
                        return None
                    del chunk["usage"]
                    return b"data: " + json.dumps(chunk).encode() + b"\n\n"
            return event
        if self.strip_usage and b'"usage"' in event:
            return _USAGE_NULL.sub(b"", event)
        return event


class ChatStreamCollector:
    """Rebuilds the non-stream completion a chat stream carried, so a streamed answer can be cached
    like any other. Gives up (``None``) on anything it would not rebuild exactly: tool or function
    calls, refusals, logprobs, or a stream that did not parse."""

    def __init__(self) -> None:
        self._head: dict[str, Any] | None = None
        self._choices: dict[int, dict[str, Any]] = {}
        self._usable = True

    def add(self, event: bytes) -> None:
        if not self._usable:
            return
        data = _data_of(event)
        if not data or data == b"[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            self._usable = False
            return
        if not isinstance(chunk, dict) or "error" in chunk:
            self._usable = False
            return
        if self._head is None:
            self._head = chunk
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if (
                choice.get("logprobs")
                or delta.get("tool_calls")
                or delta.get("function_call")
                or delta.get("refusal")
            ):
                self._usable = False
                return
            entry = self._choices.setdefault(
                choice.get("index", 0), {"role": "assistant", "content": [], "finish_reason": None}
            )
            if delta.get("role"):
                entry["role"] = delta["role"]
            if delta.get("content"):
                entry["content"].append(delta["content"])
            if choice.get("finish_reason"):
                entry["finish_reason"] = choice["finish_reason"]

    def completion(self, usage: dict[str, Any] | None) -> dict[str, Any] | None:
        """The ``chat.completion`` object, or ``None`` when the stream cannot be rebuilt exactly."""
        head = self._head
        if not self._usable or head is None or not self._choices:
            return None
        if any(c["finish_reason"] is None for c in self._choices.values()):
            return None
        return {
            "id": head.get("id"),
            "object": "chat.completion",
            "created": head.get("created"),
            "model": head.get("model"),
            "system_fingerprint": head.get("system_fingerprint"),
            "choices": [
                {
                    "index": index,
                    "message": {"role": c["role"], "content": "".join(c["content"]), "refusal": None},
                    "logprobs": None,
                    "finish_reason": c["finish_reason"],
                }
                for index, c in sorted(self._choices.items())
            ],
            "usage": usage,
        }


RESPONSES_TERMINAL = ("response.completed", "response.incomplete", "response.failed")


class ResponsesStreamRelay:
    """Responses-API typed events: forwarded untouched; usage (and, for the cache, the whole
    response) read from ``response.completed``."""

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self.finished = False
        self.completed: dict[str, Any] | None = None

    def feed(self, event: bytes) -> bytes | None:
        # Cheap test first; then the event's own type decides (the text may be in any event's data).
        if not any(kind.encode() in event for kind in RESPONSES_TERMINAL):
            return event
        try:
            data = json.loads(_data_of(event))
        except ValueError:
            return event
        if not isinstance(data, dict) or data.get("type") not in RESPONSES_TERMINAL:
            return event
        self.finished = True
        response = data.get("response")
        if isinstance(response, dict):
            if data["type"] == "response.completed":
                self.completed = response
            if isinstance(response.get("usage"), dict):
                self.usage = response["usage"]
        return event


def replay_chat_completion(completion: dict[str, Any], include_usage: bool) -> list[bytes]:
    """A cached (non-stream) chat completion as the SSE events a stream would have carried."""
    base = {
        "id": completion.get("id", "chatcmpl-cached"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
        "system_fingerprint": completion.get("system_fingerprint"),
    }
    events: list[dict[str, Any]] = []
    for choice in completion.get("choices", []):
        message = choice.get("message") or {}
        delta = {k: v for k, v in message.items() if v is not None and k != "refusal"}
        index = choice.get("index", 0)
        events.append({**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
        events.append(
            {**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}]}
        )
    if include_usage:
        for event in events:
            event["usage"] = None
        events.append({**base, "choices": [], "usage": completion.get("usage")})
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def replay_response(response: dict[str, Any]) -> list[bytes]:
    """A cached (non-stream) Responses-API object as the typed events a stream would have carried."""
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        payload = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return f"event: {kind}\ndata: ".encode() + json.dumps(payload).encode() + b"\n\n"

    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    events = [event("response.created", response=opening), event("response.in_progress", response=opening)]
    for index, item in enumerate(response.get("output") or []):
        if item.get("type") != "message":
            events += [
                event("response.output_item.added", output_index=index, item=item),
                event("response.output_item.done", output_index=index, item=item),
            ]
            continue
        item_id = item.get("id")
        events.append(
            event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
        )
        for part_index, part in enumerate(item.get("content") or []):
            where = {"item_id": item_id, "output_index": index, "content_index": part_index}
            empty = {**part, "text": ""} if "text" in part else part
            events.append(event("response.content_part.added", **where, part=empty))
            text = part.get("text")
            if isinstance(text, str):
                events.append(event("response.output_text.delta", **where, delta=text, logprobs=[]))
                events.append(event("response.output_text.done", **where, text=text, logprobs=[]))
            events.append(event("response.content_part.done", **where, part=part))
        events.append(event("response.output_item.done", output_index=index, item=item))
    final = "response.incomplete" if response.get("status") == "incomplete" else "response.completed"
    events.append(event(final, response=response))
    return events
