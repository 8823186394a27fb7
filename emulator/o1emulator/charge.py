"""What a request costs at the emulated upstream: its own prompt estimate and TPM charge at admission.

This is the emulator's own implementation, not the sidecar's: the sidecar must hold against an
upstream whose estimate it does not know. Three estimates are selectable (``tokens.estimate``):

- ``chars``: characters of the text sent, four to a token, rounded up (what OpenAI documents as its
  rule of thumb and what the sidecar assumes);
- ``json_chars``: characters of the prompt-bearing fields as escaped JSON, four to a token: roles and
  keys count, and every non-ASCII character costs six (``\\uXXXX``), so a non-Latin prompt is
  charged about twice what a tokenizer counts;
- ``tiktoken``: tokens of the text by the model family's BPE encoding, plus 3 per message (also what
  ``usage`` reports, whatever the estimate: OpenAI's usage counts tokenizer tokens).

The charge at admission is the larger of the estimate and the completion budget (``max``), or both
(``sum``); ``n`` choices multiply the budget; a request without a budget is charged
``default_max_tokens``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from o1common.encodings import get_encoding

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
BUDGET_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
PROMPT_FIELDS = ("messages", "instructions", "input", "tools")

Estimate = Literal["chars", "json_chars", "tiktoken"]


def _texts(value: Any) -> list[str]:
    """Every text a client sends in a message content, an instructions string or an input list."""
    if isinstance(value, str):
        return [value]
    out: list[str] = []
    if isinstance(value, list):
        for part in value:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                out += _texts(part.get("text")) + _texts(part.get("content"))
    return out


def _prompt_texts(body: dict[str, Any]) -> tuple[list[str], int, int]:
    """(texts, messages, token ids given as numbers) of a chat, Responses or embeddings body."""
    texts: list[str] = []
    messages = body.get("messages")
    count = 0
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                texts += _texts(message.get("content"))
                count += 1
    texts += _texts(body.get("instructions"))
    items = body.get("input")
    token_ids = 0
    if isinstance(items, list) and items and all(isinstance(t, int) for t in items):
        token_ids = len(items)
    elif isinstance(items, list) and items and all(isinstance(t, list) for t in items):
        token_ids = sum(len(t) for t in items)
    else:
        texts += _texts(items)
        if isinstance(items, list):
            count += sum(isinstance(i, dict) for i in items)
    return texts, count, token_ids


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def prompt_estimate(body: dict[str, Any], estimate: Estimate = "chars", model: str = "") -> int:
    """Prompt tokens as this upstream estimates them before running the request."""
    texts, messages, token_ids = _prompt_texts(body)
    if estimate == "chars":
        return _ceil_div(sum(len(t) for t in texts) + CHARS_PER_TOKEN * token_ids, CHARS_PER_TOKEN)
    if estimate == "json_chars":
        fields = {f: body[f] for f in PROMPT_FIELDS if f in body}
        return _ceil_div(len(json.dumps(fields)), CHARS_PER_TOKEN)
    older = model.startswith(("gpt-4-", "gpt-3.5", "text-embedding")) or model == "gpt-4"
    encoding = get_encoding("cl100k_base" if older else "o200k_base")
    return sum(len(encoding.encode_ordinary(t)) for t in texts) + TOKENS_PER_MESSAGE * messages + token_ids


def requested_budget(body: dict[str, Any]) -> int | None:
    """The completion budget the request sets, under any of the API's names for it."""
    for field in BUDGET_FIELDS:
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def admission_charge(
    prompt: int, budget: int | None, choices: int, rule: Literal["max", "sum"], default_budget: int
) -> int:
    """TPM charged at admission: ``max`` = larger of the completion budget (times ``n``) and the
    prompt, ``sum`` = both."""
    completion = (budget if budget is not None else default_budget) * max(choices, 1)
    return prompt + completion if rule == "sum" else max(prompt, completion)
