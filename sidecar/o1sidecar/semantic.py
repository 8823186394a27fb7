"""What the semantic layer (L4) matches on, and which requests use it. Pure.

The question is the last message when it is the user's and plain text (or a Responses-API string
``input``); everything else that can change the answer (model, system prompt, earlier turns, tools,
parameters: all the fields of the exact cache key) is hashed into the question's scope, so only a
question asked in the same setting can share an answer. Long questions are left out: the model reads
256 tokens, and two prompts that differ only after that would match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from o1sidecar.cache import NOT_IN_KEY
from o1sidecar.config import SemanticConfig

MAX_QUESTION_CHARS = 800  # well inside the model's 256 tokens for most text (the service checks exactly)


@dataclass
class SemanticQuery:
    scope: str  # hex sha256
    text: str
    # Whether its answer's question goes to the index: not when the service could not look it up (too
    # busy, slow or down), which would only add to its load.
    index: bool = True


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        parts = [
            p.get("text") for p in content if isinstance(p, dict) and p.get("type") in ("text", "input_text")
        ]
        if len(parts) == len(content) and all(isinstance(p, str) for p in parts):
            return "\n".join(parts)  # type: ignore[arg-type]
    return None  # images, audio, files: no semantic match


def semantic_query(path: str, body: dict[str, Any]) -> SemanticQuery | None:
    """The question and its scope, or ``None`` when the request has no plain-text question to match."""
    material = {k: v for k, v in body.items() if k not in NOT_IN_KEY}
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        last = messages[-1]
        if not isinstance(last, dict) or last.get("role") != "user":
            return None
        text = _text(last.get("content"))
        material["messages"] = [*messages[:-1], {k: v for k, v in last.items() if k != "content"}]
    elif isinstance(body.get("input"), str):
        text = body["input"]
        del material["input"]
    else:
        return None
    if text is None or not text.strip() or len(text) > MAX_QUESTION_CHARS:
        return None
    canonical = json.dumps([path, material], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return SemanticQuery(hashlib.sha256(canonical.encode()).hexdigest(), text)


def uses_semantic(policy: SemanticConfig, asked: bool | None, body: dict[str, Any]) -> bool:
    """Whether a request uses the semantic layer: its own ``x-o1pool-cache-semantic`` (``asked``) if it
    sent one, else the pool's ``requests`` policy."""
    if asked is not None:
        return asked
    if policy.requests == "all":
        return True
    if policy.requests == "deterministic":
        return body.get("temperature") == 0 or body.get("seed") is not None
    return False
