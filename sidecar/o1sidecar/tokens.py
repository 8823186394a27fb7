"""Prompt token estimates before the call, and the TPM charge the upstream will make at admission.

Counting follows OpenAI's cookbook for chat messages (a fixed overhead per message and per name,
plus the reply primer). Models map to their encoding by name prefix; only unknown models fall back
to a bytes/4 estimate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from cachetools import LRUCache

from o1common.encodings import get_encoding
from o1sidecar.config import TokenPolicy

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMER = 3
IMAGE_TOKENS = 85  # a low-detail image; high detail costs more, which the usage report corrects

_O200K_PREFIXES = ("o1", "o3", "o4", "gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-4o", "omni")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002")

CountTokens = Callable[[str], int]


def encoding_name_for(model: str) -> str | None:
    """``o200k_base``/``cl100k_base`` for known model families, ``None`` for an unknown model."""
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name[3:]
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return None


def bytes_estimate(text: str) -> int:
    """Last resort for models whose encoding is unknown: one token per four UTF-8 bytes, rounded up."""
    return -(-len(text.encode()) // 4)


class TokenCounter:
    """Counts tokens per model. Call :meth:`load` at start so no request pays for loading encodings."""

    def __init__(self) -> None:
        self._counters: dict[str, CountTokens] = {}

    def load(self, names: Iterable[str] = ("o200k_base", "cl100k_base")) -> None:
        for name in names:
            self._counters[name] = _counter(name)

    def counter_for(self, model: str) -> CountTokens:
        name = encoding_name_for(model)
        if name is None:
            return bytes_estimate
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = _counter(name)
        return counter

    def chat_prompt(self, model: str, body: dict[str, Any]) -> int:
        return count_chat_prompt(body, self.counter_for(model))

    def responses_prompt(self, model: str, body: dict[str, Any]) -> int:
        return count_responses_prompt(body, self.counter_for(model))

    def embeddings_input(self, model: str, body: dict[str, Any]) -> int:
        return count_embeddings_input(body, self.counter_for(model))

    def prompt(self, endpoint: str, model: str, body: dict[str, Any]) -> int:
        """Our prompt estimate for ``endpoint`` (``chat/completions``, ``responses``, ``embeddings``)."""
        return count_prompt(endpoint, body, self.counter_for(model))

    def charge(
        self,
        endpoint: str,
        model: str,
        body: dict[str, Any],
        policy: TokenPolicy,
        prompt_tokens: int | None = None,
        bound: int | None = None,
    ) -> int:
        """The TPM charge to reserve: never below what the upstream charges (its chars/4 estimate),
        so a shared limiter cannot under-count. ``prompt_tokens``: ``prompt()`` of this body, if the
        caller has already counted it; ``bound``: ``prompt_bound`` of it, if already computed. The
        prompt is not counted when the charge does not depend on it (``max``: the completion budget
        is above any count the prompt can have)."""
        if prompt_tokens is None and endpoint != "embeddings" and policy.charge == "max":
            completion = (requested_max_tokens(body) or policy.default_max_tokens) * choices_of(body)
            if (prompt_bound(endpoint, body) if bound is None else bound) <= completion:
                return max(upstream_prompt_estimate(body), completion)
        counted = self.prompt(endpoint, model, body) if prompt_tokens is None else prompt_tokens
        prompt = max(counted, upstream_prompt_estimate(body))
        if endpoint == "embeddings":
            return prompt  # no completion: the input is the whole charge
        return admission_charge(prompt, requested_max_tokens(body), choices_of(body), policy)


def count_prompt(endpoint: str, body: dict[str, Any], count: CountTokens) -> int:
    """The prompt's tokens for ``endpoint`` by ``count``."""
    if endpoint == "chat/completions":
        return count_chat_prompt(body, count)
    if endpoint == "responses":
        return count_responses_prompt(body, count)
    return count_embeddings_input(body, count)


