"""Shortening a conversation after ``context_length_exceeded``: keep the system/developer messages and
the newest messages that fit. Pure functions; the proxy retries once with the result."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KEPT_ROLES = frozenset({"system", "developer"})
SAFETY = 0.9  # aim below the limit: our estimate and the upstream's count differ a little
CERTAIN = 0.98  # before sending, a prompt overflows only if 98% of our count already does

_LIMIT = re.compile(r"maximum context length is (\d+)")
_RESULTED = re.compile(r"messages resulted in (\d+) tokens")
_SPLIT = re.compile(r"\((\d+) in the messages, (\d+) in the completion\)")


@dataclass(frozen=True)
class ContextError:
    """The numbers in OpenAI's context_length_exceeded message (``None`` where it says nothing)."""

    limit: int | None = None
    prompt: int | None = None
    completion: int = 0


def parse_context_error(message: str) -> ContextError:
    limit = _LIMIT.search(message)
    split = _SPLIT.search(message)
    resulted = _RESULTED.search(message)
    prompt = int(split.group(1)) if split else int(resulted.group(1)) if resulted else None
    return ContextError(
        limit=int(limit.group(1)) if limit else None,
        prompt=prompt,
        completion=int(split.group(2)) if split else 0,
    )


def overflows(prompt: int, budget: int, window: int) -> bool:
    """Whether ``prompt`` tokens (our count) plus a completion ``budget`` surely exceed ``window``."""
    return prompt * CERTAIN + budget > window


def window_target(budget: int, window: int) -> int:
    """Prompt tokens to aim for so that the prompt and ``budget`` fit ``window``."""
    return max(1, int((window - budget) * SAFETY))


def target_tokens(estimate: int, error: ContextError) -> int:
    """Prompt tokens (in our own count, ``estimate`` now) to aim for so prompt + completion fit the
    window, scaled from the upstream's numbers; half of now when the message gives none."""
    if error.limit and error.prompt:
        room = error.limit - error.completion
        return max(1, int(estimate * room / error.prompt * SAFETY))
    return max(1, estimate // 2)


def truncate_messages(
    messages: list[Any], count: Callable[[list[Any]], int], target: int
) -> list[Any] | None:
    """The system/developer messages plus the newest others whose total ``count`` is within ``target``.

    Always keeps the newest message; never starts the kept history with an orphaned tool result.
    ``None`` when nothing can be dropped (the caller then passes the upstream's error through).
    """
    kept_fixed = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") in KEPT_ROLES]
    others = [i for i in range(len(messages)) if i not in set(kept_fixed)]
    if len(others) <= 1:
        return None
    chosen = [others[-1]]
    for index in reversed(others[:-1]):
        candidate = sorted([*kept_fixed, index, *chosen])
        if count([messages[i] for i in candidate]) > target:
            break
        chosen.insert(0, index)
    while len(chosen) > 1 and _role(messages[chosen[0]]) == "tool":
        chosen.pop(0)
    if len(chosen) == len(others):
        return None
    return [messages[i] for i in sorted([*kept_fixed, *chosen])]


def _role(message: Any) -> str | None:
    return message.get("role") if isinstance(message, dict) else None
