"""What a request costs: the character-based prompt estimate and the TPM charge at admission.

OpenAI estimates prompt tokens from characters (about four per token) before running a request, and
charges TPM at admission by the larger of that estimate and the completion budget (``max``); ``sum``
charges both. ``n`` choices multiply the budget. Pure functions of the request body.
"""

from __future__ import annotations

import math
from typing import Any

from o1emulator.config import TokenRule

CHARS_PER_TOKEN = 4
BUDGET_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        total = 0
        for part in value:
            if isinstance(part, str):
                total += len(part)
            elif isinstance(part, dict):
                total += _text_chars(part.get("text")) + _text_chars(part.get("content"))
        return total
    return 0


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of every text the request sends: messages, Responses ``input``/``instructions``, or
    embedding ``input``. Token arrays count one token as four characters."""
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += _text_chars(message.get("content"))
    total += _text_chars(body.get("instructions"))
    items = body.get("input")
    if isinstance(items, list) and items and all(isinstance(t, int) for t in items):
        total += CHARS_PER_TOKEN * len(items)
    elif isinstance(items, list) and items and all(isinstance(t, list) for t in items):
        total += CHARS_PER_TOKEN * sum(len(t) for t in items)
    else:
        total += _text_chars(items)
    return total


def prompt_estimate(body: dict[str, Any]) -> int:
    """Prompt tokens as OpenAI's limiter estimates them: characters / 4, rounded up."""
    return math.ceil(prompt_chars(body) / CHARS_PER_TOKEN)


def requested_budget(body: dict[str, Any]) -> int | None:
    """The completion budget the request sets (``max_completion_tokens``, ``max_tokens`` or
    ``max_output_tokens``), or ``None``."""
    for field in BUDGET_FIELDS:
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def admission_charge(prompt_tokens: int, budget: int | None, choices: int, rule: TokenRule) -> int:
    """TPM charged when the request is admitted; never refunded."""
    completion = (budget if budget is not None else rule.default_max_tokens) * max(choices, 1)
    if rule.charge == "sum":
        return prompt_tokens + completion
    return max(prompt_tokens, completion)