def utf8_length(text: str) -> int:
    """Bytes of ``text`` in UTF-8: at least its tokens in any encoding here (a token covers one byte
    or more; ``bytes_estimate`` is a quarter of them)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def prompt_bound(endpoint: str, body: dict[str, Any]) -> int:
    """An upper bound of ``TokenCounter.prompt`` for any model, without encoding anything: the same sum
    with each text's bytes for its tokens. When the bound already decides (the charge, whether the
    prompt fits a window), the prompt is not counted."""
    return count_prompt(endpoint, body, utf8_length)


MEMO_MIN_CHARS = 256  # shorter texts are cheaper to encode than to remember
MEMO_MAX_CHARS = 4_000_000  # total characters of remembered texts, per encoding


def _counter(name: str) -> CountTokens:
    """Token count of a text; long texts are remembered, because the same system prompts and
    documents come back request after request."""
    encode = get_encoding(name).encode_ordinary
    # text -> (characters, tokens); sized by the characters it keeps alive
    memo: LRUCache[str, tuple[int, int]] = LRUCache(maxsize=MEMO_MAX_CHARS, getsizeof=lambda v: v[0])

    def count(text: str) -> int:
        if len(text) < MEMO_MIN_CHARS:
            return len(encode(text))
        known = memo.get(text)
        if known is not None:
            return known[1]
        tokens = len(encode(text))
        if len(text) <= MEMO_MAX_CHARS // 8:
            memo[text] = (len(text), tokens)
        return tokens

    return count


def _content_tokens(content: Any, count: CountTokens) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += count(text)
                elif part.get("type") in ("image_url", "input_image"):
                    total += IMAGE_TOKENS
                else:
                    total += count(json.dumps(part))
            elif isinstance(part, str):
                total += count(part)
        return total
    return count(json.dumps(content))


def count_messages(messages: list[Any], count: CountTokens) -> int:
    """Prompt tokens of chat ``messages`` per OpenAI's cookbook, reply primer included."""
    total = REPLY_PRIMER
    for message in messages:
        if not isinstance(message, dict):
            total += TOKENS_PER_MESSAGE + count(json.dumps(message))
            continue
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                total += _content_tokens(value, count)
            elif key == "name":
                total += TOKENS_PER_NAME + (count(value) if isinstance(value, str) else 0)
            elif isinstance(value, str):
                total += count(value)
            elif value is not None:
                total += count(json.dumps(value))
    return total


def count_chat_prompt(body: dict[str, Any], count: CountTokens) -> int:
    messages = body.get("messages")
    total = count_messages(messages if isinstance(messages, list) else [], count)
    for field in ("tools", "functions", "response_format"):
        if body.get(field):
            total += count(json.dumps(body[field]))
    return total


def count_responses_prompt(body: dict[str, Any], count: CountTokens) -> int:
    total = 0
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        total += count(instructions)
    items = body.get("input")
    if isinstance(items, str):
        total += count(items) + TOKENS_PER_MESSAGE
    elif isinstance(items, list):
        total += count_messages(items, count)
    if body.get("tools"):
        total += count(json.dumps(body["tools"]))
    return total


def count_embeddings_input(body: dict[str, Any], count: CountTokens) -> int:
    items = body.get("input")
    if isinstance(items, str):
        return count(items)
    if isinstance(items, list):
        if all(isinstance(t, int) for t in items):
            return len(items)
        total = 0
        for item in items:
            if isinstance(item, str):
                total += count(item)
            elif isinstance(item, list):
                total += len(item)
        return total
    return 0


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


def upstream_prompt_estimate(body: dict[str, Any]) -> int:
    """The upstream's own pre-call estimate: characters of every text sent / 4, rounded up (OpenAI's
    rule; the emulator charges by this same function)."""
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
    return -(-total // CHARS_PER_TOKEN)


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    """The completion budget the request sets, under any of the API's names for it."""
    for field in BUDGET_FIELDS:
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def choices_of(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def admission_charge(prompt_tokens: int, max_tokens: int | None, choices: int, policy: TokenPolicy) -> int:
    """TPM the upstream charges at admission: ``max`` = larger of the completion budget (times ``n``)
    and the prompt, ``sum`` = both. A request without a budget is charged the policy's default."""
    completion = (max_tokens if max_tokens is not None else policy.default_max_tokens) * max(choices, 1)
    if policy.charge == "sum":
        return prompt_tokens + completion
    return max(prompt_tokens, completion)
